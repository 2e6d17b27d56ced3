"""`register_affine`: initialisation, then Adam over an image pyramid (see `vxmtf.affine`)."""

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

from vxmtf.affine import _checks
from vxmtf.affine._metrics import METRIC_FUNCTIONS
from vxmtf.affine._parameters import ParamSpec, TfOps
from vxmtf.affine.result import AffineResult
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
    moving_name, fixed_name = _checks.check_names(names)
    moving = _checks.check_volume(moving, moving_name)
    fixed = _checks.check_volume(fixed, fixed_name)
    if moving.ndim != fixed.ndim:
        raise ValueError(
            "The moving and fixed volumes must have the same rank. "
            f"Received: {moving_name} shape={moving.shape}, {fixed_name} shape={fixed.shape}"
        )
    ndim = fixed.ndim
    moving_affine = _checks.check_affine(moving_affine, ndim, f"{moving_name} affine")
    fixed_affine = _checks.check_affine(fixed_affine, ndim, f"{fixed_name} affine")
    check_choice("transform", transform, TRANSFORMS)
    check_choice("metric", metric, METRICS)
    check_choice("init", init, INITS)
    levels, iterations = _checks.check_schedule(levels, iterations)
    _checks.check_positive(learning_rate, "learning_rate")
    if not isinstance(max_points, (int, np.integer)) or max_points < 16:
        raise ValueError(f"`max_points` must be an integer >= 16. Received: {max_points=}")
    if not isinstance(bins, (int, np.integer)) or bins < 4:
        raise ValueError(f"`bins` must be an integer >= 4. Received: {bins=}")
    if not 0.0 <= min_overlap <= 1.0:
        raise ValueError(f"`min_overlap` must lie in [0, 1]. Received: {min_overlap=}")

    # Initial world map (fixed -> moving) and the centre the optimised part acts around.
    fixed_com = _centre_of_mass(fixed, fixed_affine)
    if initial_matrix is not None:
        initial = _checks.check_affine(
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

    spec = ParamSpec(ndim, transform)
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
    spec = ParamSpec(ndim, transform)
    loss_of = METRIC_FUNCTIONS[metric]
    beta1, beta2 = _ADAM_BETAS

    def loss_fn(q, scales, values, offsets, image, g_lin, g_off):
        params = q * scales
        lin = spec.linear(params, TfOps)  # (ndim, ndim)
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
