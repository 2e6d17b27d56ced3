"""Tests for vxmtf.losses.grad: analytic values on constant and linear fields, NumPy diffs."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from vxmtf.losses import NCC, Grad, grad_penalty


def _linear_field(spatial, matrix, offset):
    """u(x) = A x + b at every voxel x (index vector, "ij" order): (1, *spatial, ndim)."""
    grid = np.stack(np.meshgrid(*(np.arange(s) for s in spatial), indexing="ij"), axis=-1)
    return (grid @ np.asarray(matrix).T + np.asarray(offset))[None].astype(np.float32)


@pytest.mark.parametrize("penalty", ["l1", "l2"])
@pytest.mark.parametrize("spatial", [(6, 7), (5, 6, 4)])
def test_constant_field_is_zero(spatial, penalty):
    field = np.full((2, *spatial, len(spatial)), 3.5, np.float32)
    value = Grad(penalty, reduction=None)(np.zeros((2, 1)), field)
    assert value.shape == (2,) and value.dtype == tf.float32
    np.testing.assert_array_equal(value.numpy(), 0.0)


@pytest.mark.parametrize("penalty", ["l1", "l2"])
@pytest.mark.parametrize("spatial", [(6, 7), (5, 6, 4)])
def test_linear_field_closed_form(spatial, penalty):
    ndim = len(spatial)
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(ndim, ndim))
    field = _linear_field(spatial, matrix, rng.normal(size=ndim))
    # Forward differences along axis i are the constant column A[:, i].
    size = np.abs(matrix) if penalty == "l1" else matrix**2
    expected = np.mean([np.mean(size[:, i]) for i in range(ndim)])
    value = grad_penalty(field, penalty)
    np.testing.assert_allclose(value.numpy(), [expected], rtol=1e-5)
    scaled = Grad(penalty, loss_mult=2, reduction=None)(tf.zeros(()), field)
    np.testing.assert_allclose(scaled.numpy(), [2 * expected], rtol=1e-5)


@pytest.mark.parametrize("penalty", ["l1", "l2"])
@pytest.mark.parametrize("shape", [(3, 6, 7, 2), (2, 5, 6, 4, 3)])
def test_random_field_matches_numpy_diff(shape, penalty):
    field = np.random.default_rng(1).normal(size=shape)
    size = np.abs if penalty == "l1" else np.square
    per_axis = [
        size(np.diff(field, axis=axis)).reshape(shape[0], -1).mean(axis=1)
        for axis in range(1, len(shape) - 1)
    ]
    expected = np.mean(per_axis, axis=0)
    loss = Grad(penalty, loss_mult=4.0, reduction=None)
    np.testing.assert_allclose(loss(tf.zeros(()), field).numpy(), 4.0 * expected, rtol=1e-5)
    np.testing.assert_allclose(grad_penalty(field, penalty).numpy(), expected, rtol=1e-12)
    # Half-precision fields are reduced in float32.
    half = grad_penalty(tf.cast(field, tf.float16), penalty)
    assert half.dtype == tf.float32
    np.testing.assert_allclose(half.numpy(), expected, rtol=2e-3)


def _numpy_gradient(field, penalty):
    """d grad_penalty / d field by hand: each forward difference d = u[x+1] - u[x] adds
    dpen(d) / (n_i * ndim) at x + 1 and subtracts it at x (n_i: differences per sample)."""
    ndim = field.ndim - 2
    grad = np.zeros_like(field)
    for axis in range(1, ndim + 1):
        diff = np.diff(field, axis=axis)
        slope = (np.sign(diff) if penalty == "l1" else 2 * diff) / (diff[0].size * ndim)
        ahead = [slice(None)] * field.ndim
        behind = [slice(None)] * field.ndim
        ahead[axis], behind[axis] = slice(1, None), slice(None, -1)
        grad[tuple(ahead)] += slope
        grad[tuple(behind)] -= slope
    return grad


@pytest.mark.parametrize("penalty", ["l1", "l2"])
@pytest.mark.parametrize("shape", [(2, 6, 7, 2), (2, 5, 6, 4, 3)])
def test_gradient_matches_numpy_in_float64(shape, penalty):
    field = tf.constant(np.random.default_rng(4).normal(size=shape))
    with tf.GradientTape() as tape:
        tape.watch(field)
        total = tf.reduce_sum(grad_penalty(field, penalty))
    np.testing.assert_allclose(
        tape.gradient(total, field).numpy(), _numpy_gradient(field.numpy(), penalty), rtol=1e-12
    )


@pytest.mark.parametrize("penalty", ["l1", "l2"])
def test_values_and_gradient_unchanged_from_indexing_formulation(penalty):
    # grad_penalty slices with tf.slice for speed (see there); it must give, bit for bit, what
    # the plain `field[:, 1:] - field[:, :-1]` formulation gives, value and gradient.
    def indexed(field):
        per_axis = []
        for axis in range(1, 4):
            ahead, behind = [slice(None)] * 5, [slice(None)] * 5
            ahead[axis], behind[axis] = slice(1, None), slice(None, -1)
            diff = field[tuple(ahead)] - field[tuple(behind)]
            size = tf.abs(diff) if penalty == "l1" else tf.square(diff)
            per_axis.append(tf.reduce_mean(size, axis=[1, 2, 3, 4]))
        return tf.add_n(per_axis) / 3

    field = tf.Variable(np.random.default_rng(5).normal(size=(2, 9, 10, 11, 3)), dtype=tf.float32)
    results = []
    for fn in (lambda f: grad_penalty(f, penalty), indexed):
        with tf.GradientTape() as tape:
            value = fn(field)
            total = tf.reduce_sum(value * [1.0, 2.0])
        results.append((value.numpy(), tape.gradient(total, field).numpy()))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_unknown_shapes_in_tf_function():
    loss = Grad("l2", reduction=None)
    spec = tf.TensorSpec([None, None, None, None, 3], tf.float32)
    fn = tf.function(lambda f: loss(tf.zeros(()), f), input_signature=[spec])
    matrix = np.diag([1.0, -2.0, 0.5])
    field = _linear_field((4, 5, 6), matrix, np.zeros(3))
    np.testing.assert_allclose(fn(field).numpy(), [np.mean(matrix**2, axis=0).mean()], 1e-6)


@pytest.mark.parametrize("penalty", ["l3", "L1", None, "bending"])
def test_bad_penalty_raises(penalty):
    with pytest.raises(ValueError, match=r"\('l1', 'l2'\).*Received: penalty=" + repr(penalty)):
        Grad(penalty)


@pytest.mark.parametrize("loss_mult", [0, -2, "2", True])
def test_bad_loss_mult_raises(loss_mult):
    with pytest.raises(ValueError, match="Received: loss_mult="):
        Grad(loss_mult=loss_mult)


def test_bad_field_raises():
    with pytest.raises(ValueError, match="Received: field.shape="):
        grad_penalty(tf.zeros((1, 8, 2)))
    with pytest.raises(ValueError, match="at least 2 voxels"):
        grad_penalty(tf.zeros((1, 8, 1, 2)))


def test_serialization_round_trip():
    loss = Grad("l2", loss_mult=2, name="smooth")
    config = loss.get_config()
    assert config["penalty"] == "l2" and config["loss_mult"] == 2 and config["name"] == "smooth"
    serialized = keras.saving.serialize_keras_object(loss)
    assert serialized["registered_name"] == "vxmtf>Grad"
    field = np.random.default_rng(2).normal(size=(2, 5, 6, 4, 3)).astype(np.float32)
    for restored in (keras.losses.deserialize(serialized), keras.losses.get(serialized)):
        assert isinstance(restored, Grad) and restored.get_config() == config
        np.testing.assert_allclose(
            restored(tf.zeros(()), field).numpy(), loss(tf.zeros(()), field).numpy()
        )


def _registration_like_model(spatial):
    moving = keras.Input((*spatial, 1), name="moving")
    fixed = keras.Input((*spatial, 1), name="fixed")
    pair = keras.layers.Concatenate()([moving, fixed])
    displacement = keras.layers.Conv3D(3, 3, padding="same", name="displacement")(pair)
    moved = keras.layers.Conv3D(1, 3, padding="same", name="moved")(displacement)
    return keras.Model(
        {"moving": moving, "fixed": fixed}, {"moved": moved, "displacement": displacement}
    )


def test_dict_output_model_compile_fit_and_reload(tmp_path):
    spatial = (8, 8, 8)
    keras.utils.set_random_seed(0)
    model = _registration_like_model(spatial)
    model.compile(
        optimizer="sgd",
        loss={"moved": NCC(window=3), "displacement": Grad("l2", loss_mult=2)},
        loss_weights={"moved": 1.0, "displacement": 0.1},
    )
    rng = np.random.default_rng(3)
    inputs = {
        "moving": rng.uniform(size=(2, *spatial, 1)).astype(np.float32),
        "fixed": rng.uniform(size=(2, *spatial, 1)).astype(np.float32),
    }
    targets = {"moved": inputs["fixed"], "displacement": np.zeros((2, 1), np.float32)}
    history = model.fit(inputs, targets, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])

    outputs = model.predict(inputs, verbose=0)
    moved, field = outputs["moved"], outputs["displacement"]
    expected = float(NCC(3)(inputs["fixed"], moved)) + 0.1 * 2 * float(
        tf.reduce_mean(grad_penalty(field, "l2"))
    )
    total = model.evaluate(inputs, targets, batch_size=2, verbose=0, return_dict=True)["loss"]
    np.testing.assert_allclose(total, expected, rtol=1e-4)

    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)  # no custom_objects: the losses are registered
    again = reloaded.evaluate(inputs, targets, batch_size=2, verbose=0, return_dict=True)
    np.testing.assert_allclose(again["loss"], total, rtol=1e-5)
