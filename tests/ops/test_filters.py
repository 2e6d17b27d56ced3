"""Tests for vxmtf.ops.filters.box_sum against a dense SciPy convolution with a ones kernel."""

import numpy as np
import pytest
import scipy.ndimage
import tensorflow as tf

from vxmtf.ops.filters import box_sum

SHAPES = {2: (2, 11, 13, 3), 3: (2, 9, 12, 7, 2)}
METHODS = ("auto", "conv", "shift")


def _brute_force(x, windows):
    """Dense convolution with ones and zero padding ('same'), in float64."""
    kernel = np.ones((1, *windows, 1))
    return scipy.ndimage.convolve(np.asarray(x, np.float64), kernel, mode="constant", cval=0.0)


def _random(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("window", [3, 5, 9])
@pytest.mark.parametrize("ndim", [2, 3])
def test_matches_dense_convolution(ndim, window, method):
    x = _random(SHAPES[ndim])
    out = box_sum(tf.constant(x), window, method=method)
    assert out.shape == x.shape and out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy(), _brute_force(x, (window,) * ndim), atol=2e-5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("ndim", [2, 3])
def test_per_axis_windows_and_window_larger_than_volume(ndim, method):
    x = _random(SHAPES[ndim], seed=1)
    windows = (3, 1, 5) if ndim == 3 else (1, 7)
    out = box_sum(x, windows, method=method)
    np.testing.assert_allclose(out.numpy(), _brute_force(x, windows), atol=2e-5)
    # A window wider than the volume sums every voxel of the line (plus padding zeros).
    big = (31,) * ndim
    np.testing.assert_allclose(
        box_sum(x, big, method=method).numpy(), _brute_force(x, big), rtol=1e-5, atol=1e-4
    )


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("ndim", [2, 3])
def test_unknown_shapes_in_tf_function(ndim, method, jit_compile):
    spec = tf.TensorSpec([None] * (ndim + 2), tf.float32)
    fn = tf.function(
        lambda t: box_sum(t, 5, method=method), input_signature=[spec], jit_compile=jit_compile
    )
    for seed, shape in enumerate([SHAPES[ndim], (1,) + tuple(s + 2 for s in SHAPES[ndim][1:])]):
        x = _random(shape, seed)
        np.testing.assert_allclose(
            fn(tf.constant(x)).numpy(), _brute_force(x, (5,) * ndim), atol=2e-5
        )


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
@pytest.mark.parametrize("method", ["conv", "shift"])
def test_other_float_dtypes(dtype, method):
    x = np.random.default_rng(2).uniform(size=SHAPES[3]).astype(np.float32)
    out = box_sum(tf.cast(x, dtype), 3, method=method)
    assert out.dtype == dtype
    rtol = {"float16": 3e-3, "bfloat16": 3e-2, "float64": 1e-12}[dtype]
    rounded = tf.cast(tf.cast(x, dtype), tf.float64).numpy()
    np.testing.assert_allclose(
        tf.cast(out, tf.float64).numpy(), _brute_force(rounded, (3,) * 3), rtol=rtol
    )


@pytest.mark.parametrize("method", ["conv", "shift"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_gradient_matches_finite_differences(ndim, method):
    shape = (1, 5, 6, 2) if ndim == 2 else (1, 4, 5, 3, 2)
    x = tf.constant(_random(shape, 3).astype(np.float64))
    weights = tf.constant(_random(shape, 4).astype(np.float64))

    def objective(t):
        return tf.reduce_sum(box_sum(t, 3, method=method) * weights)

    theoretical, numerical = tf.test.compute_gradient(objective, [x], delta=1e-5)
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-6)


def test_gradient_is_box_sum_of_upstream():
    # d/dx sum(w * B x) = B^T w = B w for the symmetric box filter, checked with SciPy.
    x = tf.constant(_random(SHAPES[3]))
    weights = _random(SHAPES[3], 5)
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = tf.reduce_sum(box_sum(x, 5) * weights)
    np.testing.assert_allclose(
        tape.gradient(value, x).numpy(), _brute_force(weights, (5, 5, 5)), atol=3e-5
    )


@pytest.mark.parametrize("window", [0, 4, -3, 2.0, True, (3, 3), "3"])
def test_bad_window_raises(window):
    with pytest.raises(ValueError, match="Received: window="):
        box_sum(tf.zeros(SHAPES[3]), window)


def test_bad_rank_dtype_and_method_raise():
    with pytest.raises(ValueError, match="Received: x.shape="):
        box_sum(tf.zeros((2, 8, 3)), 3)
    with pytest.raises(TypeError, match="Received: x.dtype="):
        box_sum(tf.zeros((1, 8, 8, 1), tf.int32), 3)
    with pytest.raises(ValueError, match="Received: method='fft'"):
        box_sum(tf.zeros((1, 8, 8, 1)), 3, method="fft")


def test_auto_method_detects_xla_compilation():
    # "auto" relies on this to pick the shift-and-add sums under XLA (XLA's CPU convolutions
    # are slow); the test fails if TensorFlow drops the internal hook it uses.
    from vxmtf.ops._xla import in_xla_context

    seen = []

    def probe(t):
        seen.append(in_xla_context())
        return t

    assert not in_xla_context()
    tf.function(probe)(tf.zeros(()))
    tf.function(probe, jit_compile=True)(tf.zeros(()))
    assert seen == [False, True]
