"""Tests of `vxmtf.refine`: test-time refinement of a registration field on its pair."""

import dataclasses
import json

import numpy as np
import pytest
import tensorflow as tf

from vxmtf.losses import MSE, NCC, Grad
from vxmtf.metrics import folding_fraction, jacobian_determinant
from vxmtf.networks import VxmDense
from vxmtf.ops import integrate_velocity, rescale_field, warp
from vxmtf.refine import RefineConfig, refine_field, refine_objective
from vxmtf.training.config import ModelConfig, RunConfig, TrainConfig

SHAPES = {2: (24, 20), 3: (16, 20, 16)}


def texture(shape, shift=None):
    """A smooth analytic texture ``g(x - shift)``: a sum of plane waves, in about [0.1, 0.9].

    Every voxel has intensity structure (no flat background), so a shift is identifiable
    everywhere; wavelengths of 9-14 voxels keep a shift of 1-2 voxels within a quarter wave.
    """
    ndim = len(shape)
    shift = np.zeros(ndim) if shift is None else np.asarray(shift, np.float64)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"))
    x = grid - shift.reshape((ndim,) + (1,) * ndim)
    rng = np.random.default_rng(7)
    total = np.zeros(shape)
    for _ in range(6):
        direction = rng.normal(size=ndim)
        direction /= np.linalg.norm(direction)
        wave = 2 * np.pi / rng.uniform(9.0, 14.0)
        phase = rng.uniform(0, 2 * np.pi)
        total += np.sin(wave * np.tensordot(direction, x, axes=1) + phase)
    return (0.5 + 0.4 * total / 6).astype(np.float32)


def batch(image):
    return tf.constant(image[None, ..., None])


def oracle_objective(moving, fixed, field, int_steps, out_shape, image_loss, reg_weight, mult):
    """The training objective, built from the Keras losses and ops as the trainer builds it."""
    displacement = integrate_velocity(field, int_steps) if int_steps else field
    if tuple(displacement.shape[1:-1]) != tuple(out_shape):
        displacement = rescale_field(displacement, out_shape=out_shape)
    moved = warp(moving, displacement)
    similarity = NCC(9) if image_loss == "ncc" else MSE()
    grad = Grad("l2", loss_mult=mult)
    return float(similarity(fixed, moved) + reg_weight * grad(tf.zeros([1, 1]), field))


