"""`vxmtf.layers.SpatialTransformer`: shapes, dtypes, serialization, numerics, errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from vxmtf.layers import SpatialTransformer


@pytest.fixture
def mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("shape", [(8, 6), (4, 6, 5)])
def test_output_shape_known_and_unknown(shape):
    ndim = len(shape)
    layer = SpatialTransformer()
    image = keras.Input((*shape, 3))
    field = keras.Input((*shape, ndim))
    assert layer(image, field).shape == (None, *shape, 3)
    image = keras.Input((None,) * ndim + (3,))
    field = keras.Input((None,) * ndim + (ndim,))
    assert SpatialTransformer()(image, field).shape == (None, *(None,) * ndim, 3)
    assert layer.compute_output_shape((2, *shape, 3), (2, *shape, ndim)) == (2, *shape, 3)


def test_subvoxel_shift_values():
    """A half-voxel shift of [0, 1, 2, 3] gives the midpoints (clamped at the end)."""
    image = tf.constant([0.0, 1.0, 2.0, 3.0])[None, :, None, None] * tf.ones((1, 4, 2, 1))
    field = tf.concat([tf.fill((1, 4, 2, 1), 0.5), tf.zeros((1, 4, 2, 1))], axis=-1)
    out = SpatialTransformer()(image, field).numpy()[0, :, 0, 0]
    np.testing.assert_allclose(out, [0.5, 1.5, 2.5, 3.0])
    out = SpatialTransformer(fill_value=0.0)(image, field).numpy()[0, :, 0, 0]
    np.testing.assert_allclose(out, [0.5, 1.5, 2.5, 1.5])


def test_mixed_precision_keeps_float32_coordinates(mixed_precision):
    """Under mixed_float16 the output is float16 but positions keep sub-voxel precision.

    A 0.3-voxel shift at coordinate ~3000 cannot be represented in float16 (spacing 2 there),
    so a float16 coordinate computation would return a wrong value.
    """
    size = 3072
    ramp = np.arange(size, dtype=np.float32)[None, :, None, None] / size  # values in [0, 1)
    image = np.broadcast_to(ramp, (1, size, 2, 1))
    field = np.zeros((1, size, 2, 2), np.float32)
    field[..., 0] = 0.3
    layer = SpatialTransformer()
    assert layer.compute_dtype == "float16"
    out = layer(image, field).numpy()
    assert out.dtype == np.float16
    expected = (np.arange(size - 1) + 0.3) / size
    np.testing.assert_allclose(out[0, :-1, 0, 0], expected, atol=1e-3)
    # Sub-voxel fraction survives: the result differs from the unshifted ramp by ~0.3 / size.
    shifted = out[0, 2990:3000, 0, 0].astype(np.float64)
    np.testing.assert_allclose(shifted, expected[2990:3000], atol=5e-4)


def test_nearest_keeps_integer_labels():
    labels = tf.constant(np.arange(12, dtype=np.int32).reshape(1, 3, 4, 1))
    field = tf.fill((1, 3, 4, 2), 0.4)
    out = SpatialTransformer("nearest")(labels, field)
    assert out.dtype == tf.int32
    np.testing.assert_array_equal(out.numpy(), labels.numpy())


def test_jit_compile_and_batch():
    layer = SpatialTransformer()
    rng = np.random.default_rng(0)
    image = rng.normal(size=(3, 6, 7, 5, 1)).astype(np.float32)
    field = rng.normal(size=(3, 6, 7, 5, 3)).astype(np.float32)
    eager = layer(image, field).numpy()
    compiled = tf.function(lambda i, f: layer(i, f), jit_compile=True)(image, field).numpy()
    np.testing.assert_allclose(compiled, eager, atol=1e-5)
    # The batch is warped sample by sample identically (one vectorised gather).
    single = layer(image[1:2], field[1:2]).numpy()
    np.testing.assert_allclose(eager[1:2], single, atol=1e-6)


def test_gradients_flow_to_both_inputs():
    layer = SpatialTransformer()
    image = tf.Variable(np.random.default_rng(1).normal(size=(1, 5, 5, 1)).astype(np.float32))
    field = tf.Variable(np.full((1, 5, 5, 2), 0.3, np.float32))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(image, field) ** 2)
    grad_image, grad_field = tape.gradient(loss, [image, field])
    assert np.abs(grad_image.numpy()).sum() > 0
    assert np.abs(grad_field.numpy()).sum() > 0


def test_serialization_round_trip():
    layer = SpatialTransformer("nearest", fill_value=2.0, name="warp")
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(clone, SpatialTransformer)
    assert (clone.interpolation, clone.fill_value, clone.name) == ("nearest", 2.0, "warp")


@pytest.mark.parametrize(
    "image_shape,field_shape,match",
    [
        ((1, 8, 8, 1), (1, 8, 6, 2), "same spatial shape"),
        ((1, 8, 8, 8, 1), (1, 8, 8, 8, 2), "with 3 channels"),
        ((1, 8, 1), (1, 8, 1), "rank 4"),
        ((1, 4, 4, 4, 4, 1), (1, 4, 4, 4, 4, 4), "rank 4"),
        ((1, 8, 8, 1), (1, 8, 8, 8, 3), "same rank"),
    ],
)
def test_bad_shapes(image_shape, field_shape, match):
    with pytest.raises(ValueError, match=match) as info:
        SpatialTransformer()(tf.zeros(image_shape), tf.zeros(field_shape))
    assert "Received" in str(info.value)


def test_bad_arguments():
    with pytest.raises(ValueError, match="Received: interpolation='bicubic'"):
        SpatialTransformer("bicubic")
    with pytest.raises(ValueError, match="fill_value"):
        SpatialTransformer(fill_value="zero")
