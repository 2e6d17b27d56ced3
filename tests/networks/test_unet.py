"""`vxmtf.networks.unet`: the transposed decoder form (the default), the recomputing training
path, and the upsample-convolution both use."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import numpy_unet

from vxmtf.networks import Unet
from vxmtf.networks.unet import transposable, upsample_concat_conv, upsample_conv

SMALL = {"enc_features": (4, 8, 8), "dec_features": (8, 8, 8, 8, 4)}


def upsample_then_convolve(x, kernel):
    """The reference: 2x nearest upsampling (NumPy) then a "same" convolution."""
    for axis in range(1, x.ndim - 1):
        x = x.repeat(2, axis=axis)
    return tf.nn.convolution(tf.constant(x), kernel, padding="SAME").numpy()


@pytest.mark.parametrize("coarse", [(3, 5), (1, 4), (2, 3, 5), (4, 1, 2)])
def test_upsample_conv_is_upsampling_then_convolution(coarse):
    # float64 and odd sizes: equal up to rounding everywhere, borders included.
    rng = np.random.default_rng(0)
    ndim = len(coarse)
    x = rng.normal(size=(2, *coarse, 3))
    kernel = rng.normal(size=(*(3,) * ndim, 3, 4))
    got = upsample_conv(tf.constant(x), tf.constant(kernel)).numpy()
    assert got.shape == (2, *(2 * s for s in coarse), 4)
    np.testing.assert_allclose(got, upsample_then_convolve(x, kernel), rtol=0, atol=1e-12)


def test_upsample_conv_of_a_single_tap_kernel_is_nearest_upsampling():
    # Analytic case: a kernel whose only non-zero tap is the centre, identity across channels,
    # turns the convolution into the identity, so the result is the upsampled input.
    x = np.arange(2 * 3 * 2, dtype=np.float64).reshape(1, 2, 3, 2, 1)
    kernel = np.zeros((3, 3, 3, 1, 1))
    kernel[1, 1, 1] = 1.0
    got = upsample_conv(tf.constant(x), tf.constant(kernel)).numpy()
    np.testing.assert_array_equal(got, x.repeat(2, 1).repeat(2, 2).repeat(2, 3))


def test_upsample_conv_rejects_bad_shapes():
    with pytest.raises(ValueError, match="Received: x.shape=\\(1, 4, 3\\)"):
        upsample_conv(tf.zeros([1, 4, 3]), tf.zeros([3, 3, 3, 3]))
    with pytest.raises(ValueError, match="kernel.shape=\\(5, 5, 5, 3, 4\\)"):
        upsample_conv(tf.zeros([1, 4, 4, 4, 3]), tf.zeros([5, 5, 5, 3, 4]))


@pytest.mark.parametrize("ndim", [2, 3])
def test_upsample_concat_conv_is_the_layers(ndim):
    rng = np.random.default_rng(1)
    conv = (keras.layers.Conv3D if ndim == 3 else keras.layers.Conv2D)(
        5, 3, padding="same", bias_initializer="random_normal"
    )
    coarse = rng.normal(size=(2, *(3,) * ndim, 4)).astype(np.float32)
    skip = rng.normal(size=(2, *(6,) * ndim, 2)).astype(np.float32)
    upsample = keras.layers.UpSampling3D(2) if ndim == 3 else keras.layers.UpSampling2D(2)
    expected = conv(tf.concat([upsample(coarse), skip], axis=-1)).numpy()
    got = upsample_concat_conv(tf.constant(coarse), tf.constant(skip), conv).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def twin_unets(inshape, **kwargs):
    """A plain U-Net and a recomputing one with the same weights."""
    plain = Unet(inshape, 2, **SMALL, **kwargs)
    recomputing = Unet(inshape, 2, **SMALL, recompute=True, **kwargs)
    rng = np.random.default_rng(2)
    # Random biases too, so that every gradient is exercised with non-trivial values.
    recomputing.set_weights([rng.normal(0, 0.3, w.shape) for w in plain.get_weights()])
    plain.set_weights(recomputing.get_weights())
    return plain, recomputing


def loss_and_gradients(model, x, compiled):
    def run():
        with tf.GradientTape() as tape:
            y = model(x, training=True)
            loss = tf.reduce_mean(tf.square(y - 0.1)) + tf.reduce_mean(tf.sin(3 * y))
        return y, loss, tape.gradient(loss, model.trainable_weights)

    return tf.function(run)() if compiled else run()


def assert_same_outputs_and_gradients(expected, received):
    """`(y, gradients)` pairs equal up to float32 rounding, relative to each tensor's scale."""
    (y0, grads0), (y1, grads1) = expected, received
    np.testing.assert_allclose(y1.numpy(), y0.numpy(), rtol=0, atol=1e-5 * np.abs(y0).max())
    for g0, g1 in zip(grads0, grads1, strict=True):
        g0, g1 = g0.numpy(), g1.numpy()
        np.testing.assert_allclose(g1, g0, rtol=0, atol=1e-4 * np.abs(g0).max())


