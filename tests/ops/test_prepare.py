"""`vxmtf.ops.prepare` against the NumPy preprocessing of `vxmtf.data.preprocess` (the oracles)."""

import numpy as np
import pytest
import tensorflow as tf

from vxmtf.data.preprocess import (
    downsample_image,
    normalize_intensity,
    resize_displacement,
)
from vxmtf.data.preprocess import (
    pad_to_multiple as np_pad_to_multiple,
)
from vxmtf.ops import (
    crop,
    downsample_mean,
    normalize_minmax,
    normalize_percentile,
    pad_to_multiple,
    percentile,
    resize_field_to,
    warp,
    warp_by_rows,
)
from vxmtf.ops.prepare import normalize

SHAPES = [(7, 9), (6, 5, 7), (16, 11, 13)]


def batch_of(rng, shape, batch=2):
    """Samples of different ranges and offsets `(batch, *shape, 1)`, float32."""
    x = rng.normal(size=(batch, *shape, 1)) * np.array([1.0, 1000.0, 3.0][:batch]).reshape(
        (batch,) + (1,) * (len(shape) + 1)
    )
    return (
        x + np.array([0.0, 50.0, -7.0][:batch]).reshape((batch,) + (1,) * (len(shape) + 1))
    ).astype(np.float32)


def per_sample(function, x, *args):
    return np.stack([function(sample, *args) for sample in x])


# --- normalisation -------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_minmax_matches_normalize_intensity(shape):
    x = batch_of(np.random.default_rng(0), shape)
    out = normalize_minmax(tf.constant(x)).numpy()
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_array_equal(out, per_sample(normalize_intensity, x, "minmax"))
    np.testing.assert_allclose(out.min(axis=(1, 2, 3, 4)[: x.ndim - 1]), 0.0)
    np.testing.assert_allclose(out.max(axis=(1, 2, 3, 4)[: x.ndim - 1]), 1.0, rtol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("percentiles", [(1.0, 99.0), (0.0, 100.0), (2.5, 60.0), (45.0, 97.3)])
def test_percentile_normalisation_matches_normalize_intensity(shape, percentiles):
    x = batch_of(np.random.default_rng(1), shape)
    out = normalize_percentile(tf.constant(x), percentiles).numpy()
    expected = per_sample(normalize_intensity, x, "percentile", percentiles)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("n", [1, 2, 3, 10, 101, 1000])
def test_percentile_matches_numpy_exactly(n):
    rng = np.random.default_rng(n)
    x = (rng.normal(size=(3, n)) * 100 + 5).astype(np.float32)
    x[1] = np.round(x[1] / 50)  # ties
    q = (0.0, 1.0, 33.3, 50.0, 62.5, 99.0, 100.0)
    out = percentile(tf.constant(x), q).numpy()
    assert out.shape == (3, len(q)) and out.dtype == np.float64
    np.testing.assert_array_equal(out, np.stack([np.percentile(row, q) for row in x]))


def test_percentile_rejects_out_of_range():
    with pytest.raises(ValueError, match=r"Received: q=\[101.0\]"):
        percentile(tf.zeros([1, 4]), [101])
    with pytest.raises(ValueError, match="Received: percentiles="):
        normalize_percentile(tf.zeros([1, 4, 1]), (99.0, 1.0))


def test_nan_inf_and_constant_samples():
    x = np.ones((3, 4, 5, 1), np.float32)
    x[1, 0, 0] = np.nan
    x[1, 1, 1] = 3.0
    x[2, 2, 2] = np.inf
    x[2, 1, 1] = -2.0
    for method in ("minmax", "percentile", None):
        out = normalize(tf.constant(x), method).numpy()
        expected = per_sample(normalize_intensity, x, method)
        assert np.isfinite(out).all()
        # A sample holding inf (float32 max) has a scale of about 1 / float32 max, a denormal
        # that TensorFlow flushes to zero and NumPy keeps: only the cast compares there.
        rows = [0, 1, 2] if method is None else [0, 1]
        np.testing.assert_allclose(out[rows], expected[rows], atol=1e-6)
    np.testing.assert_array_equal(normalize_minmax(tf.constant(x)).numpy()[0], 0.0)
    with pytest.raises(ValueError, match="Received: method='zscore'"):
        normalize(tf.constant(x), "zscore")


def test_normalisation_with_unknown_shapes_in_a_graph():
    spec = tf.TensorSpec([None, None, None, None, 1], tf.float32)
    fn = tf.function(lambda x: normalize_percentile(x, (1.0, 99.0)), input_signature=[spec])
    x = batch_of(np.random.default_rng(2), (6, 5, 7))
    np.testing.assert_allclose(
        fn(x).numpy(), per_sample(normalize_intensity, x, "percentile"), atol=1e-6
    )


# --- downsampling and padding --------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("factor", [1, 2, 3])
def test_downsample_mean_matches_downsample_image(shape, factor):
    x = batch_of(np.random.default_rng(3), shape)
    out = downsample_mean(tf.constant(x), factor).numpy()
    expected = per_sample(downsample_image, x[..., 0], factor)[..., None]
    assert out.shape == expected.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)


