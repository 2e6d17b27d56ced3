"""`vxmtf.ops.resample` / `warp` against SciPy's `map_coordinates`."""

import numpy as np
import pytest
import tensorflow as tf
from helpers import scipy_warp
from scipy import ndimage

from vxmtf.ops import identity_grid, resample, warp


def smooth_field(rng, shape, amplitude):
    """A random smooth displacement field (*shape, ndim) of roughly `amplitude` voxels."""
    ndim = len(shape)
    field = rng.normal(size=(*shape, ndim))
    for k in range(ndim):
        field[..., k] = ndimage.gaussian_filter(field[..., k], sigma=2.0)
        field[..., k] *= amplitude / (np.abs(field[..., k]).max() + 1e-12)
    return field


def interior(shape, margin):
    return tuple(slice(margin, s - margin) for s in shape)


@pytest.mark.parametrize("shape", [(17, 20), (9, 12, 10)])
@pytest.mark.parametrize("order,interpolation", [(1, "linear"), (0, "nearest")])
def test_warp_matches_scipy(shape, order, interpolation):
    rng = np.random.default_rng(0)
    batch, channels = 2, 3
    images = rng.normal(size=(batch, *shape, channels)).astype(np.float32)
    fields = np.stack([smooth_field(rng, shape, 2.5) for _ in range(batch)]).astype(np.float32)
    out = warp(images, fields, interpolation=interpolation).numpy()
    assert out.shape == images.shape
    for b in range(batch):
        expected = scipy_warp(images[b], fields[b].astype(np.float64), order=order)
        if order == 0:
            # Away from exact .5 ties, rounding agrees everywhere (border clamping = "nearest").
            frac = np.abs(np.mod(fields[b], 1.0) - 0.5)
            ok = np.all(frac > 1e-3, axis=-1)
            np.testing.assert_array_equal(out[b][ok], expected[ok])
        else:
            # Border clamping equals scipy's mode="nearest" everywhere.
            np.testing.assert_allclose(out[b], expected, atol=1e-5)


@pytest.mark.parametrize("shape", [(12, 14), (8, 10, 9)])
@pytest.mark.parametrize("order,interpolation", [(1, "linear"), (0, "nearest")])
def test_fill_value_matches_scipy_grid_constant(shape, order, interpolation):
    rng = np.random.default_rng(1)
    image = rng.normal(size=(1, *shape, 1)).astype(np.float32)
    field = (smooth_field(rng, shape, 4.0)[None]).astype(np.float32)
    out = warp(image, field, interpolation=interpolation, fill_value=-3.0).numpy()[0]
    expected = scipy_warp(image[0], field[0].astype(np.float64), order, "grid-constant", -3.0)
    if order == 0:
        frac = np.abs(np.mod(field[0], 1.0) - 0.5)
        ok = np.all(frac > 1e-3, axis=-1)
        np.testing.assert_array_equal(out[ok], expected[ok])
    else:
        np.testing.assert_allclose(out, expected, atol=1e-5)
    assert np.any(out == -3.0) or order == 1  # some samples lie fully outside


@pytest.mark.parametrize("interpolation", ["linear", "nearest"])
@pytest.mark.parametrize("shape", [(6, 7), (5, 6, 7)])
def test_zero_field_returns_input_exactly(interpolation, shape):
    image = np.random.default_rng(2).normal(size=(2, *shape, 2)).astype(np.float32)
    out = warp(image, np.zeros((2, *shape, len(shape)), np.float32), interpolation)
    np.testing.assert_array_equal(out.numpy(), image)


@pytest.mark.parametrize("interpolation", ["linear", "nearest"])
def test_integer_shift_equals_roll(interpolation):
    shape = (10, 11, 12)
    image = np.random.default_rng(3).normal(size=(1, *shape, 1)).astype(np.float32)
    shift = np.array([2, -1, 3])
    field = np.broadcast_to(shift.astype(np.float32), (1, *shape, 3))
    out = warp(image, field, interpolation).numpy()
    # out[x] = image[x + s]  <=>  np.roll by -s; compare where x + s stays inside.
    rolled = np.roll(image, tuple(-shift), axis=(1, 2, 3))
    inside = (slice(None), slice(0, 8), slice(1, 11), slice(0, 9), slice(None))
    np.testing.assert_array_equal(out[inside], rolled[inside])


@pytest.mark.parametrize("shape", [(9, 8), (7, 8, 6)])
def test_linear_ramp_reproduced_exactly(shape):
    """Linear interpolation of a linear function is exact: ramp(x + d) = ramp(x) + a . d."""
    rng = np.random.default_rng(4)
    ndim = len(shape)
    slope = rng.uniform(-1, 1, size=ndim)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    ramp = (grid @ slope + 0.5)[None, ..., None].astype(np.float32)
    field = smooth_field(rng, shape, 1.5)
    # Keep every sample strictly inside so that no clamping applies.
    coords = np.clip(grid + field, 0, np.array(shape) - 1)
    field = (coords - grid)[None].astype(np.float32)
    out = warp(ramp, field).numpy()
    expected = ((grid + field[0]) @ slope + 0.5)[None, ..., None]
    np.testing.assert_allclose(out, expected, atol=2e-5)