@pytest.mark.parametrize("inshape", [(16, 24), (8, 16, 8)])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "graph"])
def test_recompute_gives_the_same_outputs_loss_and_gradients(inshape, compiled):
    plain, recomputing = twin_unets(inshape)
    x = tf.constant(np.random.default_rng(3).uniform(size=(2, *inshape, 2)), tf.float32)
    y0, loss0, grads0 = loss_and_gradients(plain, x, compiled)
    y1, loss1, grads1 = loss_and_gradients(recomputing, x, compiled)
    # float32 rounding differs (the decoder sums kernel taps first): relative to the scale.
    scale = np.abs(y0.numpy()).max()
    np.testing.assert_allclose(y1.numpy(), y0.numpy(), rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(loss1.numpy(), loss0.numpy(), rtol=1e-5)
    assert len(grads1) == len(plain.trainable_weights) == 2 * (3 + 5)  # kernel, bias
    for weight, g0, g1 in zip(plain.trainable_weights, grads0, grads1, strict=True):
        assert g1 is not None, weight.path  # the recomputed blocks' variables get gradients
        g0, g1 = g0.numpy(), g1.numpy()
        assert np.abs(g0).max() > 0, weight.path
        np.testing.assert_allclose(g1, g0, rtol=0, atol=1e-4 * np.abs(g0).max())


def test_recompute_lowers_the_peak_tensor_memory_of_a_training_step():
    # TensorFlow's own count of the bytes its CPU allocator holds (tensors only, not the
    # process): the default network (transposed decoder) at 32^3 peaks at 26.5 MB for a
    # gradient step without recomputation and at 19-23.3 MB with it, depending on the order in
    # which the executor runs independent ops (23.3 MB with one inter-op thread, 22.5 MB seen in
    # a full suite run): a bound of 0.9x keeps the claim without that scheduling noise.
    shape = (32, 32, 32)
    x = tf.random.uniform([1, *shape, 2], seed=0)

    def peak_megabytes(recompute):
        model = Unet(shape, 2, recompute=recompute)

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.square(model(x, training=True)))
            return tape.gradient(loss, model.trainable_weights)

        step()
        peaks = []
        for _ in range(3):
            tf.config.experimental.reset_memory_stats("CPU:0")
            start = tf.config.experimental.get_memory_info("CPU:0")["current"]
            step()
            peaks.append(tf.config.experimental.get_memory_info("CPU:0")["peak"] - start)
        return np.median(peaks) / 1e6

    try:
        plain = peak_megabytes(False)
    except ValueError as error:  # "Allocator stats not available" (e.g. oneDNN off)
        pytest.skip(f"no CPU allocator statistics: {error}")
    assert peak_megabytes(True) < 0.9 * plain


def test_recompute_only_when_training():
    # Inference takes the plain graph: bit-identical outputs.
    plain, recomputing = twin_unets((16, 16))
    x = tf.constant(np.random.default_rng(4).uniform(size=(1, 16, 16, 2)), tf.float32)
    np.testing.assert_array_equal(recomputing(x).numpy(), plain(x).numpy())
    np.testing.assert_array_equal(recomputing(x, training=False).numpy(), plain(x).numpy())


def test_recompute_keeps_the_weights_layout():
    plain, recomputing = twin_unets((16, 16, 16))
    assert [(w.path, w.shape) for w in recomputing.weights] == [
        (w.path, w.shape) for w in plain.weights
    ]
    assert [layer.name for layer in recomputing.layers] == [layer.name for layer in plain.layers]


