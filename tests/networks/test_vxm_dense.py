"""`vxmtf.networks.VxmDense`: outputs, saving, mixed precision, errors, and that it learns."""

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import numpy_unet
from scipy import ndimage

from vxmtf.losses import NCC, Grad
from vxmtf.networks import Unet, VxmDense

SMALL = {"enc_features": (4, 8, 8, 8), "dec_features": (8, 8, 8, 8, 8, 4, 4)}


@pytest.mark.parametrize("inshape", [(32, 16), (16, 16, 32)])
@pytest.mark.parametrize("int_steps", [0, 5])
@pytest.mark.parametrize("bidir", [False, True])
def test_output_names_and_shapes(inshape, int_steps, bidir):
    ndim = len(inshape)
    model = VxmDense(inshape, int_steps=int_steps, bidir=bidir, **SMALL)
    assert [t.name for t in model.inputs] == ["moving", "fixed"]
    x = np.zeros((2, *inshape, 1), np.float32)
    out = model({"moving": x, "fixed": x})
    expected = {"moved", "displacement", "preint_flow"}
    if bidir:
        expected |= {"inverse_moved", "inverse_displacement"}
    assert set(out) == expected
    assert out["moved"].shape == (2, *inshape, 1)
    assert out["displacement"].shape == (2, *inshape, ndim)
    assert out["displacement"].dtype == tf.float32
    coarse = tuple(s // 2 for s in inshape) if int_steps else inshape
    assert out["preint_flow"].shape == (2, *coarse, ndim)
    if bidir:
        assert out["inverse_moved"].shape == (2, *inshape, 1)
    # A list in (moving, fixed) order is accepted too.
    listed = model([x, x])
    np.testing.assert_array_equal(listed["displacement"].numpy(), out["displacement"].numpy())


def test_default_architecture_parameter_count():
    """The paper's network: 327,331 parameters in 3D (as the official code reports)."""
    model = VxmDense((32, 32, 32), int_steps=0)
    assert model.count_params() == 327_331


def test_moved_is_moving_warped_by_displacement():
    rng = np.random.default_rng(0)
    model = VxmDense((16, 16, 16), int_steps=3, **SMALL)
    # Make the head produce a sizeable field so that the check is not trivial.
    kernel, bias = model.get_layer("flow").get_weights()
    model.get_layer("flow").set_weights([rng.normal(0, 0.05, kernel.shape), bias + 0.7])
    moving = rng.uniform(size=(1, 16, 16, 16, 1)).astype(np.float32)
    fixed = rng.uniform(size=(1, 16, 16, 16, 1)).astype(np.float32)
    out = model([moving, fixed])
    disp = out["displacement"].numpy()[0]
    assert np.abs(disp).max() > 0.5
    grid = np.stack(np.meshgrid(*[np.arange(16)] * 3, indexing="ij"), axis=0)
    expected = ndimage.map_coordinates(
        moving[0, ..., 0], grid + np.moveaxis(disp, -1, 0), order=1, mode="nearest"
    )
    np.testing.assert_allclose(out["moved"].numpy()[0, ..., 0], expected, atol=1e-5)


def test_keras_file_round_trip(tmp_path):
    model = VxmDense((16, 16, 16), int_steps=4, bidir=True, **SMALL)
    rng = np.random.default_rng(1)
    model.get_layer("flow").set_weights(
        [rng.normal(0, 0.01, w.shape) for w in model.get_layer("flow").get_weights()]
    )
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects
    assert isinstance(loaded, VxmDense)
    assert loaded.get_config() == model.get_config()
    x = [rng.uniform(size=(2, 16, 16, 16, 1)).astype(np.float32) for _ in range(2)]
    a, b = model(x), loaded(x)
    for key in a:
        np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())