def test_downsample_mean_of_a_ramp_is_the_block_centre():
    # The mean of a linear ramp over a block is its value at the block centre K i + (K - 1) / 2;
    # the trailing incomplete block (row 6) is dropped.
    x = np.arange(7, dtype=np.float32)[None, :, None, None] * np.ones((1, 7, 4, 1), np.float32)
    out = downsample_mean(tf.constant(x), 3).numpy()
    np.testing.assert_allclose(out[0, :, 0, 0], [1.0, 4.0])


@pytest.mark.parametrize(("shape", "multiple"), [((7, 9), 4), ((6, 5, 7), 8), ((16, 11, 13), 16)])
def test_pad_and_crop_match_pad_to_multiple(shape, multiple):
    x = batch_of(np.random.default_rng(4), shape)
    padded, before = pad_to_multiple(tf.constant(x), multiple)
    expected, padding = np_pad_to_multiple(x[0, ..., 0], multiple)
    np.testing.assert_array_equal(padded.numpy()[0, ..., 0], expected)
    np.testing.assert_array_equal(before.numpy(), padding.before)
    back = crop(padded, before, shape).numpy()
    np.testing.assert_array_equal(back, x)
    assert padded.shape[-1] == 1


def test_bad_factors():
    for value in (0, 2.0, True):
        with pytest.raises(ValueError, match="Received: factor="):
            downsample_mean(tf.zeros([1, 4, 4, 1]), value)
    with pytest.raises(ValueError, match="Received: multiple=0"):
        pad_to_multiple(tf.zeros([1, 4, 4, 1]), 0)


# --- field resizing and warps --------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("factor", [1, 2, 3])
def test_resize_field_to_matches_resize_displacement(shape, factor):
    rng = np.random.default_rng(5)
    coarse = tuple(s // factor for s in shape)
    field = rng.normal(size=(2, *coarse, len(shape))).astype(np.float32)
    out = resize_field_to(tf.constant(field), shape, factor).numpy()
    expected = per_sample(resize_displacement, field, shape, factor)
    assert out.shape == (2, *shape, len(shape))
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_resize_field_to_with_unknown_shapes_in_a_graph():
    spec = tf.TensorSpec([None, None, None, None, 3], tf.float32)
    shape_spec = tf.TensorSpec([3], tf.int32)
    fn = tf.function(lambda f, s: resize_field_to(f, s, 2), input_signature=[spec, shape_spec])
    field = np.random.default_rng(6).normal(size=(1, 3, 2, 3, 3)).astype(np.float32)
    out = fn(field, tf.constant([7, 5, 6])).numpy()
    np.testing.assert_allclose(out[0], resize_displacement(field[0], (7, 5, 6), 2), atol=1e-6)


@pytest.mark.parametrize("interpolation", ["linear", "nearest"])
@pytest.mark.parametrize("budget", [1, 3000, 2**30])
def test_warp_by_rows_equals_the_whole_warp(interpolation, budget):
    rng = np.random.default_rng(7)
    image = rng.normal(size=(2, 9, 6, 5, 2)).astype(np.float32)
    displacement = rng.normal(0, 2, size=(2, 9, 6, 5, 3)).astype(np.float32)
    out = warp_by_rows(image, displacement, interpolation, budget=budget).numpy()
    np.testing.assert_array_equal(out, warp(image, displacement, interpolation).numpy())