def test_config_round_trip_keeps_recompute():
    unet = Unet((16, 16), 2, (4, 8), (8, 8, 4), recompute=True)
    config = unet.get_config()
    assert config["recompute"] is True
    clone = Unet.from_config(config)
    assert clone.recompute is True and clone.output.shape == (None, 16, 16, 4)
    assert Unet((16, 16), 2, (4, 8), (8, 8, 4)).get_config()["recompute"] is False


def test_recompute_without_final_convolutions():
    # dec_features == one per level: the last block is the concatenation alone.
    plain = Unet((16, 16), 2, (4, 8), (8, 6))
    recomputing = Unet((16, 16), 2, (4, 8), (8, 6), recompute=True)
    recomputing.set_weights(plain.get_weights())
    x = tf.constant(np.random.default_rng(5).uniform(size=(1, 16, 16, 2)), tf.float32)
    y0, loss0, grads0 = loss_and_gradients(plain, x, compiled=True)
    y1, loss1, grads1 = loss_and_gradients(recomputing, x, compiled=True)
    assert y1.shape == (1, 16, 16, 6 + 4)
    assert_same_outputs_and_gradients((y0, grads0), (y1, grads1))
    np.testing.assert_allclose(loss1.numpy(), loss0.numpy(), rtol=1e-5)


@pytest.mark.parametrize("recompute", ["yes", 1, None])
def test_recompute_must_be_a_bool(recompute):
    with pytest.raises(TypeError, match=f"Received: recompute={recompute!r}"):
        Unet((16, 16), 2, (4, 8), (8, 8, 4), recompute=recompute)


@pytest.mark.parametrize(
    "enc_features,dec_features", [((4, 8, 8), (8, 8, 8, 8, 4)), ((4,), (6,)), ((4, 8), (8, 8))]
)
def test_stages_name_the_layers_and_compose_to_the_network(enc_features, dec_features):
    unet = Unet((16, 16), 2, enc_features, dec_features)
    levels, finals = len(enc_features), len(dec_features) - len(enc_features)
    assert [level.conv.name for level in unet.encoder] == [f"enc_conv_{k}" for k in range(levels)]
    assert [level.pool.name for level in unet.encoder] == [f"enc_pool_{k}" for k in range(levels)]
    assert [level.concat.name for level in unet.decoder] == [
        f"dec_concat_{k}" for k in range(levels)
    ]
    assert [block.activation.name for block in unet.full_resolution] == [
        f"final_conv_{k}_activation" for k in range(finals)
    ]
    # encoder[0] -> coarse_levels -> decoder[-1]'s merge -> full_resolution is the network.
    x = tf.constant(np.random.default_rng(6).uniform(size=(2, 16, 16, 2)), tf.float32)
    level0, merge = unet.encoder[0], unet.decoder[-1]
    skip = level0.activation(level0.conv(x))
    coarse = unet.coarse_levels(level0.pool(skip))
    assert coarse.shape == (2, 8, 8, dec_features[levels - 1])
    y = merge.concat([merge.upsample(coarse), skip])
    for block in unet.full_resolution:
        y = block.activation(block.conv(y))
    # The network computes the merges as transposed convolutions (the default decoder form):
    # equal to these explicit layers up to float32 rounding of differently ordered sums.
    np.testing.assert_allclose(y.numpy(), unet(x).numpy(), rtol=1e-5, atol=1e-5)


# --- The decoder form: transposed (default) or explicit layers ---------------------------------


def graph_ops(model, x):
    """The op types of `model(x)` traced in a tf.function, and "dec_concat" if an op of a
    decoder concatenation layer (`dec_concat_k`) runs."""
    graph = tf.function(lambda x: model(x)).get_concrete_function(x).graph
    ops = {op.type for op in graph.get_operations()}
    if any("dec_concat" in op.name for op in graph.get_operations()):
        ops.add("dec_concat")
    return ops


def twin_forms(inshape, enc_features=(4, 8, 8), dec_features=(8, 8, 8, 8, 4)):
    """The default U-Net (transposed decoder) and the explicit one, with the same weights."""
    default = Unet(inshape, 2, enc_features, dec_features)
    explicit = Unet(inshape, 2, enc_features, dec_features, transposed_decoder=False)
    rng = np.random.default_rng(7)
    default.set_weights([rng.normal(0, 0.3, w.shape) for w in explicit.get_weights()])
    explicit.set_weights(default.get_weights())
    return default, explicit