def test_mixed_float16_builds_and_runs():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = VxmDense((16, 16, 16), int_steps=3, **SMALL)
        x = np.random.default_rng(2).uniform(size=(1, 16, 16, 16, 1)).astype(np.float32)
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss={"moved": NCC(), "preint_flow": Grad("l2", loss_mult=2)},
        )
        target = {"moved": x, "preint_flow": np.zeros((1, 1), np.float32)}
        history = model.fit([x, x], target, epochs=1, verbose=0)
        out = model([x, x])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer("unet").compute_dtype == "float16"
    assert out["moved"].dtype == tf.float16
    assert out["displacement"].dtype == tf.float32
    assert np.isfinite(history.history["loss"][0])


def test_mixed_bfloat16_weight_gradients_on_grids_smaller_than_the_kernel():
    # With the default features, the deepest grid of a 32^3 input is 2^3 voxels. There oneDNN's
    # bfloat16 Conv3D weight gradient is garbage (relative error >= 1, or inf, with TF 2.21 on
    # CPU), so those convolutions must run in float32. Oracle: the float32 model's gradients.
    rng = np.random.default_rng(4)
    x = rng.uniform(size=(1, 32, 32, 32, 1)).astype(np.float32)
    y = np.roll(x, 2, axis=1)

    def kernel_gradients(policy, weights=None):
        keras.mixed_precision.set_global_policy(policy)
        try:
            model = VxmDense((32, 32, 32), int_steps=0)
            if weights is not None:
                model.set_weights(weights)
            unet = model.get_layer("unet")
            kernels = {name: unet.get_layer(name).kernel for name in ("dec_conv_0", "enc_conv_1")}
            with tf.GradientTape() as tape:
                moved = model([x, y])["moved"]
                loss = tf.reduce_mean(tf.square(tf.cast(moved, tf.float32) - y))
            grads = tape.gradient(loss, list(kernels.values()))
        finally:
            keras.mixed_precision.set_global_policy("float32")
        dtypes = {name: unet.get_layer(name).compute_dtype for name in kernels}
        return model.get_weights(), dict(zip(kernels, grads, strict=True)), dtypes

    weights, expected, _ = kernel_gradients("float32")
    _, mixed, dtypes = kernel_gradients("mixed_bfloat16", weights)
    assert dtypes == {"dec_conv_0": "float32", "enc_conv_1": "bfloat16"}  # 2^3 vs 16^3 voxels
    for name in expected:
        reference = np.asarray(expected[name])
        error = np.abs(np.asarray(mixed[name], np.float32) - reference).max()
        assert error < 0.1 * np.abs(reference).max(), name


