"""Tests for vxmtf.losses.ncc against an explicit-loop NumPy local NCC."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from vxmtf.losses import NCC, local_ncc, mean_local_ncc

EPS = 1e-5


def _loop_ncc_map(fixed, moving, windows, eps=EPS):
    """Squared local NCC, one window at a time, in float64.

    fixed, moving: (batch, *spatial, channels). The volume is zero-padded by window // 2, so a
    border window holds padding zeros and every window has prod(windows) voxels.
    """
    fixed = np.asarray(fixed, np.float64)
    moving = np.asarray(moving, np.float64)
    spatial = fixed.shape[1:-1]
    pad = [(0, 0)] + [(w // 2, w // 2) for w in windows] + [(0, 0)]
    fixed_pad, moving_pad = np.pad(fixed, pad), np.pad(moving, pad)
    count = float(np.prod(windows))
    out = np.zeros(fixed.shape)
    for b, c in itertools.product(range(fixed.shape[0]), range(fixed.shape[-1])):
        for p in itertools.product(*(range(s) for s in spatial)):
            box = tuple(slice(q, q + w) for q, w in zip(p, windows, strict=True))
            i = fixed_pad[(b, *box, c)].ravel()
            j = moving_pad[(b, *box, c)].ravel()
            assert i.size == count
            cross = np.dot(i, j) - i.sum() * j.sum() / count
            var_i = max(np.dot(i, i) - i.sum() ** 2 / count, 0.0)
            var_j = max(np.dot(j, j) - j.sum() ** 2 / count, 0.0)
            out[(b, *p, c)] = cross**2 / (var_i * var_j + eps)
    return out


def _pair(shape, seed=0):
    rng = np.random.default_rng(seed)
    fixed = rng.uniform(size=shape)
    moving = 0.6 * fixed + 0.4 * rng.uniform(size=shape)  # correlated, but not perfectly
    return fixed.astype(np.float32), moving.astype(np.float32)


CASES = [
    ((2, 9, 11, 1), 3),
    ((2, 10, 7, 2), 5),
    ((1, 12, 9, 1), (3, 5)),
    ((2, 7, 8, 9, 1), 3),
    ((1, 8, 9, 7, 2), 5),
    ((1, 9, 8, 10, 1), (5, 3, 1)),
]


@pytest.mark.parametrize("shape, window", CASES)
def test_matches_loop_reference(shape, window):
    fixed, moving = _pair(shape)
    windows = window if isinstance(window, tuple) else (window,) * (len(shape) - 2)
    expected = _loop_ncc_map(fixed, moving, windows)

    cc = local_ncc(fixed, moving, window=window)
    assert cc.dtype == tf.float32 and cc.shape == shape
    np.testing.assert_allclose(cc.numpy(), expected, rtol=1e-4, atol=1e-6)

    per_sample = expected.reshape(shape[0], -1).mean(axis=1)
    np.testing.assert_allclose(mean_local_ncc(fixed, moving, window).numpy(), per_sample, 1e-5)
    loss = NCC(window=window, reduction=None)(fixed, moving)
    np.testing.assert_allclose(loss.numpy(), -per_sample, rtol=1e-5)
    np.testing.assert_allclose(
        NCC(window=window)(fixed, moving).numpy(), -per_sample.mean(), rtol=1e-5
    )


def test_float64_matches_loop_reference_tightly():
    fixed, moving = _pair((1, 8, 9, 7, 1), seed=3)
    cc = local_ncc(fixed.astype(np.float64), moving.astype(np.float64), window=3)
    assert cc.dtype == tf.float64
    np.testing.assert_allclose(cc.numpy(), _loop_ncc_map(fixed, moving, (3, 3, 3)), rtol=1e-10)


@pytest.mark.parametrize("ndim", [2, 3])
def test_identical_images_are_the_best_value(ndim):
    shape = (1, 12, 11, 1) if ndim == 2 else (1, 9, 10, 8, 1)
    rng = np.random.default_rng(4)
    fixed = rng.uniform(size=shape).astype(np.float32)
    loss = NCC(window=5)
    best = float(loss(fixed, fixed))
    # Every window of a random image is non-constant, so cc = var^2 / (var^2 + eps) ~ 1.
    assert best == pytest.approx(-1.0, abs=1e-3)
    for _ in range(20):
        other = 0.5 * fixed + rng.uniform(size=shape).astype(np.float32)
        assert best <= float(loss(fixed, other))


@pytest.mark.parametrize("scale, offset", [(3.0, 0.0), (-0.5, 0.0), (2.0, 1.5), (-1.5, 0.7)])
def test_invariant_to_affine_intensity_change(scale, offset):
    fixed, moving = _pair((2, 13, 12, 11, 1), seed=5)
    changed = scale * moving + offset
    window, half = 5, 2
    reference = local_ncc(fixed, moving, window).numpy()
    cc = local_ncc(fixed, changed, window).numpy()
    # Away from the borders (windows without padding zeros) any affine change leaves cc alone.
    interior = (slice(None), *(slice(half, -half),) * 3, slice(None))
    np.testing.assert_allclose(cc[interior], reference[interior], rtol=2e-3)
    if offset == 0.0:
        # A pure scaling also leaves border windows, hence the whole loss, unchanged.
        np.testing.assert_allclose(
            NCC(window)(fixed, changed).numpy(), NCC(window)(fixed, moving).numpy(), rtol=1e-5
        )


@pytest.mark.parametrize(
    "fixed_value, moving_value", [(0.0, 0.0), (0.7, 0.7), (0.3, None), (None, 137.1)]
)
@pytest.mark.parametrize("ndim", [2, 3])
def test_finite_on_constant_and_zero_images(ndim, fixed_value, moving_value):
    shape = (2, 9, 10, 1) if ndim == 2 else (2, 8, 9, 7, 1)
    rng = np.random.default_rng(6)

    def image(value):
        if value is None:
            return tf.constant(rng.uniform(size=shape), tf.float32)
        return tf.fill(shape, tf.constant(value, tf.float32))

    fixed, moving = image(fixed_value), image(moving_value)
    with tf.GradientTape() as tape:
        tape.watch([fixed, moving])
        value = NCC(window=5)(fixed, moving)
    grads = tape.gradient(value, [fixed, moving])
    assert np.isfinite(value.numpy())
    for grad in grads:
        assert np.all(np.isfinite(grad.numpy()))
    cc = local_ncc(fixed, moving, 5).numpy()
    assert np.all(np.isfinite(cc)) and np.all(cc >= 0) and np.all(cc <= 1 + 1e-5)
    if fixed_value == 0.0 or (fixed_value is None) != (moving_value is None):
        # An all-zero image, or a constant against a random one: no correlation in the
        # interior windows (for all-zero, nowhere).
        interior = (slice(None), *(slice(2, -2),) * ndim, slice(None))
        np.testing.assert_allclose(cc[interior], 0.0, atol=1e-4)
    if fixed_value == 0.0:
        assert float(value) == 0.0


def test_half_precision_inputs_give_float32_close_to_float32():
    fixed, moving = _pair((2, 8, 9, 10, 1), seed=7)
    fixed16, moving16 = tf.cast(fixed, tf.float16), tf.cast(moving, tf.float16)
    out16 = mean_local_ncc(fixed16, moving16, 5)
    assert out16.dtype == tf.float32
    out32 = mean_local_ncc(tf.cast(fixed16, tf.float32), tf.cast(moving16, tf.float32), 5)
    np.testing.assert_allclose(out16.numpy(), out32.numpy(), rtol=1e-6)
    # And close to the unrounded float32 images (float16 rounding only).
    np.testing.assert_allclose(out16.numpy(), mean_local_ncc(fixed, moving, 5), rtol=2e-3)
    loss = NCC(5, reduction=None)(fixed16, moving16)
    assert loss.dtype == tf.float32 and loss.shape == (2,)


@pytest.mark.parametrize("ndim", [2, 3])
def test_gradient_matches_finite_differences(ndim):
    shape = (1, 6, 7, 1) if ndim == 2 else (1, 5, 4, 6, 1)
    fixed, moving = _pair(shape, seed=8)
    fixed = tf.constant(fixed, tf.float64)

    def loss(moving):
        return mean_local_ncc(fixed, moving, window=3)

    theoretical, numerical = tf.test.compute_gradient(
        loss, [tf.constant(moving, tf.float64)], delta=1e-5
    )
    np.testing.assert_allclose(theoretical[0], numerical[0], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_unknown_shapes_in_tf_function(jit_compile):
    loss = NCC(window=3, reduction=None)
    spec = tf.TensorSpec([None, None, None, None, 1], tf.float32)
    fn = tf.function(loss, input_signature=[spec, spec], jit_compile=jit_compile)
    for seed, shape in enumerate([(2, 7, 8, 9, 1), (1, 9, 6, 8, 1)]):
        fixed, moving = _pair(shape, seed)
        expected = -_loop_ncc_map(fixed, moving, (3, 3, 3)).reshape(shape[0], -1).mean(1)
        np.testing.assert_allclose(fn(fixed, moving).numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("window", [0, 4, -3, 2.5, True, "9", (3, 4), (3, 0, 3)])
def test_bad_window_raises(window):
    with pytest.raises(ValueError, match="Received: window="):
        NCC(window=window)


@pytest.mark.parametrize("eps", [0, -1e-5, "1e-5", None])
def test_bad_eps_raises(eps):
    with pytest.raises(ValueError, match="Received: eps="):
        NCC(eps=eps)


def test_bad_shapes_raise():
    with pytest.raises(
        ValueError, match=r"y_true.shape=\(1, 8, 8, 1\), y_pred.shape=\(1, 8, 9, 1\)"
    ):
        NCC(3)(tf.zeros((1, 8, 8, 1)), tf.zeros((1, 8, 9, 1)))
    with pytest.raises(ValueError, match="Received: window=\\(3, 3\\)"):
        NCC((3, 3))(tf.zeros((1, 8, 8, 8, 1)), tf.zeros((1, 8, 8, 8, 1)))
    with pytest.raises(ValueError, match="Received: y_pred.shape="):
        NCC(3)(tf.zeros((1, 8, 1)), tf.zeros((1, 8, 1)))


def test_serialization_round_trip():
    loss = NCC(window=(5, 3, 3), eps=1e-4, name="similarity", reduction="sum")
    config = loss.get_config()
    assert config["window"] == (5, 3, 3) and config["eps"] == 1e-4
    assert config["name"] == "similarity" and config["reduction"] == "sum"
    serialized = keras.saving.serialize_keras_object(loss)
    assert serialized["registered_name"] == "vxmtf>NCC"
    fixed, moving = _pair((2, 8, 7, 9, 1), seed=9)
    for restored in (
        keras.saving.deserialize_keras_object(serialized),
        keras.losses.deserialize(serialized),
        keras.losses.get(serialized),
        NCC.from_config(config),
    ):
        assert isinstance(restored, NCC)
        assert restored.get_config() == config
        np.testing.assert_allclose(restored(fixed, moving).numpy(), loss(fixed, moving).numpy())
