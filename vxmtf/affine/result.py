"""`AffineResult`, what `register_affine` returns, and `apply_affine`, which resamples
through it."""

from __future__ import annotations

import dataclasses

import numpy as np

from vxmtf.affine._checks import check_affine
from vxmtf.ops import resample


@dataclasses.dataclass
class AffineResult:
    """The outcome of `register_affine`.

    Attributes:
        matrix: `(ndim + 1, ndim + 1)` world-to-world map, fixed to moving:
            `moving_world = matrix @ fixed_world` (mm, the affines' world frame, RAS for NIfTI).
        moving_affine, fixed_affine: the `(ndim + 1, ndim + 1)` voxel-to-world affines used.
        initial_matrix: the world map before optimisation (centres of mass, or as given).
        transform, metric: as requested.
        parameters: the optimised parameters in physical units, in the order translation (mm),
            rotation (rotation vector, radians; one angle in 2D), log scales, shears.
        centre: world point `c` the transform acts around (the fixed centre of mass).
        loss: the final loss at the finest level (negative NCC, MSE or negative MI).
        level_losses: the final loss of each level, coarse to fine.
        iterations: optimiser steps in all levels.
        seconds: wall time of the registration.
        overlap: share of the fixed image's (intensity-weighted) points that the final map sends
            inside the moving image's field of view.
    """

    matrix: np.ndarray
    moving_affine: np.ndarray
    fixed_affine: np.ndarray
    initial_matrix: np.ndarray
    transform: str
    metric: str
    parameters: np.ndarray
    centre: np.ndarray
    loss: float
    level_losses: list
    iterations: int
    seconds: float
    overlap: float

    @property
    def ndim(self) -> int:
        return self.matrix.shape[0] - 1

    def voxel_matrix(self) -> np.ndarray:
        """The fixed-voxel to moving-voxel map `inv(A_moving) @ matrix @ A_fixed`.

        With it, `scipy.ndimage.affine_transform(moving, V[:-1, :-1], V[:-1, -1],
        output_shape=fixed.shape)` puts the moving image on the fixed grid.
        """
        return np.linalg.inv(self.moving_affine) @ self.matrix @ self.fixed_affine

    def transform_points(self, points) -> np.ndarray:
        """Map fixed world points `(..., ndim)` (mm) to moving world points."""
        points = np.asarray(points, dtype=np.float64)
        return points @ self.matrix[:-1, :-1].T + self.matrix[:-1, -1]

    def resample(self, moving, fixed_shape, interpolation="linear", fill_value=0.0) -> np.ndarray:
        """The moving volume on the fixed grid (see `apply_affine`)."""
        return apply_affine(
            moving,
            self.moving_affine,
            fixed_shape,
            self.fixed_affine,
            self.matrix,
            interpolation=interpolation,
            fill_value=fill_value,
        )


def apply_affine(
    moving,
    moving_affine,
    fixed_shape,
    fixed_affine,
    matrix,
    interpolation="linear",
    fill_value=0.0,
) -> np.ndarray:
    """Resample `moving` onto the fixed grid through the world map `matrix` (fixed to moving).

    `out[x] = moving(inv(A_moving) @ matrix @ A_fixed @ x)`, with `vxmtf.ops.resample`
    ("linear" or "nearest"; `fill_value` outside the moving field of view, None to clamp).

    Args:
        moving: 2D or 3D array.
        moving_affine, fixed_affine: voxel-to-world affines as in `register_affine`.
        fixed_shape: the spatial shape of the fixed grid.
        matrix: `(ndim + 1, ndim + 1)` world map, fixed to moving.

    Returns:
        Array of shape `fixed_shape` and the moving array's dtype.
    """
    moving = np.asarray(moving)
    ndim = moving.ndim
    fixed_shape = tuple(int(s) for s in fixed_shape)
    if len(fixed_shape) != ndim:
        raise ValueError(
            f"`fixed_shape` must have {ndim} entries like the moving volume. "
            f"Received: fixed_shape={fixed_shape}, moving shape={moving.shape}"
        )
    moving_affine = check_affine(moving_affine, ndim, "moving_affine")
    fixed_affine = check_affine(fixed_affine, ndim, "fixed_affine")
    matrix = check_affine(matrix, ndim, "matrix", allow_reduce=False)
    voxel = np.linalg.inv(moving_affine) @ matrix @ fixed_affine
    grid = np.stack(
        np.meshgrid(*[np.arange(s, dtype=np.float64) for s in fixed_shape], indexing="ij"), -1
    )  # (*fixed_shape, ndim)
    coords = grid @ voxel[:ndim, :ndim].T + voxel[:ndim, ndim]
    image = moving if interpolation == "nearest" else moving.astype(np.float32)
    out = resample(
        image[None, ..., None], coords[None].astype(np.float32), interpolation, fill_value
    )  # (1, *fixed_shape, 1)
    return out.numpy()[0, ..., 0].astype(moving.dtype, copy=False)