def test_unknown_spatial_sizes_run():
    model = VxmDense((None, None, None), int_steps=2, **SMALL)
    x = np.zeros((1, 16, 32, 16, 1), np.float32)
    assert model([x, x])["displacement"].shape == (1, 16, 32, 16, 3)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"inshape": (20, 16, 16)}, "multiple of 2 \\*\\* 4 = 16"),
        ({"inshape": (16, 16, 16, 16)}, "2 \\(2D\\) or 3 \\(3D\\)"),
        ({"inshape": (16,)}, "Received: inshape=\\(16,\\)"),
        ({"inshape": (32, 32), "enc_features": (8, 8, 8, 8, 8, 8)}, "2 \\*\\* 6 = 64"),
        ({"inshape": (16, 16), "int_steps": -1}, "int_steps=-1"),
        ({"inshape": (16, 16), "int_resolution": 0}, "int_resolution=0"),
        ({"inshape": (16, 16), "dec_features": (8, 8)}, "at least one decoder feature"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VxmDense(**kwargs)


def test_unet_serializes():
    unet = Unet((16, 16), 2, (4, 8), (8, 8, 4))
    clone = Unet.from_config(unet.get_config())
    assert clone.output.shape == (None, 16, 16, 4)


# --- Recomputation (`recompute=True`): the same training with less memory ------------------


@pytest.mark.parametrize("int_steps", [0, 3])
def test_recompute_trains_like_the_plain_model(int_steps):
    # One Keras training step (graph mode, as in `fit`) from the same weights: the same loss
    # and the same updated weights, up to float rounding.
    rng = np.random.default_rng(5)
    x = [rng.uniform(size=(2, 16, 16, 16, 1)).astype(np.float32) for _ in range(2)]
    y = {"moved": x[1], "preint_flow": np.zeros((2, 1), np.float32)}
    results = []
    for recompute in (False, True):
        keras.utils.set_random_seed(0)
        model = VxmDense((16, 16, 16), int_steps=int_steps, recompute=recompute, **SMALL)
        # A sizeable field, so that the warp and the smoothness term have gradients.
        kernel, bias = model.get_layer("flow").get_weights()
        model.get_layer("flow").set_weights([rng.normal(0, 0.05, kernel.shape), bias])
        if results:
            model.set_weights(results[0][2])
        start = model.get_weights()
        model.compile(
            optimizer=keras.optimizers.SGD(0.5),
            loss={"moved": NCC(), "preint_flow": Grad("l2")},
        )
        loss = model.train_on_batch(x, y)
        results.append((loss, model.get_weights(), start))
    (loss0, after0, start), (loss1, after1, _) = results
    np.testing.assert_allclose(loss1, loss0, rtol=1e-5)
    for w0, w1, w in zip(after0, after1, start, strict=True):
        step0 = w0 - w
        assert np.abs(step0).max() > 0  # every weight moved: it had a gradient
        np.testing.assert_allclose(w1 - w, step0, rtol=0, atol=1e-3 * np.abs(step0).max())


def test_recompute_keras_file_round_trip_and_weights_load_into_the_plain_model(tmp_path):
    model = VxmDense((16, 16, 16), int_steps=2, recompute=True, **SMALL)
    rng = np.random.default_rng(6)
    model.set_weights([rng.normal(0, 0.1, w.shape) for w in model.get_weights()])
    assert model.get_config()["recompute"] is True
    model.save(tmp_path / "model.keras")
    model.save_weights(tmp_path / "model.weights.h5")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert loaded.get_config() == model.get_config()
    assert loaded.get_layer("unet").recompute is True
    plain = VxmDense((16, 16, 16), int_steps=2, **SMALL)
    plain.load_weights(tmp_path / "model.weights.h5")  # the same layout: no recompute needed
    x = [rng.uniform(size=(1, 16, 16, 16, 1)).astype(np.float32) for _ in range(2)]
    expected = model.predict_on_batch(x)
    for other in (loaded, plain):
        got = other.predict_on_batch(x)
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key])
    assert VxmDense((16, 16, 16), **SMALL).get_config()["recompute"] is False


def test_recompute_under_mixed_bfloat16_keeps_the_tiny_grid_guard():
    # As test_mixed_bfloat16_weight_gradients_on_grids_smaller_than_the_kernel, through the
    # recomputing path (training=True): the 2^3 convolutions still run in float32.
    rng = np.random.default_rng(4)
    x = rng.uniform(size=(1, 32, 32, 32, 1)).astype(np.float32)
    y = np.roll(x, 2, axis=1)

    def gradients(policy, recompute, weights=None):
        keras.mixed_precision.set_global_policy(policy)
        try:
            model = VxmDense((32, 32, 32), int_steps=0, recompute=recompute)
            if weights is not None:
                model.set_weights(weights)
            with tf.GradientTape() as tape:
                moved = model([x, y], training=True)["moved"]
                loss = tf.reduce_mean(tf.square(tf.cast(moved, tf.float32) - y))
            grads = tape.gradient(loss, model.trainable_weights)
        finally:
            keras.mixed_precision.set_global_policy("float32")
        names = [w.path for w in model.trainable_weights]
        return model.get_weights(), dict(zip(names, grads, strict=True))

    weights, expected = gradients("float32", recompute=False)
    _, mixed = gradients("mixed_bfloat16", recompute=True, weights=weights)
    for name in ("dec_conv_0/kernel", "dec_conv_1/kernel", "enc_conv_1/kernel"):
        reference = np.asarray(expected[name])
        error = np.abs(np.asarray(mixed[name], np.float32) - reference).max()
        assert error < 0.1 * np.abs(reference).max(), name


