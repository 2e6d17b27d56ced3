"""`vxmtf.networks.tiled_displacement`: slab-wise inference gives the untiled model's field."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from vxmtf.networks import VxmDense, default_slab, min_slab, tiled_displacement
from vxmtf.networks.tiled import _Stages, slab_width

# 3 encoder levels (sizes divisible by 8); 2 final convolutions + the flow head after the
# full-resolution concatenation, so min_slab = 4.
SMALL = {"enc_features": (4, 8, 8), "dec_features": (8, 8, 8, 6, 4)}


def random_model(inshape, int_steps=0, int_resolution=2, seed=0, **features):
    """A VxmDense whose flow head gives a field of a few voxels (not the ~1e-5 of a new model),
    so that differences between the tiled and untiled computations show."""
    keras.utils.set_random_seed(seed)
    features = features or SMALL
    model = VxmDense(inshape, int_steps=int_steps, int_resolution=int_resolution, **features)
    flow = model.get_layer("flow")
    kernel, bias = flow.get_weights()
    rng = np.random.default_rng(seed)
    flow.set_weights([rng.normal(0, 0.3, kernel.shape).astype(np.float32), bias])
    return model


def random_pair(shape, batch=1, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.uniform(size=(batch, *shape, 1)).astype(np.float32) for _ in range(2)]


def untiled(model, moving, fixed):
    return model([moving, fixed])["displacement"].numpy()


def assert_same_field(tiled, expected):
    assert tiled.shape == expected.shape
    assert np.abs(expected).max() > 0.5  # a field worth comparing
    np.testing.assert_allclose(tiled, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def tiled_graph(model):
    """`tiled_displacement` in a tf.function taking the slab as a tensor, as `Registrator`
    runs it: one graph for every shape and slab."""
    spec = tf.TensorSpec([None] * (len(model.inshape) + 1) + [1], tf.float32)

    @tf.function(input_signature=[spec, spec, tf.TensorSpec([], tf.int32)])
    def run(moving, fixed, slab):
        return tiled_displacement(model, moving, fixed, slab=slab)

    return lambda moving, fixed, slab: run(moving, fixed, tf.constant(slab)).numpy()


@pytest.mark.parametrize(
    "inshape, int_steps, int_resolution",
    [
        ((24, 16, 8), 0, 2),
        ((24, 16, 8), 7, 2),
        ((24, 8, 16), 7, 1),
        ((40, 16), 0, 2),
        ((16, 24), 7, 1),
    ],
)
def test_tiled_equals_untiled_for_every_slab(inshape, int_steps, int_resolution):
    """Slabs of the minimum size, odd slabs, slabs that do not divide the axis, one slab
    exactly the axis and one longer than it."""
    model = random_model(inshape, int_steps, int_resolution)
    moving, fixed = random_pair(inshape)
    expected = untiled(model, moving, fixed)
    run = tiled_graph(model)
    size = inshape[0]
    assert min_slab(model) == 4
    for slab in (4, 5, 7, 10, size - 1, size, size + 3):
        assert_same_field(run(moving, fixed, slab), expected)


def test_default_network_eagerly_with_int_slabs_and_a_batch_of_two():
    model = random_model((32, 16, 16), int_steps=7, enc_features=(16, 32, 32, 32))
    moving, fixed = random_pair((32, 16, 16), batch=2)
    expected = untiled(model, moving, fixed)
    assert min_slab(model) == 5
    for slab in (5, 6, 13, None):
        assert_same_field(tiled_displacement(model, moving, fixed, slab=slab).numpy(), expected)


def test_one_encoder_level_and_no_final_convolution():
    """The smallest U-Net: concatenation straight into the flow head (min_slab 2)."""
    model = random_model((16, 8, 8), enc_features=(4,), dec_features=(4,))
    moving, fixed = random_pair((16, 8, 8))
    expected = untiled(model, moving, fixed)
    assert min_slab(model) == 2
    run = tiled_graph(model)
    for slab in (2, 3, 16):
        assert_same_field(run(moving, fixed, slab), expected)


def test_slabs_computed_apart_differ():
    """The check above can fail: running the untiled model on separate slabs (no carried rows,
    zero padding at every cut) gives another field near the cuts."""
    model = random_model((None, None, None))
    moving, fixed = random_pair((24, 16, 8))
    expected = untiled(model, moving, fixed)
    slabs = [untiled(model, moving[:, i : i + 8], fixed[:, i : i + 8]) for i in (0, 8, 16)]
    apart = np.concatenate(slabs, axis=1)
    assert np.abs(apart - expected).max() > 1e-2 * np.abs(expected).max()


def test_default_slab_from_the_memory_budget():
    model = VxmDense((None,) * 3, int_steps=0)
    assert slab_width(model) == 128  # fc 48 -> 32: 2 * 48 + 32 channels
    row_bytes = 192 * 224 * 4 * 128  # one row of 160x192x224 (22 MB)
    assert default_slab((1, 160, 192, 224, 1), model, 16 * row_bytes) == 16
    assert default_slab((1, 160, 192, 224, 1), model, 17.5 * row_bytes) == 16  # even
    assert default_slab((2, 160, 192, 224, 1), model, 16 * row_bytes) == 8  # per batch
    assert default_slab((1, 160, 192, 224, 1), model, 1) == min_slab(model) == 5
    assert default_slab((1, 160, 192, 224, 1), model) == 18  # the default budget, 384 MiB
    # At least MIN_SLABS = 4 slabs: ceil(80 / 4) = 20, ceil(88 / 4) = 22, ceil(84 / 4) = 21 -> 20.
    assert default_slab((1, 80, 96, 112, 1), model) == 20
    assert default_slab((1, 88, 192, 224, 1), model, 10**12) == 22
    assert default_slab((1, 84, 192, 224, 1), model, 10**12) == 20
    for shape in ([1, 160, 192, 224, 1], [1, 80, 96, 112, 1], [2, 84, 192, 224, 1]):
        assert int(default_slab(tf.constant(shape), model)) == default_slab(tuple(shape), model)
    with pytest.raises(ValueError, match=r"positive number of bytes.*memory_budget=0"):
        default_slab((1, 16, 16, 16, 1), model, 0)


def test_slab_errors_say_what_was_received():
    model = random_model((24, 16, 8))
    moving, fixed = random_pair((24, 16, 8))
    for bad in (0, 3, -1, True, 4.0, "8"):
        with pytest.raises(ValueError, match=rf"at least 4 rows.*Received: slab={bad!r}"):
            tiled_displacement(model, moving, fixed, slab=bad)
    with pytest.raises(ValueError, match=r"scalar int tensor"):
        tiled_displacement(model, moving, fixed, slab=tf.constant([8]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="at least min_slab"):
        tiled_graph(model)(moving, fixed, 3)
    with pytest.raises(ValueError, match=r"memory_budget=-5"):
        tiled_displacement(model, moving, fixed, memory_budget=-5)


def test_input_and_model_errors():
    model = random_model((24, 16, 8))
    moving, fixed = random_pair((24, 16, 8))
    with pytest.raises(TypeError, match=r"VxmDense.*Received: model of type Unet"):
        tiled_displacement(model.get_layer("unet"), moving, fixed)
    with pytest.raises(ValueError, match=r"\(batch, \*spatial, 1\).*moving.shape=\(1, 24, 16, 8\)"):
        tiled_displacement(model, moving[..., 0], fixed)
    with pytest.raises(ValueError, match=r"multiple of .* \(8\).*fixed.shape=\(1, 20, 16, 8, 1\)"):
        tiled_displacement(model, moving[:, :20], fixed[:, :20])
    with pytest.raises(ValueError, match=r"one shape.*fixed.shape=\(1, 16, 16, 8, 1\)"):
        tiled_displacement(model, moving, fixed[:, :16])


# --- The decoder form: stage C as the U-Net computes it ------------------------------------


def explicit_twin(model):
    """`model` with the U-Net's explicit decoder layers (`transposed_decoder=False`)."""
    twin = VxmDense.from_config(model.get_config() | {"transposed_decoder": False})
    twin.set_weights(model.get_weights())
    return twin


