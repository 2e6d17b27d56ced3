"""Affine registration of two volumes in world (mm) coordinates.

`register_affine` finds the world-to-world map `T` that best aligns a moving volume to a fixed
one, using both files' voxel-to-world affines (NIfTI, RAS+), so that grids of different shape,
voxel size, origin and orientation need no resampling by hand:

    moving world point = T @ fixed world point            (homogeneous, mm)
    moving voxel       = inv(A_moving) @ T @ A_fixed @ fixed voxel   (`AffineResult.voxel_matrix`)

This is the direction ITK and ANTs store (the transform maps points of the fixed image's space to
the moving image's, so that `moved[x] = moving(T(x))`); `vxmtf.data.itk` writes it as an ITK
transform file.

Method. `T` is initialised by matching the intensity-weighted centres of mass (world mm) and then
refined coarse to fine over an image pyramid (default 8, 4, 2 mm): at each level both images are
block-mean downsampled and Gaussian smoothed, a random subset of the fixed level's voxel centres
is mapped through `T` into the moving level's grid, the moving image is read there with
`vxmtf.ops.resample` (N-linear), and the loss (negative NCC, MSE or negative Mattes-like mutual
information) is minimised with Adam in a compiled `tf.function` loop. The transform acts around
the fixed image's centre of mass `c` and after the initial map `T0`:

    T(x) = T0(c + L (x - c) + t),   L = R(r) diag(exp(s)) U(h)

with `t` a translation in mm, `R(r)` the rotation of rotation vector `r` (Rodrigues; an angle in
2D), `s` log scales (one shared scale for "similarity") and `U(h)` a unit upper-triangular shear.
"rigid" optimises `t, r` (6 parameters in 3D, 3 in 2D), "similarity" adds one log scale (7; 4),
"affine" all (12; 6). The optimiser sees every parameter scaled so that one unit moves a typical
fixed point (at the intensity-weighted RMS radius around `c`) by about 1 mm.

Speed: 160 x 192 x 160 brain pairs take a few seconds on two CPU cores; the loss uses at most
`max_points` fixed points per level, and the loop for one level runs as one compiled graph.

Modules: `registration` (`register_affine` and its coarse-to-fine loop), `result`
(`AffineResult`, `apply_affine`), and the private `_parameters` (the transform's
parameterisation), `_metrics` (losses on weighted point sets) and `_checks` (input checks).
"""

from vxmtf.affine.registration import (
    DEFAULT_ITERATIONS,
    DEFAULT_LEVELS,
    INITS,
    METRICS,
    TRANSFORMS,
    register_affine,
)
from vxmtf.affine.result import AffineResult, apply_affine

__all__ = [
    "DEFAULT_ITERATIONS",
    "DEFAULT_LEVELS",
    "INITS",
    "METRICS",
    "TRANSFORMS",
    "AffineResult",
    "apply_affine",
    "register_affine",
]