def test_recompute_must_be_a_bool():
    with pytest.raises(TypeError, match="Received: recompute='yes'"):
        VxmDense((16, 16), recompute="yes", **SMALL)


# --- The model learns: a short optimisation on a synthetic pair -------------------------------


def blob_pair(shape, seed):
    """A smooth blob image and a smoothly deformed copy; returns moving, fixed and the masks."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij"))
    centre = np.array(shape, float)[:, None, None] / 2
    radius = np.sqrt(((grid - centre.reshape(-1, *[1] * len(shape))) ** 2).sum(0))
    fixed_mask = radius < shape[0] * 0.28
    fixed = ndimage.gaussian_filter(fixed_mask.astype(np.float64), 1.0)
    # A smooth deformation of a few voxels: moving(x) = fixed(x + u(x)).
    u = np.stack([ndimage.gaussian_filter(rng.normal(size=shape), 5.0) for _ in shape])
    u *= 3.0 / np.abs(u).max()
    moving = ndimage.map_coordinates(fixed, grid + u, order=1, mode="nearest")
    moving_mask = ndimage.map_coordinates(fixed_mask.astype(float), grid + u, order=0) > 0.5
    return moving, fixed, moving_mask, fixed_mask


def test_short_optimisation_learns_the_deformation():
    shape = (48, 48)
    moving, fixed, moving_mask, fixed_mask = blob_pair(shape, seed=3)
    keras.utils.set_random_seed(0)
    model = VxmDense(shape, int_steps=0, **SMALL)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss={"moved": "mse", "preint_flow": Grad("l2")},
        loss_weights={"moved": 1.0, "preint_flow": 0.01},
    )
    x = [moving[None, ..., None].astype(np.float32), fixed[None, ..., None].astype(np.float32)]
    y = {"moved": x[1], "preint_flow": np.zeros((1, 1), np.float32)}

    def dice_after():
        disp = model.predict(x, verbose=0)["displacement"][0]
        grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
        warped = ndimage.map_coordinates(
            moving_mask.astype(float), grid + np.moveaxis(disp, -1, 0), order=0
        )
        warped = warped > 0.5
        return 2 * (warped & fixed_mask).sum() / (warped.sum() + fixed_mask.sum())

    before_loss = model.evaluate(x, y, verbose=0, return_dict=True)["moved_loss"]
    before_dice = dice_after()
    model.fit(x, y, epochs=150, verbose=0)
    after_loss = model.evaluate(x, y, verbose=0, return_dict=True)["moved_loss"]
    after_dice = dice_after()
    assert after_loss < 0.5 * before_loss
    assert after_dice > before_dice + 0.03
    assert after_dice > 0.9


@pytest.mark.parametrize("int_steps,int_resolution", [(0, 2), (3, 1), (3, 2)])
def test_stages_compose_to_the_outputs(int_steps, int_resolution):
    model = VxmDense((16, 16), int_steps=int_steps, int_resolution=int_resolution, **SMALL)
    rng = np.random.default_rng(7)
    model.flow_head.set_weights(
        [rng.normal(0, 0.05, w.shape) for w in model.flow_head.get_weights()]
    )
    moving, fixed = (rng.uniform(size=(1, 16, 16, 1)).astype(np.float32) for _ in range(2))
    out = model([moving, fixed])
    flow = model.flow_head(model.unet(model.concat([moving, fixed])))
    velocity = model.flow_to_velocity(flow)
    np.testing.assert_allclose(velocity.numpy(), out["preint_flow"].numpy(), atol=1e-6)
    displacement = model.flow_to_displacement(flow)
    np.testing.assert_allclose(displacement.numpy(), out["displacement"].numpy(), atol=1e-6)
    if int_steps == 0:
        assert model.flow_to_displacement(flow) is flow
    moved = model.transformer(moving, displacement)
    np.testing.assert_allclose(moved.numpy(), out["moved"].numpy(), atol=1e-6)


def test_bidir_must_be_a_bool():
    with pytest.raises(TypeError, match="Received: bidir=1"):
        VxmDense((16, 16), bidir=1, **SMALL)


# --- The decoder form (`transposed_decoder`) and the shipped model ---------------------------

SHIPPED = Path(__file__).resolve().parents[2] / "pretrained" / "vxm_lpba40.keras"


def reference_flow(model, moving, fixed):
    """The flow head's output of `model` in float64 NumPy, with the U-Net in the VoxelMorph
    form (`tests.helpers.numpy_unet`), from the layers' weights alone."""
    x = np.concatenate([moving, fixed], axis=-1).astype(np.float64)
    features = numpy_unet(model.get_layer("unet"), x)
    kernel, bias = (np.asarray(w, np.float64) for w in model.get_layer("flow").get_weights())
    return tf.nn.convolution(features, kernel, padding="SAME").numpy() + bias


