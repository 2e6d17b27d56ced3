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