def test_resample_to_other_grid_and_dynamic_shapes():
    """resample reads (batch, *out_spatial) coordinates; works with unknown sizes under XLA."""
    image = np.arange(4 * 5, dtype=np.float32).reshape(1, 4, 5, 1)
    coords = np.array([[[[0.5, 0.0], [3.0, 4.0], [1.25, 2.5]]]], np.float32)  # (1, 1, 3, 2)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, None, 1], tf.float32),
            tf.TensorSpec([None, None, None, 2], tf.float32),
        ],
        jit_compile=True,
    )
    def run(i, c):
        return resample(i, c)

    out = run(image, coords).numpy()[0, 0, :, 0]
    # The image is f(i, j) = 5 i + j, linear, so values are exact.
    np.testing.assert_allclose(out, [2.5, 19.0, 8.75], atol=1e-6)


def test_identity_grid():
    grid = identity_grid([2, 3]).numpy()
    assert grid.shape == (2, 3, 2)
    np.testing.assert_array_equal(grid[1, 2], [1.0, 2.0])


def test_gradient_float64_finite_differences():
    rng = np.random.default_rng(5)
    shape = (5, 6, 4)
    image = tf.constant(rng.normal(size=(1, *shape, 2)))
    # Fractional displacements away from integer kinks, where the warp is smooth.
    field = tf.constant(
        rng.uniform(0.2, 0.8, size=(1, *shape, 3)) * rng.choice([-1, 1], (1, *shape, 3))
    )

    def f(img, disp):
        return tf.cast(warp(img, disp), tf.float64)

    theoretical, numerical = tf.test.compute_gradient(f, [image, field], delta=1e-4)
    for t, n in zip(theoretical, numerical, strict=True):
        np.testing.assert_allclose(t, n, atol=1e-6)


def test_linear_rejects_integer_image():
    with pytest.raises(TypeError, match="floating-point"):
        warp(tf.zeros((1, 4, 4, 1), tf.int32), tf.zeros((1, 4, 4, 2)))


def test_unknown_interpolation():
    with pytest.raises(ValueError, match="Received: interpolation='cubic'"):
        warp(tf.zeros((1, 4, 4, 1)), tf.zeros((1, 4, 4, 2)), interpolation="cubic")


@pytest.mark.parametrize("rows", [1, 3, 7, 100])
def test_warp_by_rows_equals_the_whole_warp(rows):
    """`warp(..., rows=...)` computes chunks of output rows in a loop: the same values, eager and
    inside a graph with unknown sizes."""
    rng = np.random.default_rng(5)
    image = tf.constant(rng.uniform(size=(2, 9, 6, 5, 2)).astype(np.float32))
    field = tf.constant(rng.normal(0, 2, size=(2, 9, 6, 5, 3)).astype(np.float32))
    whole = warp(image, field).numpy()
    np.testing.assert_array_equal(warp(image, field, rows=rows).numpy(), whole)
    specs = [tf.TensorSpec([None] * 5, tf.float32), tf.TensorSpec([None] * 4 + [3], tf.float32)]
    graph = tf.function(lambda i, d: warp(i, d, rows=rows), input_signature=specs)
    np.testing.assert_array_equal(graph(image, field).numpy(), whole)
    labels = tf.constant(rng.integers(0, 4, size=(2, 9, 6, 5, 1)).astype(np.int32))
    np.testing.assert_array_equal(
        warp(labels, field, "nearest", rows=rows).numpy(), warp(labels, field, "nearest").numpy()
    )


# ------------------------------------------------ extreme and non-finite coordinates

#: Coordinates past int32 (2**31 ~ 2.1e9) and far beyond, non-finite ones, and ordinary ones.
EXTREME = [2.2e9, -2.2e9, 3e9, -3e9, 1e20, -1e20, np.nan, np.inf, -np.inf]


