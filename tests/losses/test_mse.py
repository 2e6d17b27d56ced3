"""Tests for vxmtf.losses.mse against NumPy."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from vxmtf.losses import MSE, mean_squared_error


@pytest.mark.parametrize("shape", [(3, 6, 7, 2), (2, 5, 6, 4, 1)])
def test_matches_numpy(shape):
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.normal(size=shape), rng.normal(size=shape)
    expected = ((y_true - y_pred) ** 2).reshape(shape[0], -1).mean(axis=1)
    np.testing.assert_allclose(mean_squared_error(y_true, y_pred).numpy(), expected, rtol=1e-12)
    per_sample = MSE(reduction=None)(y_true, y_pred)
    assert per_sample.shape == (shape[0],) and per_sample.dtype == tf.float32
    np.testing.assert_allclose(per_sample.numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(MSE()(y_true, y_pred).numpy(), expected.mean(), rtol=1e-5)
    half = mean_squared_error(tf.cast(y_true, tf.float16), tf.cast(y_pred, tf.float16))
    assert half.dtype == tf.float32
    np.testing.assert_allclose(half.numpy(), expected, rtol=2e-3)


def test_unknown_shapes_in_tf_function():
    spec = tf.TensorSpec([None, None, None, None, 1], tf.float32)
    fn = tf.function(MSE(reduction=None), input_signature=[spec, spec])
    y_true = np.zeros((2, 3, 4, 5, 1), np.float32)
    y_pred = np.full((2, 3, 4, 5, 1), 2.0, np.float32)
    y_pred[1] = 1.0
    np.testing.assert_allclose(fn(y_true, y_pred).numpy(), [4.0, 1.0])


def test_mismatched_shapes_raise():
    with pytest.raises(
        ValueError, match=r"y_true.shape=\(1, 4, 4, 1\), y_pred.shape=\(1, 4, 5, 1\)"
    ):
        MSE()(tf.zeros((1, 4, 4, 1)), tf.zeros((1, 4, 5, 1)))


def test_serialization_round_trip():
    loss = MSE(name="intensity", reduction="sum")
    config = loss.get_config()
    assert config["name"] == "intensity" and config["reduction"] == "sum"
    serialized = keras.saving.serialize_keras_object(loss)
    assert serialized["registered_name"] == "vxmtf>MSE"
    rng = np.random.default_rng(1)
    y_true, y_pred = rng.normal(size=(2, 4, 4, 1)), rng.normal(size=(2, 4, 4, 1))
    for restored in (keras.losses.deserialize(serialized), keras.losses.get(serialized)):
        assert isinstance(restored, MSE) and restored.get_config() == config
        np.testing.assert_allclose(restored(y_true, y_pred).numpy(), loss(y_true, y_pred).numpy())
