"""`RegistrationImages`: a TensorBoard picture of one validation pair at the end of each epoch.

Each epoch the callback registers one fixed validation pair and writes, for every spatial axis,
the middle slice of the moving, fixed and moved images and of a deformed grid side by side
(`tf.summary.image`, tag `registration/axis<k>`, in `<run>/logs/images`), so a user watching
TensorBoard sees the moved image approach the fixed one and the grid bend as training goes on.

The deformed grid is the image of straight grid lines under the same warp as the moved image:
`grid_warped(x) = grid(x + u(x))` with `grid(y) = 1` on every `spacing`-th row or column of the
slice and 0 elsewhere, resampled linearly; only the in-plane displacement components matter, as
the grid is constant along the slice axis. A zero field draws the straight grid.
"""

from __future__ import annotations

import logging

import keras
import numpy as np
import tensorflow as tf
from scipy import ndimage

logger = logging.getLogger(__name__)

#: Panels of each picture, left to right.
PANELS = ("moving", "fixed", "moved", "grid")


def grid_image(shape, spacing: int = 4) -> np.ndarray:
    """Straight grid lines, float32 of `shape` (2 sizes): 1 where a row or column index is a
    multiple of `spacing`, else 0.

    Raises:
        ValueError: `shape` does not give 2 sizes, or `spacing < 1`.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2:
        raise ValueError(f"Expected a 2D slice shape. Received: shape={shape}")
    if int(spacing) < 1:
        raise ValueError(f"Expected spacing >= 1. Received: spacing={spacing}")
    rows = np.arange(shape[0]) % spacing == 0
    cols = np.arange(shape[1]) % spacing == 0
    return (rows[:, None] | cols[None, :]).astype(np.float32)


def deformed_grid(displacement: np.ndarray, spacing: int = 4) -> np.ndarray:
    """The grid of :func:`grid_image` warped by a 2D field: `out(x) = grid(x + u(x))`.

    Args:
        displacement: in-plane displacement `(H, W, 2)` in voxels, component `d` along slice
            axis `d` (the layout of `VxmDense`'s `displacement`, restricted to a slice).
        spacing: distance between grid lines, in voxels.

    Returns:
        float32 `(H, W)` in [0, 1]: linear interpolation, coordinates outside the slice clamped
        to its edge (as the spatial transformer does).

    Raises:
        ValueError: `displacement` is not `(H, W, 2)`.
    """
    displacement = np.asarray(displacement, dtype=np.float32)
    if displacement.ndim != 3 or displacement.shape[-1] != 2:
        raise ValueError(
            f"Expected an in-plane displacement of shape (H, W, 2). "
            f"Received: displacement.shape={displacement.shape}"
        )
    shape = displacement.shape[:2]
    grid = grid_image(shape, spacing)
    # Sampling positions (2, H, W): identity grid plus the field, channels first.
    coords = np.indices(shape, dtype=np.float32) + np.moveaxis(displacement, -1, 0)
    out = ndimage.map_coordinates(grid, coords, order=1, mode="nearest")
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def middle_slice(volume: np.ndarray, axis: int) -> np.ndarray:
    """`volume[..., n // 2, ...]` along spatial `axis` of a `(*spatial, channels)` array, kept
    with its channels: `(*other spatial, channels)`."""
    return np.take(volume, volume.shape[axis] // 2, axis=axis)


def render_panels(moving, fixed, moved, displacement, axis: int = 0, spacing: int = 4):
    """One picture of a registered pair: the middle slices along spatial `axis` of moving,
    fixed, moved and the deformed grid, side by side.

    Args:
        moving, fixed, moved: `(*spatial, 1)` images (2D or 3D), intensities in [0, 1].
        displacement: `(*spatial, ndim)` in voxels (`moved(x) = moving(x + u(x))`).
        axis: slice axis of a 3D volume (ignored in 2D, where the picture is the whole image).

    Returns:
        float32 `(H, 4 * W, 1)` in [0, 1], panels in the order of `PANELS`.
    """
    ndim = displacement.shape[-1]
    if ndim == 3:
        images = [middle_slice(np.asarray(v), axis) for v in (moving, fixed, moved)]
        # In-plane components: drop the one along the slice axis, then slice.
        in_plane = [d for d in range(3) if d != axis]
        field = middle_slice(np.asarray(displacement)[..., in_plane], axis)
    else:
        images = [np.asarray(v) for v in (moving, fixed, moved)]
        field = np.asarray(displacement)
    images = [np.clip(image[..., 0], 0.0, 1.0).astype(np.float32) for image in images]
    panels = [*images, deformed_grid(field, spacing)]
    return np.concatenate(panels, axis=1)[..., None]


class RegistrationImages(keras.callbacks.Callback):
    """Writes a TensorBoard image summary of one registered validation pair each epoch.

    Args:
        registration_model: the `VxmDense` being trained (called on `{"moving", "fixed"}`,
            returning `moved` and `displacement`); not the Keras `fit` model, which this
            callback never uses.
        moving, fixed: one validation pair, `(*spatial)`, `(*spatial, 1)` or `(1, *spatial, 1)`.
        log_dir: folder of the event files (the run writes `<run>/logs/images`).
        spacing: distance between the grid lines, in voxels.

    Raises:
        ValueError: `moving` or `fixed` is not one image of the model's dimensionality, they
            differ in shape, or `spacing < 1`.
    """

    def __init__(self, registration_model, moving, fixed, log_dir, spacing: int = 4):
        super().__init__()
        ndim = len(registration_model.inputs[0].shape) - 2
        moving, fixed = _as_batch(moving, ndim), _as_batch(fixed, ndim)
        if moving.shape != fixed.shape:
            raise ValueError(
                "Expected a moving and a fixed image of the same shape. "
                f"Received: moving.shape={moving.shape}, fixed.shape={fixed.shape}"
            )
        if int(spacing) < 1:
            raise ValueError(f"Expected spacing >= 1. Received: spacing={spacing}")
        self.registration_model = registration_model
        self.moving = moving
        self.fixed = fixed
        self.log_dir = str(log_dir)
        self.spacing = int(spacing)
        self._writer = None

    def pictures(self) -> dict[str, np.ndarray]:
        """Registers the pair; returns `{tag: (1, H, 4 * W, 1)}`, one picture per slice axis."""
        out = self.registration_model({"moving": self.moving, "fixed": self.fixed}, training=False)
        # float32 also under mixed precision, whose `moved` follows the compute dtype
        moved = tf.cast(out["moved"], tf.float32).numpy()[0]
        displacement = tf.cast(out["displacement"], tf.float32).numpy()[0]
        ndim = displacement.shape[-1]
        pictures = {}
        for axis in range(ndim if ndim == 3 else 1):
            picture = render_panels(
                self.moving[0], self.fixed[0], moved, displacement, axis, self.spacing
            )
            pictures[f"registration/axis{axis}"] = picture[None]
        return pictures

    def on_epoch_end(self, epoch, logs=None):
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        pictures = self.pictures()
        with self._writer.as_default():
            for tag, picture in pictures.items():
                description = "middle slices: " + " | ".join(PANELS)
                tf.summary.image(tag, picture, step=epoch, description=description)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _as_batch(image, ndim: int) -> np.ndarray:
    """`(*spatial)`, `(*spatial, 1)` or `(1, *spatial, 1)` with `ndim` spatial axes -> float32
    `(1, *spatial, 1)`."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == ndim:
        image = image[..., None]
    if image.ndim == ndim + 1:
        image = image[None]
    if image.ndim != ndim + 2 or image.shape[0] != 1 or image.shape[-1] != 1:
        raise ValueError(
            f"Expected one {ndim}D image: (*spatial), (*spatial, 1) or (1, *spatial, 1). "
            f"Received: shape={image.shape}"
        )
    return image
