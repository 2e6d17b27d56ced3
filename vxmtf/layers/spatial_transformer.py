"""`SpatialTransformer`: warp an image by a dense displacement field."""

import keras
import tensorflow as tf

from vxmtf.checks import check_choice
from vxmtf.ops.resample import INTERPOLATIONS, warp


@keras.saving.register_keras_serializable(package="vxmtf")
class SpatialTransformer(keras.layers.Layer):
    """Warp an image with a displacement field (Jaderberg et al., NeurIPS 2015).

    `out[b, x] = image[b, x + displacement[b, x]]`, sampled N-linearly (or at the nearest voxel)
    for the whole batch at once, in 2D or 3D. Displacements are in voxels; component k moves along
    spatial axis k ("ij" order). Differentiable with respect to both inputs.

    Coordinates and interpolation weights are computed in float32 even under a `mixed_float16`
    policy; the output has the layer's compute dtype ("linear") or the image's dtype ("nearest").

    Args:
        interpolation: "linear" (N-linear) or "nearest" (for label maps).
        fill_value: None clamps samples outside the volume to its border; a number fills them.

    Call arguments:
        image: `(batch, *spatial, channels)`.
        displacement: `(batch, *spatial, ndim)`, the same spatial shape as `image`.

    Raises:
        ValueError: unknown `interpolation`, inputs of rank other than 4 (2D) or 5 (3D),
            mismatched spatial shapes or a displacement with other than `ndim` channels.
    """

    def __init__(self, interpolation="linear", fill_value=None, **kwargs):
        super().__init__(autocast=False, **kwargs)
        check_choice("interpolation", interpolation, INTERPOLATIONS)
        if fill_value is not None and not isinstance(fill_value, (int, float)):
            raise ValueError(
                f"`fill_value` must be None or a number. Received: fill_value={fill_value!r}"
            )
        self.interpolation = interpolation
        self.fill_value = fill_value

    def build(self, image_shape, displacement_shape):
        check_warp_shapes(image_shape, displacement_shape)
        self.built = True

    def call(self, image, displacement):
        check_warp_shapes(image.shape, displacement.shape)
        if self.interpolation == "linear" or image.dtype.is_floating:
            image = tf.cast(image, self.compute_dtype)
        return warp(image, displacement, self.interpolation, self.fill_value)

    def compute_output_shape(self, image_shape, displacement_shape):
        return (image_shape[0], *displacement_shape[1:-1], image_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update({"interpolation": self.interpolation, "fill_value": self.fill_value})
        return config


def check_warp_shapes(image_shape, displacement_shape):
    """Check an (image, displacement) pair of static shapes; None sizes pass.

    Raises:
        ValueError: rank not 4 or 5, different ranks, displacement channels != ndim, or
            known spatial sizes that differ.
    """
    image_shape = tuple(image_shape)
    displacement_shape = tuple(displacement_shape)
    if len(image_shape) not in (4, 5):
        raise ValueError(
            "Expected `image` of rank 4 (batch, H, W, C) or 5 (batch, D, H, W, C). "
            f"Received: image.shape={image_shape}"
        )
    if len(displacement_shape) != len(image_shape):
        raise ValueError(
            f"Expected `displacement` of the same rank as `image` ({len(image_shape)}). "
            f"Received: image.shape={image_shape}, displacement.shape={displacement_shape}"
        )
    ndim = len(image_shape) - 2
    if displacement_shape[-1] is not None and displacement_shape[-1] != ndim:
        raise ValueError(
            f"Expected a displacement with {ndim} channels for {ndim}D images (one per spatial "
            f"axis). Received: displacement.shape={displacement_shape}"
        )
    for a, b in zip(image_shape[1:-1], displacement_shape[1:-1], strict=True):
        if a is not None and b is not None and a != b:
            raise ValueError(
                "Expected `image` and `displacement` with the same spatial shape. "
                f"Received: image.shape={image_shape}, displacement.shape={displacement_shape}"
            )