def tiled_op_types(model, shape):
    spec = tf.TensorSpec([1, *shape, 1], tf.float32)
    run = tf.function(lambda m, f: tiled_displacement(model, m, f, slab=5))
    graph = run.get_concrete_function(spec, spec).graph
    types = {op.type for op in graph.get_operations()}
    for function in graph._functions.values():  # the while loop's body
        types |= {node.op for node in function.definition.node_def}
    return types


@pytest.mark.parametrize(
    "inshape, features",
    [
        ((24, 16, 8), SMALL),
        ((40, 16), SMALL),
        ((16, 8, 8), {"enc_features": (4,), "dec_features": (4,)}),
    ],
)
def test_tiled_transposed_decoder_equals_the_untiled_explicit_layers(inshape, features):
    """The default (transposed) tiled stage C against the explicit untiled model: every slab,
    odd starts included; and the fallback (explicit layers, carried concatenation rows)."""
    model = random_model(inshape, **features)
    explicit = explicit_twin(model)
    assert _Stages(model).transposed and not _Stages(explicit).transposed
    moving, fixed = random_pair(inshape)
    expected = untiled(explicit, moving, fixed)
    for net in (model, explicit):
        run = tiled_graph(net)
        for slab in (min_slab(net), min_slab(net) + 1, 7, inshape[0] - 1, inshape[0] + 3):
            assert_same_field(run(moving, fixed, slab), expected)


def test_tiled_graph_runs_the_transposed_convolution_only_by_default():
    model = random_model((24, 16, 8))
    transposed = "Conv3DBackpropInputV2"
    assert transposed in tiled_op_types(model, (24, 16, 8))
    assert transposed not in tiled_op_types(explicit_twin(model), (24, 16, 8))