def test_shipped_model_gives_the_displacement_of_the_explicit_decoder():
    # pretrained/vxm_lpba40.keras (fine-tuned from a release saved before `transposed_decoder`
    # existed) loads unchanged
    # and runs the transposed decoder; at 32^3 its flow and displacement match an independent
    # float64 NumPy reference of the explicit form within float32 rounding.
    from vxmtf.networks.loading import inference_clone, load_vxm_dense

    if not SHIPPED.is_file():
        pytest.skip(f"shipped model not found: {SHIPPED}")
    shipped = load_vxm_dense(SHIPPED)
    assert shipped.transposed_decoder and shipped.unet.transposed_decoder
    model = inference_clone(shipped, (32, 32, 32))
    explicit = VxmDense.from_config(model.get_config() | {"transposed_decoder": False})
    explicit.set_weights(model.get_weights())
    rng = np.random.default_rng(13)
    moving, fixed = (rng.uniform(size=(1, 32, 32, 32, 1)).astype(np.float32) for _ in "mf")

    flow = reference_flow(model, moving, fixed)
    expected = model.flow_to_displacement(tf.constant(flow, tf.float32)).numpy()
    assert np.abs(expected).max() > 0.5  # a trained field, not a ~1e-5 one
    for net in (model, explicit):
        run = tf.function(lambda m, f, net=net: net([m, f])["displacement"])
        graph = run.get_concrete_function(moving, fixed).graph
        ops = {op.type for op in graph.get_operations()}
        assert ("Conv3DBackpropInputV2" in ops) is net.transposed_decoder
        displacement = net([moving, fixed])["displacement"].numpy()
        assert np.abs(displacement - expected).max() < 1e-4  # voxels
    np.testing.assert_allclose(
        model([moving, fixed])["displacement"].numpy(),
        explicit([moving, fixed])["displacement"].numpy(),
        rtol=0,
        atol=1e-4,
    )


def test_transposed_decoder_flag_reaches_the_unet_and_round_trips(tmp_path):
    model = VxmDense((16, 16, 16), int_steps=2, transposed_decoder=False, **SMALL)
    assert model.get_config()["transposed_decoder"] is False
    assert model.get_layer("unet").transposed_decoder is False
    model.save(tmp_path / "explicit.keras")
    loaded = keras.models.load_model(tmp_path / "explicit.keras")
    assert loaded.transposed_decoder is False and loaded.unet.transposed_decoder is False
    # The weights of one form load into the other and give the same field up to rounding.
    default = VxmDense((16, 16, 16), int_steps=2, **SMALL)
    assert default.transposed_decoder is True and default.unet.transposed_decoder is True
    model.save_weights(tmp_path / "model.weights.h5")
    default.load_weights(tmp_path / "model.weights.h5")
    rng = np.random.default_rng(14)
    pair = [rng.uniform(size=(1, 16, 16, 16, 1)).astype(np.float32) for _ in "mf"]
    a = model(pair)["displacement"].numpy()
    b = default(pair)["displacement"].numpy()
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * max(np.abs(a).max(), 1e-6))


def test_transposed_decoder_must_be_a_bool():
    with pytest.raises(TypeError, match="Received: transposed_decoder='no'"):
        VxmDense((16, 16), transposed_decoder="no", **SMALL)