def numpy_resample(image, coords, interpolation, fill_value):
    """Oracle in float64 for one `(*S)` image at `(*out, ndim)` coordinates: the documented
    rules (border clamp or fill; NaN, or the fill / 0 for integers, at a non-finite one)."""
    image = np.asarray(image)
    shape = np.array(image.shape)
    coords = np.asarray(coords, np.float64)
    finite = np.all(np.isfinite(coords), axis=-1)
    safe = np.where(np.isfinite(coords), coords, 0.0)
    if interpolation == "nearest":
        index = np.floor(safe + 0.5)
        out = image[
            tuple(
                np.clip(index, 0, shape - 1).astype(np.int64).transpose(-1, *range(index.ndim - 1))
            )
        ]
        if fill_value is not None:
            out = np.where(np.all((index >= 0) & (index < shape), axis=-1), out, fill_value)
    else:
        lower = np.floor(safe)
        frac = safe - lower
        out = np.zeros(coords.shape[:-1])
        for corner in np.ndindex(*(2,) * len(shape)):
            index = lower + np.array(corner)
            weight = np.prod(np.where(np.array(corner), frac, 1 - frac), axis=-1)
            clipped = np.clip(index, 0, shape - 1).astype(np.int64)
            value = image[tuple(np.moveaxis(clipped, -1, 0))].astype(np.float64)
            if fill_value is not None:
                value = np.where(np.all((index >= 0) & (index < shape), axis=-1), value, fill_value)
            out += weight * value
    if np.issubdtype(image.dtype, np.floating):
        return np.where(finite, out, np.nan)
    return np.where(finite, out, 0 if fill_value is None else fill_value).astype(image.dtype)


def _extreme_coords(rng, shape, count=200):
    """Random coordinates in and around the image, some axes set to `EXTREME` values; the
    fractional parts stay away from the .5 ties of rounding."""
    ndim = len(shape)
    coords = rng.uniform(-3, np.array(shape) + 2, size=(count, ndim))
    coords = np.floor(coords) + rng.uniform(0.05, 0.45, size=coords.shape)
    hit = rng.uniform(size=coords.shape) < 0.3
    coords[hit] = rng.choice(EXTREME, size=hit.sum())
    coords[: len(EXTREME), 0] = EXTREME  # each value at least once, on the first axis
    return coords.astype(np.float32)


def _as_grid(coords):
    """`(count, ndim)` points as the `(1, count, 1, ..., ndim)` grid `resample` reads."""
    ndim = coords.shape[-1]
    return coords.reshape(1, len(coords), *(1,) * (ndim - 1), ndim)


@pytest.mark.parametrize("shape", [(7, 9), (5, 6, 4)])
@pytest.mark.parametrize("fill_value", [None, -3.0])
@pytest.mark.parametrize("interpolation", ["linear", "nearest"])
def test_extreme_and_non_finite_coordinates_match_numpy(shape, fill_value, interpolation):
    """Coordinates past int32 clamp to their own border (or give the fill) instead of wrapping
    to voxel 0; non-finite ones give NaN, never some voxel's value."""
    rng = np.random.default_rng(11)
    image = rng.uniform(1, 2, size=shape).astype(np.float32)
    coords = _extreme_coords(rng, shape)
    out = resample(image[None, ..., None], _as_grid(coords), interpolation, fill_value)
    out = out.numpy().reshape(-1)
    expected = numpy_resample(image, coords, interpolation, fill_value)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    # Not trivial: both borders, the fill (if any) and NaN all occur.
    assert np.isnan(out).sum() >= 3 and np.isfinite(out).sum() > 50
    if fill_value is None:
        assert np.any(out == image.flat[-1]) or interpolation == "linear"


@pytest.mark.parametrize("fill_value", [None, 7])
def test_integer_labels_at_non_finite_coordinates_get_the_fill_or_zero(fill_value):
    rng = np.random.default_rng(12)
    shape = (6, 5, 4)
    labels = rng.integers(1, 5, size=shape).astype(np.int32)  # no voxel holds 0 (or 7)
    coords = _extreme_coords(rng, shape)
    out = resample(labels[None, ..., None], _as_grid(coords), "nearest", fill_value)
    out = out.numpy().reshape(-1)
    expected = numpy_resample(labels, coords, "nearest", fill_value)
    np.testing.assert_array_equal(out, expected)
    undefined = ~np.all(np.isfinite(coords), axis=-1)
    assert undefined.sum() >= 3
    np.testing.assert_array_equal(out[undefined], 0 if fill_value is None else fill_value)


def test_huge_and_nan_displacements_in_a_warp():
    """The warp of a 1D-like label volume: +2.2e9 reads the last voxel, NaN reads no voxel."""
    labels = np.arange(1, 9, dtype=np.int32).reshape(1, 8, 1, 1)
    field = np.zeros((1, 8, 1, 2), np.float32)
    field[0, 2, 0, 0], field[0, 3, 0, 0], field[0, 4, 0, 0] = 2.2e9, -2.2e9, np.nan
    out = warp(labels, field, "nearest").numpy()[0, :, 0, 0]
    np.testing.assert_array_equal(out, [1, 2, 8, 1, 0, 6, 7, 8])
    out = warp(labels.astype(np.float32), field, "linear").numpy()[0, :, 0, 0]
    np.testing.assert_array_equal(out[[0, 1, 2, 3, 5]], [1, 2, 8, 1, 6])
    assert np.isnan(out[4])
