"""Helpers shared by several test files: a model with a known field, a SciPy warp oracle and a
NumPy reference of the U-Net.

Importable as `helpers` from any test (tests/ is on `sys.path`: it holds the root conftest.py).
"""

import numpy as np
import tensorflow as tf
from scipy import ndimage

from vxmtf.networks.vxm_dense import VxmDense


def shift_model(shift, int_steps=0, inshape=(16, 16, 16)):
    """A tiny `VxmDense` whose displacement is `shift` (model voxels) at every voxel, whatever
    the images: the flow head's kernel is zero and its bias is `shift`."""
    model = VxmDense(inshape, enc_features=(4, 4), dec_features=(4, 4, 4), int_steps=int_steps)
    flow = model.get_layer("flow")
    kernel, _ = flow.get_weights()
    flow.set_weights([np.zeros_like(kernel), np.asarray(shift, np.float32)])
    return model


def scipy_warp(image, displacement, order, mode="nearest", cval=0.0):
    """Oracle: `out[x, c] = image[x + d(x), c]` with SciPy's `map_coordinates`, for one image
    `(*S, C)` and its displacement `(*S, ndim)` (border `nearest` by default, as `vxmtf.ops`
    clamps)."""
    shape = image.shape[:-1]
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=0)
    coords = grid + np.moveaxis(displacement, -1, 0)
    return np.stack(
        [
            ndimage.map_coordinates(image[..., c], coords, order=order, mode=mode, cval=cval)
            for c in range(image.shape[-1])
        ],
        axis=-1,
    )


def scipy_warp_batch(images, displacements, order):
    """`scipy_warp` of each sample of a batch: `(batch, *S, C)` by `(batch, *S, ndim)`."""
    return np.stack(
        [scipy_warp(i, d, order) for i, d in zip(images, displacements, strict=True)]
    ).astype(np.asarray(images).dtype)


def numpy_unet(unet, x):
    """`unet(x)` in float64 NumPy with the U-Net in the VoxelMorph form (explicit nearest
    upsampling with np.repeat, concatenation, "same" 3^n convolutions, LeakyReLU 0.2, 2x max
    pooling), from the layers' weights alone: an independent reference of `Unet.call`."""

    def block(layer, x):
        kernel, bias = (np.asarray(w, np.float64) for w in layer.conv.get_weights())
        y = tf.nn.convolution(x, kernel, padding="SAME").numpy() + bias
        return np.where(y > 0, y, 0.2 * y)

    def pool(x):
        batch, *spatial, c = x.shape
        split = [n for s in spatial for n in (s // 2, 2)]
        return x.reshape(batch, *split, c).max(axis=tuple(range(2, 2 * len(spatial) + 1, 2)))

    def upsample(x):
        for axis in range(1, x.ndim - 1):
            x = x.repeat(2, axis=axis)
        return x

    skips = []
    for level in unet.encoder:
        x = block(level, x)
        skips.append(x)
        x = pool(x)
    for level in unet.decoder:
        x = np.concatenate([upsample(block(level, x)), skips.pop()], axis=-1)
    for level in unet.full_resolution:
        x = block(level, x)
    return x
