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
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from scipy import ndimage

from vxmtf.checks import check_choice
from vxmtf.ops import resample

logger = logging.getLogger(__name__)

TRANSFORMS = ("affine", "rigid", "similarity")
METRICS = ("ncc", "mse", "mi")
INITS = ("com", "centre", "identity")

#: Default pyramid: spacing of the fixed points at each level (mm), coarse to fine.
DEFAULT_LEVELS = (8.0, 4.0, 2.0)
#: Default Adam iterations per level.
DEFAULT_ITERATIONS = (120, 80, 40)

_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPSILON = 1e-8
_NCC_EPSILON = 1e-8
_MI_EPSILON = 1e-10


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


def register_affine(
    moving,
    moving_affine,
    fixed,
    fixed_affine,
    transform: str = "affine",
    metric: str = "ncc",
    levels: Sequence[float] = DEFAULT_LEVELS,
    iterations: Sequence[int] = DEFAULT_ITERATIONS,
    learning_rate: float = 0.12,
    max_points: int = 20000,
    bins: int = 32,
    init: str = "com",
    initial_matrix=None,
    min_overlap: float = 0.25,
    seed: int = 0,
    names: Sequence[str] = ("moving", "fixed"),
) -> AffineResult:
    """Affinely register `moving` to `fixed` in world coordinates.

    Args:
        moving, fixed: 2D or 3D arrays (the same rank), indexed like their voxel grids.
        moving_affine, fixed_affine: `(4, 4)` voxel-to-world matrices (NIfTI: RAS+, mm); a 2D
            volume may give a `(3, 3)` affine, or a `(4, 4)` one whose in-plane axes do not mix
            with the third.
        transform: "affine" (12 parameters in 3D), "similarity" (7) or "rigid" (6).
        metric: "ncc" (global normalised cross-correlation; same contrast), "mse" (same
            contrast and intensity scale) or "mi" (Mattes-like mutual information with a
            Gaussian Parzen window of `bins` bins; different contrasts).
        levels: spacing of the fixed points per pyramid level (mm), coarse to fine. Both images
            are smoothed with a Gaussian of standard deviation `spacing / 2` mm at each level.
        iterations: Adam iterations per level (the same length as `levels`).
        learning_rate: Adam step at a level, in (scaled) units per mm of the level's spacing:
            a level of spacing `h` starts at `learning_rate * h` ~ mm per step, decaying
            (cosine) to a tenth of that.
        max_points: at most this many fixed points (drawn at random, once per level) per loss.
        bins: histogram bins of "mi".
        init: "com" (match intensity-weighted centres of mass), "centre" (match the centres of
            the fields of view) or "identity"; ignored when `initial_matrix` is given.
        initial_matrix: optional `(ndim + 1, ndim + 1)` world map (fixed to moving) to start from.
        min_overlap: raise when less than this share of the fixed image's intensity-weighted
            points falls inside the moving field of view after initialisation.
        seed: seed of the random choice of points.
        names: how error messages name the two volumes, e.g. their file paths.

    Returns:
        An `AffineResult`; `result.matrix` maps fixed world points to moving world points.

    Raises:
        TypeError: for non-numeric volumes.
        ValueError: for volumes that are not 2D/3D or not of the same rank, non-finite or constant
            volumes, affines of the wrong shape or not invertible, options of the wrong kind or
            length (e.g. a `(4, 4)` `initial_matrix` for a 2D pair), or a pair whose fields of
            view overlap by less than `min_overlap` after initialisation.
    """
    start = time.perf_counter()
    moving_name, fixed_name = _check_names(names)
    moving = _check_volume(moving, moving_name)
    fixed = _check_volume(fixed, fixed_name)
    if moving.ndim != fixed.ndim:
        raise ValueError(
            "The moving and fixed volumes must have the same rank. "
            f"Received: {moving_name} shape={moving.shape}, {fixed_name} shape={fixed.shape}"
        )
    ndim = fixed.ndim
    moving_affine = _check_affine(moving_affine, ndim, f"{moving_name} affine")
    fixed_affine = _check_affine(fixed_affine, ndim, f"{fixed_name} affine")
    check_choice("transform", transform, TRANSFORMS)
    check_choice("metric", metric, METRICS)
    check_choice("init", init, INITS)
    levels, iterations = _check_schedule(levels, iterations)
    _check_positive(learning_rate, "learning_rate")
    if not isinstance(max_points, (int, np.integer)) or max_points < 16:
        raise ValueError(f"`max_points` must be an integer >= 16. Received: {max_points=}")
    if not isinstance(bins, (int, np.integer)) or bins < 4:
        raise ValueError(f"`bins` must be an integer >= 4. Received: {bins=}")
    if not 0.0 <= min_overlap <= 1.0:
        raise ValueError(f"`min_overlap` must lie in [0, 1]. Received: {min_overlap=}")

    # Initial world map (fixed -> moving) and the centre the optimised part acts around.
    fixed_com = _centre_of_mass(fixed, fixed_affine)
    if initial_matrix is not None:
        initial = _check_affine(
            initial_matrix, ndim, "initial_matrix", allow_reduce=False
        )  # (ndim + 1, ndim + 1)
    else:
        initial = np.eye(ndim + 1)
        if init == "com":
            initial[:ndim, ndim] = _centre_of_mass(moving, moving_affine) - fixed_com
        elif init == "centre":
            initial[:ndim, ndim] = _fov_centre(moving.shape, moving_affine) - _fov_centre(
                fixed.shape, fixed_affine
            )
    overlap = _overlap(fixed, fixed_affine, moving.shape, moving_affine, initial)
    if overlap < min_overlap:
        raise ValueError(
            f"{moving_name} and {fixed_name} do not overlap after initialisation ({init=}): "
            f"{overlap:.1%} of the fixed image's intensity mass maps inside the moving field of "
            f"view, expected at least min_overlap={min_overlap:.1%}. Check the affines (units, "
            "orientation) or pass an `initial_matrix`. "
            f"Received: {moving_name} affine=\n{moving_affine}\n"
            f"{fixed_name} affine=\n{fixed_affine}"
        )

    spec = _ParamSpec(ndim, transform)
    rng = np.random.default_rng(seed)
    q = np.zeros(spec.size, np.float32)
    step = _level_step(ndim, transform, metric, bins)
    level_losses = []
    scales = None
    total_iterations = 0
    for spacing, n_iter in zip(levels, iterations, strict=True):
        level = _prepare_level(
            moving, moving_affine, fixed, fixed_affine, initial, fixed_com, spacing, max_points,
            metric, rng,
        )  # fmt: skip
        if scales is None:
            # Parameter scales from the coarsest level (one unit ~ 1 mm at the RMS radius).
            scales = spec.scales(level.radius)
        progress = np.arange(n_iter, dtype=np.float64) / max(n_iter - 1, 1)
        lrs = learning_rate * spacing * (0.1 + 0.45 * (1.0 + np.cos(np.pi * progress)))
        q_tensor, losses = step(
            tf.constant(q),
            tf.constant(lrs, tf.float32),
            tf.constant(scales, tf.float32),
            *level.tensors,
        )
        q = q_tensor.numpy()
        losses = losses.numpy()
        level_losses.append(float(losses[-1]))
        total_iterations += n_iter
        logger.debug(
            "level %.3g mm: %d points, %d iterations, loss %.5f -> %.5f",
            spacing, level.points, n_iter, losses[0], losses[-1],
        )  # fmt: skip

    params = q.astype(np.float64) * scales
    local = spec.matrix(params, fixed_com)
    matrix = initial @ local
    final_overlap = _overlap(fixed, fixed_affine, moving.shape, moving_affine, matrix)
    if final_overlap < min_overlap:
        logger.warning(
            "%s and %s overlap by %.1f%% after registration (below min_overlap=%.1f%%); the "
            "result is probably wrong",
            moving_name, fixed_name, 100 * final_overlap, 100 * min_overlap,
        )  # fmt: skip
    return AffineResult(
        matrix=matrix,
        moving_affine=moving_affine,
        fixed_affine=fixed_affine,
        initial_matrix=initial,
        transform=transform,
        metric=metric,
        parameters=params,
        centre=fixed_com,
        loss=level_losses[-1],
        level_losses=level_losses,
        iterations=total_iterations,
        seconds=time.perf_counter() - start,
        overlap=final_overlap,
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
    moving_affine = _check_affine(moving_affine, ndim, "moving_affine")
    fixed_affine = _check_affine(fixed_affine, ndim, "fixed_affine")
    matrix = _check_affine(matrix, ndim, "matrix", allow_reduce=False)
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


# --- Parameterisation -------------------------------------------------------------------------


class _ParamSpec:
    """Layout of the parameter vector: translation, rotation, log scales, shears."""

    def __init__(self, ndim, transform):
        self.ndim = ndim
        self.n_rot = 3 if ndim == 3 else 1
        self.n_scale = {"rigid": 0, "similarity": 1, "affine": ndim}[transform]
        self.n_shear = (3 if ndim == 3 else 1) if transform == "affine" else 0
        self.size = ndim + self.n_rot + self.n_scale + self.n_shear

    def scales(self, radius):
        """Physical value of one optimiser unit: 1 mm, or 1 mm at `radius` for the others."""
        scales = np.full(self.size, 1.0 / radius)
        scales[: self.ndim] = 1.0
        return scales

    def split(self, params):
        ndim, i = self.ndim, self.ndim
        t = params[:ndim]
        r = params[i : i + self.n_rot]
        i += self.n_rot
        s = params[i : i + self.n_scale]
        i += self.n_scale
        h = params[i : i + self.n_shear]
        return t, r, s, h

    def linear(self, params, lib):
        """`L = R diag(exp(s)) U` from the parameters, with `lib` = NumPy or TF ops."""
        _, r, s, h = self.split(params)
        rot = _rotation(r, self.ndim, lib)
        if self.n_scale:
            scale = lib.exp(s) if self.n_scale == self.ndim else lib.exp(s[0]) * lib.ones(self.ndim)
            rot = rot * scale[None, :]  # R @ diag(scale): scales columns
        if self.n_shear:
            rot = lib.matmul(rot, _shear(h, self.ndim, lib))
        return rot

    def matrix(self, params, centre):
        """The homogeneous NumPy matrix of `x -> c + L (x - c) + t`."""
        t = params[: self.ndim]
        lin = self.linear(params, _NumpyOps)
        out = np.eye(self.ndim + 1)
        out[: self.ndim, : self.ndim] = lin
        out[: self.ndim, self.ndim] = centre + t - lin @ centre
        return out


class _NumpyOps:
    """The few array functions `_ParamSpec.linear` needs, as NumPy (the TF ones are `_TfOps`)."""

    exp = staticmethod(np.exp)
    sin = staticmethod(np.sin)
    cos = staticmethod(np.cos)
    sqrt = staticmethod(np.sqrt)
    matmul = staticmethod(np.matmul)

    @staticmethod
    def ones(n):
        return np.ones(n)

    @staticmethod
    def stack_matrix(rows):
        return np.array([[np.asarray(v, dtype=np.float64) for v in row] for row in rows])

    @staticmethod
    def sum_squares(v):
        return np.sum(np.square(v))


class _TfOps:
    exp = staticmethod(tf.exp)
    sin = staticmethod(tf.sin)
    cos = staticmethod(tf.cos)
    sqrt = staticmethod(tf.sqrt)
    matmul = staticmethod(tf.matmul)

    @staticmethod
    def ones(n):
        return tf.ones([n], tf.float32)

    @staticmethod
    def stack_matrix(rows):
        return tf.stack([tf.stack([tf.cast(v, tf.float32) for v in row]) for row in rows])

    @staticmethod
    def sum_squares(v):
        return tf.reduce_sum(tf.square(v))


def _rotation(r, ndim, lib):
    """Rotation matrix: angle `r[0]` in 2D; Rodrigues' formula of rotation vector `r` in 3D.

    R = I + sin(a) / a K + (1 - cos(a)) / a^2 K^2, with a = |r| and K the cross-product matrix
    of r; `a` carries a tiny offset so that the gradient at r = 0 is finite.
    """
    if ndim == 2:
        c, s = lib.cos(r[0]), lib.sin(r[0])
        return lib.stack_matrix([[c, -s], [s, c]])
    angle_sq = lib.sum_squares(r) + 1e-12
    angle = lib.sqrt(angle_sq)
    a = lib.sin(angle) / angle
    b = (1.0 - lib.cos(angle)) / angle_sq
    x, y, z = r[0], r[1], r[2]
    # I + a K + b K^2 written out (K = [[0, -z, y], [z, 0, -x], [-y, x, 0]]).
    return lib.stack_matrix(
        [
            [1.0 - b * (y * y + z * z), -a * z + b * x * y, a * y + b * x * z],
            [a * z + b * x * y, 1.0 - b * (x * x + z * z), -a * x + b * y * z],
            [-a * y + b * x * z, a * x + b * y * z, 1.0 - b * (x * x + y * y)],
        ]
    )


def _shear(h, ndim, lib):
    """Unit upper-triangular matrix with the shears above the diagonal (row-major)."""
    if ndim == 2:
        return lib.stack_matrix([[1.0, h[0]], [0.0, 1.0]])
    return lib.stack_matrix([[1.0, h[0], h[1]], [0.0, 1.0, h[2]], [0.0, 0.0, 1.0]])


# --- One pyramid level ------------------------------------------------------------------------


@dataclasses.dataclass
class _Level:
    tensors: tuple  # inputs of the compiled level loop after (q, lrs, scales)
    points: int
    radius: float


def _prepare_level(
    moving, moving_affine, fixed, fixed_affine, initial, centre, spacing, max_points, metric, rng
):
    """Smoothed, downsampled images and the fixed points of one level, as loop inputs.

    The fixed image is block-mean downsampled to about `spacing` mm, the moving one to about
    `spacing / 2` mm (for accurate interpolation), and both are smoothed to a total Gaussian
    standard deviation of `spacing / 2` mm.
    """
    ndim = fixed.ndim
    sigma = spacing / 2.0
    fixed_level, fixed_level_affine = _pyramid(fixed, fixed_affine, spacing, sigma)
    moving_level, moving_level_affine = _pyramid(moving, moving_affine, spacing / 2.0, sigma)

    values = fixed_level.reshape(-1)
    count = values.size
    index = np.arange(count)
    if count > max_points:
        index = np.sort(rng.choice(count, size=max_points, replace=False))
    values = values[index]
    voxels = np.stack(np.unravel_index(index, fixed_level.shape), -1).astype(np.float64)
    world = voxels @ fixed_level_affine[:ndim, :ndim].T + fixed_level_affine[:ndim, ndim]
    offsets = world - centre  # (points, ndim), x - c

    weights = values - values.min()
    radius = math.sqrt(np.sum(weights * np.sum(offsets**2, axis=-1)) / max(np.sum(weights), 1e-12))
    radius = max(radius, 1.0)

    moving_values = moving_level
    if metric == "mi":
        values = _unit_range(values, values)
        moving_values = _unit_range(moving_level, moving_level)

    # Fixed world (after the optimised part) -> moving level voxel: v = G (L y + t) + g.
    to_voxel = np.linalg.inv(moving_level_affine) @ initial
    g_lin = to_voxel[:ndim, :ndim]
    g_off = to_voxel[:ndim, :ndim] @ centre + to_voxel[:ndim, ndim]
    tensors = (
        tf.constant(values, tf.float32),
        tf.constant(offsets, tf.float32),
        tf.constant(moving_values, tf.float32),
        tf.constant(g_lin, tf.float32),
        tf.constant(g_off, tf.float32),
    )
    return _Level(tensors=tensors, points=int(values.size), radius=radius)


def _pyramid(volume, affine, spacing, sigma):
    """Block-mean downsample to about `spacing` mm, then smooth to a total std of `sigma` mm.

    Returns the level's float32 array and its voxel-to-world affine (coarse voxel `i` sits at
    fine coordinate `K i + (K - 1) / 2`).
    """
    ndim = volume.ndim
    voxel_size = _voxel_size(affine)
    factors = [max(1, int(math.floor(spacing / v + 1e-6))) for v in voxel_size]
    factors = [min(f, max(1, s // 2)) for f, s in zip(factors, volume.shape, strict=True)]
    array = np.asarray(volume, np.float32)
    if any(f > 1 for f in factors):
        crop = tuple(slice(0, (s // f) * f) for s, f in zip(array.shape, factors, strict=True))
        array = array[crop]
        shape = []
        for s, f in zip(array.shape, factors, strict=True):
            shape += [s // f, f]
        array = array.reshape(shape).mean(axis=tuple(range(1, 2 * ndim, 2)), dtype=np.float32)
    # Variance left after the box of width K (in fine voxels): (K^2 - 1) / 12.
    sigmas = []
    for v, f in zip(voxel_size, factors, strict=True):
        left = sigma**2 - (f**2 - 1) / 12.0 * v**2
        sigmas.append(math.sqrt(max(left, 0.0)) / (v * f))
    if any(s > 0.1 for s in sigmas):
        array = ndimage.gaussian_filter(array, sigmas, mode="nearest", truncate=3.0)
    scale = np.eye(ndim + 1)
    for k, f in enumerate(factors):
        scale[k, k] = f
        scale[k, ndim] = (f - 1) / 2.0
    return np.ascontiguousarray(array, np.float32), affine @ scale


def _unit_range(values, reference):
    low, high = np.percentile(reference, [0.5, 99.5])
    if high <= low:
        low, high = float(np.min(reference)), float(np.max(reference))
    return np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0)


@functools.cache
def _level_step(ndim, transform, metric, bins):
    """The compiled Adam loop of one level, built once per (ndim, transform, metric, bins).

    Its inputs have free sizes (points, image shape, iterations), so every level and every
    later call reuses one traced graph.
    """
    spec = _ParamSpec(ndim, transform)
    loss_of = _METRIC_FUNCTIONS[metric]
    beta1, beta2 = _ADAM_BETAS

    def loss_fn(q, scales, values, offsets, image, g_lin, g_off):
        params = q * scales
        lin = spec.linear(params, _TfOps)  # (ndim, ndim)
        t = params[:ndim]
        moved = tf.matmul(offsets, lin, transpose_b=True) + t  # (points, ndim): L y + t
        coords = tf.matmul(moved, g_lin, transpose_b=True) + g_off  # moving level voxels
        sizes = tf.cast(tf.shape(image), tf.float32)
        inside = tf.reduce_all(
            tf.logical_and(coords >= 0.0, coords <= sizes - 1.0), axis=-1
        )  # (points,)
        weights = tf.cast(inside, tf.float32)
        # resample wants (batch, *out_spatial, ndim) with as many out axes as ndim.
        sample_coords = tf.reshape(coords, [1, -1] + [1] * (ndim - 1) + [ndim])
        sampled = resample(image[None, ..., None], sample_coords)  # (1, points, 1.., 1)
        sampled = tf.reshape(sampled, [-1])
        return loss_of(values, sampled, weights, bins)

    signature = [
        tf.TensorSpec([spec.size], tf.float32),  # q
        tf.TensorSpec([None], tf.float32),  # learning rates, one per iteration
        tf.TensorSpec([spec.size], tf.float32),  # scales
        tf.TensorSpec([None], tf.float32),  # fixed values
        tf.TensorSpec([None, ndim], tf.float32),  # fixed offsets x - c (mm)
        tf.TensorSpec([None] * ndim, tf.float32),  # moving level image
        tf.TensorSpec([ndim, ndim], tf.float32),  # G
        tf.TensorSpec([ndim], tf.float32),  # g
    ]

    # No autograph: the loop is an explicit tf.while_loop, and nothing reads source files.
    @tf.function(input_signature=signature, autograph=False)
    def step(q, lrs, scales, values, offsets, image, g_lin, g_off):
        n = tf.shape(lrs)[0]

        def body(i, q, m, v, losses):
            with tf.GradientTape() as tape:
                tape.watch(q)
                loss = loss_fn(q, scales, values, offsets, image, g_lin, g_off)
            grad = tape.gradient(loss, q)
            grad = tf.where(tf.math.is_finite(grad), grad, 0.0)
            # Adam (Kingma & Ba 2015) with bias correction.
            m = beta1 * m + (1.0 - beta1) * grad
            v = beta2 * v + (1.0 - beta2) * tf.square(grad)
            k = tf.cast(i + 1, tf.float32)
            m_hat = m / (1.0 - beta1**k)
            v_hat = v / (1.0 - beta2**k)
            q = q - lrs[i] * m_hat / (tf.sqrt(v_hat) + _ADAM_EPSILON)
            return i + 1, q, m, v, losses.write(i, loss)

        losses = tf.TensorArray(tf.float32, size=n + 1)
        _, q, _, _, losses = tf.while_loop(
            lambda i, *_: i < n,
            body,
            (tf.constant(0), q, tf.zeros_like(q), tf.zeros_like(q), losses),
        )
        final = loss_fn(q, scales, values, offsets, image, g_lin, g_off)
        losses = losses.write(n, final)
        return q, losses.stack()

    return step


# --- Metrics on weighted point sets: values (points,), sampled (points,), weights (points,) ---


def _ncc_loss(values, sampled, weights, bins):
    """Negative global NCC: -cov(f, m) / sqrt(var(f) var(m)), weighted means over the points."""
    del bins
    total = tf.reduce_sum(weights) + _NCC_EPSILON
    f_mean = tf.reduce_sum(weights * values) / total
    m_mean = tf.reduce_sum(weights * sampled) / total
    f = values - f_mean
    m = sampled - m_mean
    cov = tf.reduce_sum(weights * f * m) / total
    f_var = tf.reduce_sum(weights * f * f) / total
    m_var = tf.reduce_sum(weights * m * m) / total
    return -cov / tf.sqrt(f_var * m_var + _NCC_EPSILON)


def _mse_loss(values, sampled, weights, bins):
    """Weighted mean squared difference."""
    del bins
    total = tf.reduce_sum(weights) + _NCC_EPSILON
    return tf.reduce_sum(weights * tf.square(values - sampled)) / total


def _mi_loss(values, sampled, weights, bins):
    """Negative mutual information of a Parzen-window joint histogram (Mattes et al. 2003).

    Intensities lie in [0, 1]; bin centres `b_k = (k + 1/2) / bins`; each point adds the
    normalised Gaussian kernels `K(f - b_k) K(m - b_l)` (std one bin) to the joint histogram
    `p(k, l)`, and MI = sum p(k, l) log(p(k, l) / (p(k) p(l))).
    """
    centres = (tf.range(bins, dtype=tf.float32) + 0.5) / bins
    sigma = 1.0 / bins

    def parzen(x):
        x = tf.clip_by_value(x, 0.0, 1.0)
        kernel = tf.exp(-0.5 * tf.square((x[:, None] - centres[None, :]) / sigma))  # (points, bins)
        return kernel / (tf.reduce_sum(kernel, axis=1, keepdims=True) + _MI_EPSILON)

    f_kernel = parzen(values) * weights[:, None]
    m_kernel = parzen(sampled)
    joint = tf.matmul(f_kernel, m_kernel, transpose_a=True)  # (bins, bins)
    joint = joint / (tf.reduce_sum(joint) + _MI_EPSILON)
    p_f = tf.reduce_sum(joint, axis=1, keepdims=True)
    p_m = tf.reduce_sum(joint, axis=0, keepdims=True)
    mi = tf.reduce_sum(
        joint
        * (
            tf.math.log(joint + _MI_EPSILON)
            - tf.math.log(p_f + _MI_EPSILON)
            - tf.math.log(p_m + _MI_EPSILON)
        )
    )
    return -mi


_METRIC_FUNCTIONS = {"ncc": _ncc_loss, "mse": _mse_loss, "mi": _mi_loss}


# --- Geometry helpers -------------------------------------------------------------------------


def _voxel_size(affine):
    ndim = affine.shape[0] - 1
    return np.sqrt(np.sum(affine[:ndim, :ndim] ** 2, axis=0))


def _centre_of_mass(volume, affine):
    """Intensity-weighted centre (weights `volume - min(volume)`) in world mm."""
    ndim = volume.ndim
    weights = np.asarray(volume, np.float64) - float(np.min(volume))
    total = weights.sum()
    if total <= 0:
        centre = (np.asarray(volume.shape) - 1) / 2.0
    else:
        centre = np.empty(ndim)
        for k in range(ndim):
            others = tuple(a for a in range(ndim) if a != k)
            marginal = weights.sum(axis=others)  # (shape[k],)
            centre[k] = np.dot(np.arange(volume.shape[k]), marginal) / total
    return affine[:ndim, :ndim] @ centre + affine[:ndim, ndim]


def _fov_centre(shape, affine):
    ndim = len(shape)
    centre = (np.asarray(shape, np.float64) - 1) / 2.0
    return affine[:ndim, :ndim] @ centre + affine[:ndim, ndim]


def _overlap(fixed, fixed_affine, moving_shape, moving_affine, matrix):
    """Share of the fixed intensity mass (on a ~32-per-axis subgrid) mapped into the moving FOV."""
    ndim = fixed.ndim
    strides = [max(1, s // 32) for s in fixed.shape]
    sub = np.asarray(fixed[tuple(slice(None, None, s) for s in strides)], np.float64)
    weights = (sub - sub.min()).reshape(-1)
    if weights.sum() <= 0:
        weights = np.ones_like(weights)
    grid = np.stack(
        np.meshgrid(*[np.arange(0, n, s) for n, s in zip(fixed.shape, strides, strict=True)],
                    indexing="ij"),
        -1,
    ).reshape(-1, ndim)  # fmt: skip
    voxel = np.linalg.inv(moving_affine) @ matrix @ fixed_affine
    coords = grid @ voxel[:ndim, :ndim].T + voxel[:ndim, ndim]
    inside = np.all((coords >= -0.5) & (coords <= np.asarray(moving_shape) - 0.5), axis=-1)
    return float(np.sum(weights * inside) / np.sum(weights))


# --- Checks -----------------------------------------------------------------------------------


def _check_names(names):
    if isinstance(names, str) or len(names) != 2:
        raise ValueError(f"`names` must be two strings (moving, fixed). Received: names={names!r}")
    return str(names[0]), str(names[1])


def _check_volume(volume, name):
    array = np.asarray(volume)
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise TypeError(f"{name} must be a numeric array. Received: dtype={array.dtype}")
    if array.ndim not in (2, 3):
        raise ValueError(
            f"{name} must be a 2D or 3D volume (no batch or channel axes). "
            f"Received: shape={array.shape}"
        )
    if min(array.shape) < 2:
        raise ValueError(
            f"{name} must have at least 2 voxels along every axis. Received: shape={array.shape}"
        )
    array = array.astype(np.float32, copy=False)
    bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise ValueError(
            f"{name} must be finite everywhere. Received: {bad} NaN or infinite voxels of "
            f"{array.size}"
        )
    if float(array.max()) == float(array.min()):
        raise ValueError(
            f"{name} is constant, so nothing can be aligned. Received: every voxel = "
            f"{float(array.min())}"
        )
    return array


def _check_affine(affine, ndim, name, allow_reduce=True):
    """A finite, invertible `(ndim + 1, ndim + 1)` float64 affine (a 2D one may come as 4x4)."""
    array = np.asarray(affine, dtype=np.float64)
    size = ndim + 1
    if ndim == 2 and allow_reduce and array.shape == (4, 4):
        coupled = np.abs(array[:2, 2]).max() > 0 or np.abs(array[2, :2]).max() > 0
        if coupled:
            raise ValueError(
                f"{name}: a 2D volume's (4, 4) affine must not mix the in-plane axes with the "
                f"third. Received: {name}=\n{array}"
            )
        array = array[np.ix_([0, 1, 3], [0, 1, 3])]
    if array.shape != (size, size):
        expected = "(3, 3) or (4, 4)" if ndim == 2 and allow_reduce else f"({size}, {size})"
        raise ValueError(
            f"{name} must be a {expected} homogeneous matrix for a {ndim}D volume. "
            f"Received: shape={array.shape}"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite. Received: {name}=\n{array}")
    if not np.allclose(array[ndim], np.eye(size)[ndim]):
        raise ValueError(
            f"{name} must end with the row {np.eye(size)[ndim].tolist()}. "
            f"Received: last row={array[ndim].tolist()}"
        )
    linear = array[:ndim, :ndim]
    norms = np.sqrt(np.sum(linear**2, axis=0))
    det = np.linalg.det(linear)
    if not np.all(norms > 0) or abs(det) <= 1e-6 * np.prod(norms):
        raise ValueError(
            f"{name} must be invertible. Received: determinant={det:.3g}, {name}=\n{array}"
        )
    return array


def _check_positive(value, name):
    if not (isinstance(value, (int, float, np.number)) and math.isfinite(value) and value > 0):
        raise ValueError(f"`{name}` must be a positive number. Received: {name}={value!r}")


def _check_schedule(levels, iterations):
    levels = tuple(levels)
    iterations = tuple(iterations)
    if not levels or len(levels) != len(iterations):
        raise ValueError(
            "`levels` and `iterations` must be non-empty and of the same length (one number of "
            f"iterations per level). Received: levels={levels}, iterations={iterations}"
        )
    for spacing in levels:
        _check_positive(spacing, "levels entry")
    for n in iterations:
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"`iterations` must be positive integers. Received: {iterations}")
    return tuple(float(s) for s in levels), tuple(int(n) for n in iterations)