@pytest.mark.parametrize("inshape", [(16, 24), (8, 16, 8)])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "graph"])
def test_transposed_decoder_is_the_default_and_equals_the_explicit_layers(inshape, compiled):
    default, explicit = twin_forms(inshape)
    assert default.transposed_decoder is True and explicit.transposed_decoder is False
    x = tf.constant(np.random.default_rng(8).uniform(size=(2, *inshape, 2)), tf.float32)
    # The default runs transposed convolutions and no decoder concatenation; the explicit form
    # the reverse (the functional graph).
    transposed = "Conv3DBackpropInputV2" if len(inshape) == 3 else "Conv2DBackpropInput"
    ops = graph_ops(default, x)
    assert transposed in ops and "dec_concat" not in ops
    ops = graph_ops(explicit, x)
    assert transposed not in ops and "dec_concat" in ops
    # Outputs and gradients (training without recomputation) equal up to float32 rounding.
    y0, loss0, grads0 = loss_and_gradients(explicit, x, compiled)
    y1, loss1, grads1 = loss_and_gradients(default, x, compiled)
    scale = np.abs(y0.numpy()).max()
    assert scale > 0.1
    np.testing.assert_allclose(y1.numpy(), y0.numpy(), rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(loss1.numpy(), loss0.numpy(), rtol=1e-5)
    for weight, g0, g1 in zip(explicit.trainable_weights, grads0, grads1, strict=True):
        g0, g1 = g0.numpy(), g1.numpy()
        assert np.abs(g0).max() > 0, weight.path
        np.testing.assert_allclose(g1, g0, rtol=0, atol=1e-4 * np.abs(g0).max())


def test_transposed_decoder_matches_a_numpy_reference_in_float64():
    # Independent oracle: the U-Net written out in NumPy (np.repeat upsampling, concatenation,
    # reshape max pooling) with tf.nn convolutions in float64, from the layers' weights.
    default, _ = twin_forms((8, 16))
    x = np.random.default_rng(9).uniform(size=(1, 8, 16, 2))
    expected = numpy_unet(default, x)
    got = default(tf.constant(x, tf.float32)).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_last_merge_without_a_following_convolution_keeps_the_explicit_layers():
    # dec_features == one per level: the network ends on the concatenation, which has no
    # convolution to fold the upsampling into. The other merges are transposed.
    default, explicit = twin_forms((16, 16), (4, 8), (8, 6))
    x = tf.constant(np.random.default_rng(10).uniform(size=(1, 16, 16, 2)), tf.float32)
    ops = graph_ops(default, x)
    assert "Conv2DBackpropInput" in ops and "dec_concat" in ops
    y0, y1 = explicit(x).numpy(), default(x).numpy()
    assert y1.shape == (1, 16, 16, 6 + 4)
    np.testing.assert_allclose(y1, y0, rtol=0, atol=1e-5 * np.abs(y0).max())


def test_one_level_without_final_convolutions_is_the_explicit_graph():
    # No merge is followed by a convolution: the default form is the explicit one, bit for bit.
    default, explicit = twin_forms((16, 16), (4,), (6,))
    x = tf.constant(np.random.default_rng(11).uniform(size=(1, 16, 16, 2)), tf.float32)
    assert "Conv2DBackpropInput" not in graph_ops(default, x)
    np.testing.assert_array_equal(default(x).numpy(), explicit(x).numpy())


def test_transposable_only_where_the_form_is_exact():
    conv3, up3 = keras.layers.Conv3D(4, 3, padding="same"), keras.layers.UpSampling3D(2)
    conv2, up2 = keras.layers.Conv2D(4, 3, padding="same"), keras.layers.UpSampling2D(2)
    assert transposable(up3, conv3) and transposable(up2, conv2)
    assert transposable(up3, conv3, (1, 4, None, 3, 8), (1, 8, 10, None, 4))  # None: run time
    not_exact = [
        (keras.layers.UpSampling2D(2, interpolation="bilinear"), conv2),
        (keras.layers.UpSampling2D((2, 3)), conv2),
        (keras.layers.UpSampling2D(2, data_format="channels_first"), conv2),
        (up2, keras.layers.Conv2D(4, 3, padding="valid")),
        (up2, keras.layers.Conv2D(4, 5, padding="same")),
        (up2, keras.layers.Conv2D(4, 3, strides=2, padding="same")),
        (up2, keras.layers.Conv2D(4, 3, dilation_rate=2, padding="same")),
        (up2, keras.layers.Conv2D(4, 3, padding="same", groups=2)),
        (up2, keras.layers.Conv2D(4, 3, padding="same", data_format="channels_first")),
        (up3, conv2),
        (up2, keras.layers.Conv2DTranspose(4, 3, padding="same")),
    ]
    for upsample, conv in not_exact:
        assert not transposable(upsample, conv), (upsample.get_config(), conv.get_config())
    # Odd or mismatched static sizes: the explicit layers run (and raise, as they always did).
    assert not transposable(up2, conv2, (1, 4, 4, 3), (1, 9, 8, 4))
    assert not transposable(up2, conv2, (1, 4, 4, 3), (1, 8, 8, 8, 4))


def test_odd_sizes_known_only_at_run_time_raise_as_the_explicit_form_does():
    # A U-Net with free sizes given 18 rows: pooling floors 9 to 4, so the skip (9 rows) is not
    # twice the coarse tensor. Both forms must refuse it rather than return a field.
    default, explicit = twin_forms((None, None), (4, 8), (8, 8, 4))
    spec = tf.TensorSpec([None, None, None, 2], tf.float32)
    x = tf.zeros([1, 18, 16, 2])
    for unet in (explicit, default):
        run = tf.function(lambda x, unet=unet: unet(x), input_signature=[spec])
        with pytest.raises(tf.errors.InvalidArgumentError, match="ConcatOp|twice the size"):
            run(x)
        assert run(tf.zeros([1, 16, 12, 2])).shape == (1, 16, 12, 4)


def test_upsample_concat_conv_refuses_a_skip_of_another_size():
    conv = keras.layers.Conv2D(3, 3, padding="same")
    conv.build((None, None, None, 4))
    with pytest.raises(tf.errors.InvalidArgumentError, match="twice the size"):
        upsample_concat_conv(tf.zeros([1, 4, 4, 2]), tf.zeros([1, 9, 8, 2]), conv)
    spec = tf.TensorSpec([None, None, None, 2], tf.float32)
    run = tf.function(lambda c, s: upsample_concat_conv(c, s, conv), input_signature=[spec] * 2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="twice the size"):
        run(tf.zeros([1, 4, 4, 2]), tf.zeros([1, 9, 8, 2]))


def test_transposed_decoder_keeps_the_weights_layout_and_the_config():
    default, explicit = twin_forms((16, 16, 16))
    assert [(w.path, w.shape) for w in default.weights] == [
        (w.path, w.shape) for w in explicit.weights
    ]
    assert default.get_config()["transposed_decoder"] is True
    clone = Unet.from_config(explicit.get_config())
    assert clone.transposed_decoder is False
    # A config written before the option existed gets the transposed form.
    config = explicit.get_config()
    del config["transposed_decoder"]
    assert Unet.from_config(config).transposed_decoder is True


def test_recompute_with_the_explicit_form_trains_like_the_default():
    # recompute and the decoder form are independent: recomputation of the explicit layers.
    default, _ = twin_forms((16, 16))
    recomputing = Unet((16, 16), 2, **SMALL, recompute=True, transposed_decoder=False)
    recomputing.set_weights(default.get_weights())
    x = tf.constant(np.random.default_rng(12).uniform(size=(1, 16, 16, 2)), tf.float32)
    y0, _, grads0 = loss_and_gradients(default, x, compiled=True)
    y1, _, grads1 = loss_and_gradients(recomputing, x, compiled=True)
    assert_same_outputs_and_gradients((y0, grads0), (y1, grads1))


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_transposed_decoder_must_be_a_bool(value):
    with pytest.raises(TypeError, match=f"Received: transposed_decoder={value!r}"):
        Unet((16, 16), 2, (4, 8), (8, 8, 4), transposed_decoder=value)