def random_pair(ndim, seed=0):
    rng = np.random.default_rng(seed)
    shape = SHAPES[ndim]
    fixed = texture(shape)
    moving = texture(shape, shift=rng.uniform(-1.5, 1.5, ndim))
    return batch(moving), batch(fixed), shape


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize(
    "int_steps, factor, image_loss", [(7, 2, "ncc"), (0, 1, "ncc"), (5, 1, "mse")]
)
def test_refinement_lowers_the_objective(ndim, int_steps, factor, image_loss):
    moving, fixed, shape = random_pair(ndim)
    rng = np.random.default_rng(1)
    field_shape = (1, *[n // factor for n in shape], ndim)
    field = tf.constant(rng.normal(scale=0.3, size=field_shape).astype(np.float32))
    mult = float(factor) if factor > 1 else None
    reg_weight = 1.0 if image_loss == "ncc" else 0.01
    refined, displacement, history = refine_field(
        moving,
        fixed,
        field,
        int_steps=int_steps,
        image_loss=image_loss,
        reg_weight=reg_weight,
        grad_mult=mult or 1.0,
        steps=10,
        learning_rate=0.05,
    )
    before = oracle_objective(moving, fixed, field, int_steps, shape, image_loss, reg_weight, mult)
    after = oracle_objective(moving, fixed, refined, int_steps, shape, image_loss, reg_weight, mult)
    assert after < before - 1e-3 * abs(before)
    # The history's first and last values are the oracle's, the whole record consistent.
    np.testing.assert_allclose(history["loss"][[0, -1]], [before, after], rtol=1e-4, atol=1e-6)
    assert history["loss"].shape == (11,)
    np.testing.assert_allclose(
        history["loss"],
        history["similarity"] + reg_weight * (mult or 1.0) * history["smoothness"],
        rtol=1e-5,
        atol=1e-7,
    )
    assert refined.shape == field.shape
    assert displacement.shape == (1, *shape, ndim)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("int_steps", [0, 7])
def test_zero_steps_returns_the_network_output(ndim, int_steps):
    """With no step the field is the input, and its displacement is VxmDense's own output."""
    inshape = (16, 32) if ndim == 2 else (16, 16, 16)
    model = VxmDense(
        inshape,
        enc_features=(4, 4, 4, 4),
        dec_features=(4, 4, 4, 4, 4, 4, 4),
        int_steps=int_steps,
        int_resolution=2,
    )
    # Larger flow weights than the initialiser's, so that the displacement is not ~0.
    flow = model.get_layer("flow")
    kernel, bias = flow.get_weights()
    rng = np.random.default_rng(3)
    flow.set_weights([rng.normal(scale=0.3, size=kernel.shape).astype(np.float32), bias])
    moving, fixed = (tf.constant(rng.random((1, *inshape, 1), np.float32)) for _ in range(2))
    outputs = model([moving, fixed])
    assert float(tf.reduce_max(tf.abs(outputs["displacement"]))) > 0.1
    field, displacement, history = refine_field(
        moving, fixed, outputs["preint_flow"], int_steps=int_steps, steps=0
    )
    np.testing.assert_array_equal(field.numpy(), outputs["preint_flow"].numpy())
    np.testing.assert_allclose(
        displacement.numpy(), outputs["displacement"].numpy(), rtol=1e-5, atol=1e-6
    )
    assert history["loss"].shape == (1,)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("int_steps, factor", [(0, 1), (7, 2)])
def test_recovers_a_known_shift_from_zero(ndim, int_steps, factor):
    """moving(y) = g(y - s), fixed(x) = g(x): the refined displacement is u = s inside."""
    shape = SHAPES[ndim]
    shift = np.array([1.5, -1.0, 0.75][:ndim])
    moving, fixed = batch(texture(shape, shift)), batch(texture(shape))
    field = tf.zeros((1, *[n // factor for n in shape], ndim))
    _, displacement, history = refine_field(
        moving,
        fixed,
        field,
        int_steps=int_steps,
        ncc_window=5,
        steps=100,
        learning_rate=0.1 / factor,
    )
    inside = (0,) + tuple(slice(4, n - 4) for n in shape)
    error = np.abs(displacement.numpy()[inside] - shift)  # (*interior, ndim), voxels
    assert np.mean(error) < 0.05, np.mean(error)
    assert error.max() < 0.35, error.max()
    assert history["loss"][-1] < history["loss"][0]


@pytest.mark.parametrize("ndim", [2, 3])
def test_diffeomorphic_refinement_does_not_fold(ndim):
    """Aggressive refinement (noise images, a rough half-resolution start, weak smoothness):
    the velocity gives det J > 0 everywhere, whereas the same refinement of a displacement
    folds (so the check can fail)."""
    shape = SHAPES[ndim]
    rng = np.random.default_rng(11)
    moving, fixed = (batch(rng.random(shape, np.float32)) for _ in range(2))
    coarse = (1, *[n // 2 for n in shape], ndim)
    field = tf.constant(rng.normal(scale=1.0, size=coarse).astype(np.float32))
    options = {"reg_weight": 0.1, "ncc_window": 3, "steps": 40, "learning_rate": 0.3}
    _, diffeo, _ = refine_field(moving, fixed, field, int_steps=7, grad_mult=2.0, **options)
    _, plain, _ = refine_field(moving, fixed, field, int_steps=0, grad_mult=2.0, **options)
    assert float(tf.reduce_max(tf.abs(diffeo))) > 2.0  # it did deform, by voxels
    assert jacobian_determinant(diffeo.numpy()[0]).min() > 0
    assert folding_fraction(jacobian_determinant(plain.numpy()[0])) > 0.05


@pytest.mark.parametrize("ndim", [2, 3])
def test_coarse_to_fine_schedule(ndim):
    moving, fixed, shape = random_pair(ndim, seed=2)
    field = tf.zeros((1, *[n // 2 for n in shape], ndim))
    refined, displacement, history = refine_field(
        moving,
        fixed,
        field,
        int_steps=7,
        grad_mult=2.0,
        steps=10,
        coarse_steps=15,
        learning_rate=0.1,
    )
    assert history["loss"].shape == (26,)
    after = oracle_objective(moving, fixed, refined, 7, shape, "ncc", 1.0, 2.0)
    np.testing.assert_allclose(history["loss"][-1], after, rtol=1e-4)
    assert after < history["loss"][0]
    # The coarse stage alone changes the field by a smooth update: a 2x coarser field,
    # upsampled, has (up to the border) no voxel-to-voxel oscillation.
    coarse_only, _, _ = refine_field(
        moving, fixed, field, int_steps=7, grad_mult=2.0, steps=0, coarse_steps=15
    )
    assert float(tf.reduce_max(tf.abs(coarse_only))) > 0.05
    assert refined.shape == field.shape and displacement.shape == (1, *shape, ndim)


def test_fine_stage_alone_starts_from_the_resized_field():
    """``steps=0, fine_steps=N``: N steps on the field resized to a 2x finer grid, recorded from
    that resized field's objective (N + 1 values), as the full-resolution stage of
    `benchmarks.bench_refine` runs it on a finer velocity."""
    moving, fixed, shape = random_pair(3, seed=3)
    rng = np.random.default_rng(4)
    field = tf.constant(rng.normal(scale=0.2, size=(1, *[n // 2 for n in shape], 3)), tf.float32)
    refined, displacement, history = refine_field(
        moving, fixed, field, int_steps=7, grad_mult=2.0, steps=0, fine_steps=4, learning_rate=0.1
    )
    resized = rescale_field(field, out_shape=shape)
    assert refined.shape == resized.shape and displacement.shape == (1, *shape, 3)
    assert history["loss"].shape == (5,)
    before = oracle_objective(moving, fixed, resized, 7, shape, "ncc", 1.0, 2.0)
    after = oracle_objective(moving, fixed, refined, 7, shape, "ncc", 1.0, 2.0)
    np.testing.assert_allclose(history["loss"][[0, -1]], [before, after], rtol=1e-4, atol=1e-6)
    assert after < before


def test_coarse_and_fine_stages_without_middle_steps_record_each_value_once():
    moving, fixed, shape = random_pair(2, seed=5)
    field = tf.zeros((1, *[n // 2 for n in shape], 2))
    refined, _, history = refine_field(
        moving, fixed, field, int_steps=7, steps=0, coarse_steps=3, fine_steps=2
    )
    assert history["loss"].shape == (3 + 2 + 1,)
    after = oracle_objective(moving, fixed, refined, 7, shape, "ncc", 1.0, 1.0)
    np.testing.assert_allclose(history["loss"][-1], after, rtol=1e-4, atol=1e-6)


def test_refinement_at_a_finer_image_grid():
    """The same velocity against images 2x finer (a full-resolution stage): the displacement
    is on the images' grid, in their voxels (twice the coarse displacement)."""
    moving, fixed, shape = random_pair(2)
    velocity = tf.constant(np.full((1, 6, 5, 2), 0.25, np.float32))
    _, coarse, _ = refine_field(moving, fixed, velocity, int_steps=7, steps=0)
    finer = [2 * n for n in shape]
    up = [tf.image.resize(image, finer) for image in (moving, fixed)]
    _, fine, _ = refine_field(*up, velocity, int_steps=7, steps=0)
    assert coarse.shape == (1, *shape, 2) and fine.shape == (1, *finer, 2)
    # A constant velocity integrates to the same constant shift: 4x in image voxels, then 8x.
    np.testing.assert_allclose(coarse.numpy()[0, 8:-8, 8:-8], 1.0, atol=1e-4)
    np.testing.assert_allclose(fine.numpy()[0, 16:-16, 16:-16], 2.0, atol=1e-4)


# ----------------------------------------------------------------------------- configuration


def test_config_defaults_and_round_trip():
    config = RefineConfig()
    assert config.steps == 0 and not config.enabled
    custom = RefineConfig(steps=100, learning_rate=0.3, coarse_steps=25, reg_weight=0.5)
    assert custom.enabled
    values = json.loads(json.dumps(custom.to_dict()))
    assert RefineConfig.from_dict(values) == custom
    with pytest.raises(dataclasses.FrozenInstanceError):
        custom.steps = 3


def test_config_kwargs_use_the_model_objective():
    run = RunConfig(
        model=ModelConfig(int_steps=7, int_resolution=2),
        train=TrainConfig(image_loss="mse", ncc_window=7),
    )
    kwargs = RefineConfig(steps=5).kwargs(run)
    assert kwargs == {
        "int_steps": 7,
        "image_loss": "mse",
        "ncc_window": 7,
        "reg_weight": 0.01,  # the default lambda of MSE
        "grad_mult": 2.0,
        "steps": 5,
        "learning_rate": 0.3,  # the default, measured best on LPBA40
        "coarse_steps": 0,
        "coarse_factor": 2,
        "fine_steps": 0,
    }
    full = RefineConfig(steps=5, fine_steps=3, full_steps=4).full_kwargs(run)
    assert (full["steps"], full["coarse_steps"], full["fine_steps"]) == (4, 0, 0)
    assert full["reg_weight"] == 0.01
    finer = RefineConfig(steps=5, full_steps=4, full_fine_steps=6, full_reg_weight=0.5)
    full = finer.full_kwargs(run)
    assert (full["steps"], full["coarse_steps"], full["fine_steps"]) == (4, 0, 6)
    assert full["reg_weight"] == 0.5 and finer.kwargs(run)["reg_weight"] == 0.01
    assert RefineConfig(full_fine_steps=2).enabled and finer.full_stage_steps == 10
    override = RefineConfig(steps=5, image_loss="ncc", ncc_window=5, reg_weight=0.5).kwargs(run)
    assert (override["image_loss"], override["ncc_window"], override["reg_weight"]) == (
        "ncc",
        5,
        0.5,
    )
    plain = refine_objective(RunConfig(model=ModelConfig(int_steps=0, int_resolution=2)))
    assert plain["grad_mult"] == 1.0 and plain["int_steps"] == 0


@pytest.mark.parametrize(
    "options, message",
    [
        ({"steps": -1}, "`refine_steps` must be an int >= 0. Received: refine_steps=-1"),
        ({"steps": 2.5}, "`refine_steps` must be an int >= 0. Received: refine_steps=2.5"),
        ({"steps": True}, "`refine_steps` must be an int >= 0. Received: refine_steps=True"),
        ({"coarse_steps": -2}, "`refine_coarse_steps` must be an int >= 0"),
        ({"coarse_factor": 1}, "`refine_coarse_factor` must be an int >= 2"),
        ({"fine_steps": -1}, "`refine_fine_steps` must be an int >= 0"),
        ({"full_steps": 1.0}, "`refine_full_steps` must be an int >= 0"),
        ({"learning_rate": 0}, "`refine_learning_rate` must be a positive number"),
        ({"learning_rate": float("nan")}, "`refine_learning_rate` must be a positive number"),
        ({"image_loss": "l1"}, "`refine_image_loss` must be None or one of"),
        ({"ncc_window": 4}, "`refine_ncc_window` must be a positive odd int"),
        ({"reg_weight": -1.0}, "`refine_reg_weight` must be a number >= 0"),
        ({"full_fine_steps": -1}, "`refine_full_fine_steps` must be an int >= 0"),
        ({"full_reg_weight": float("inf")}, "`refine_full_reg_weight` must be a number >= 0"),
    ],
)
def test_config_validation(options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RefineConfig(**options)


def test_from_dict_rejects_unknown_options():
    with pytest.raises(ValueError, match="Unknown refinement options"):
        RefineConfig.from_dict({"steps": 1, "stepz": 2})


def test_refine_field_validation():
    moving, fixed, shape = random_pair(2)
    field = tf.zeros((1, *shape, 2))
    with pytest.raises(ValueError, match="`refine_steps` must be an int >= 0"):
        refine_field(moving, fixed, field, int_steps=0, steps=-3)
    with pytest.raises(ValueError, match="`image_loss` must be one of"):
        refine_field(moving, fixed, field, int_steps=0, image_loss="ssd")
    with pytest.raises(ValueError, match="`int_steps` must be an int >= 0"):
        refine_field(moving, fixed, field, int_steps=-1)
    with pytest.raises(ValueError, match="Expected `field` of shape"):
        refine_field(moving, fixed, tf.zeros((1, *shape, 3)), int_steps=0)
    with pytest.raises(ValueError, match="Expected `moving` and `fixed` of the same shape"):
        refine_field(moving, fixed[:, :-2], field, int_steps=0)
