"""`vxmtf.registration`: a run's downsampling is undone, so fields land on the input grid; tiled
inference (the default) gives the untiled field."""

import numpy as np
import pytest
from helpers import shift_model
from scipy import ndimage

from vxmtf import ops
from vxmtf.export import export_saved_model
from vxmtf.networks import tiled_displacement
from vxmtf.networks.vxm_dense import VxmDense
from vxmtf.registration import Registrator, find_run_config, predictors, resize_displacement
from vxmtf.training.config import DataConfig, RunConfig


def test_affine_field_is_resized_by_the_voxel_centre_rule():
    rng = np.random.default_rng(0)
    coarse_shape, factor = (5, 6, 4), 2
    shape = (11, 12, 9)  # 11 and 9: one trailing voxel the coarse grid does not cover
    matrix, offset = rng.normal(size=(3, 3)) * 0.1, rng.normal(size=3)
    grid = np.stack(np.meshgrid(*map(np.arange, coarse_shape), indexing="ij"), -1)
    coarse = grid @ matrix.T + offset  # u(i) = A i + b, coarse voxels
    fine = resize_displacement(coarse, shape, factor)
    assert fine.shape == (*shape, 3)
    # Fine voxel y sits at coarse position (y + 0.5) / K - 0.5; vectors scale by K. Checked
    # where that position lies inside the coarse grid (no clamping).
    for y in [(1, 1, 1), (5, 7, 3), (8, 10, 6), (2, 9, 5)]:
        position = (np.asarray(y) + 0.5) / factor - 0.5
        expected = factor * (matrix @ position + offset)
        np.testing.assert_allclose(fine[y], expected, rtol=1e-5, atol=1e-5)
    # The uncovered trailing voxels repeat the last covered one.
    np.testing.assert_array_equal(fine[10], fine[9])
    np.testing.assert_array_equal(fine[:, :, 8], fine[:, :, 7])
    np.testing.assert_array_equal(
        resize_displacement(coarse, coarse_shape, 1), coarse.astype(np.float32)
    )
    with pytest.raises(ValueError, match=r"Expected a displacement of shape \(5, 6, 4, 3\)"):
        resize_displacement(coarse[:4], shape, factor)


@pytest.mark.parametrize("int_steps", [0, 2])
def test_downsampled_run_gives_the_field_on_the_input_grid(int_steps):
    """A run trained at half resolution: a constant shift of 1 model voxel is 2 input voxels."""
    model = shift_model([1.0, 0.0, -0.5], int_steps)
    config = RunConfig(data=DataConfig(downsample=2))
    registrator = Registrator(model, config=config)
    rng = np.random.default_rng(1)
    shape = (21, 18, 23)  # odd sizes: padding, cropping and the trailing voxels all happen
    moving = ndimage.gaussian_filter(rng.uniform(size=shape), 2).astype(np.float32)
    fixed = rng.uniform(size=shape).astype(np.float32)
    result = registrator.register(moving, fixed)
    assert result.displacement.shape == (*shape, 3)
    # Scaling and squaring of a constant velocity is exact; the resize keeps constants.
    np.testing.assert_allclose(result.displacement[..., 0], 2.0, atol=1e-4)
    np.testing.assert_allclose(result.displacement[..., 1], 0.0, atol=1e-4)
    np.testing.assert_allclose(result.displacement[..., 2], -1.0, atol=1e-4)
    # moved[x] = moving[x + (2, 0, -1)], checked against SciPy away from the borders.
    expected = ndimage.shift(moving, (-2.0, 0.0, 1.0), order=1, mode="nearest")
    np.testing.assert_allclose(
        result.moved[3:-3, 3:-3, 3:-3], expected[3:-3, 3:-3, 3:-3], atol=1e-5
    )
    labels = (moving > np.median(moving)).astype(np.int16) * 7
    moved_labels = registrator.warp_labels(labels, result.displacement)
    np.testing.assert_array_equal(
        moved_labels[:-3, :, 2:], np.roll(labels, (-2, 0, 1), axis=(0, 1, 2))[:-3, :, 2:]
    )


def test_pair_errors_name_what_was_received():
    registrator = Registrator(shift_model([0.0, 0.0, 0.0]), config=RunConfig())
    volume = np.zeros((16, 16, 16), np.float32)
    with pytest.raises(ValueError, match=r"rank 3.*Received: moving.shape=\(16, 16\)"):
        registrator.register(volume[0], volume)
    with pytest.raises(ValueError, match=r"one voxel grid.*fixed.shape=\(16, 16, 15\)"):
        registrator.register(volume, volume[..., :15])


def test_run_config_is_found_beside_the_model(tmp_path):
    model = shift_model([0.0, 0.0, 0.0])
    model.save(tmp_path / "a.keras")
    model.save(tmp_path / "b.keras")
    RunConfig(data=DataConfig(downsample=2)).save(tmp_path / "a.config.json")
    RunConfig(data=DataConfig(normalize="percentile")).save(tmp_path / "config.json")
    assert find_run_config(tmp_path / "a.keras") == tmp_path / "a.config.json"
    assert find_run_config(tmp_path / "b.keras") == tmp_path / "config.json"
    named, shared = Registrator(tmp_path / "a.keras"), Registrator(tmp_path / "b.keras")
    assert (named.downsample, named.normalize) == (2, "minmax")
    assert (shared.downsample, shared.normalize) == (1, "percentile")
    (tmp_path / "config.json").unlink()
    assert find_run_config(tmp_path / "b.keras") is None


def random_field_model(int_steps):
    """A tiny VxmDense whose flow head gives a field of a few voxels."""
    model = VxmDense((16, 16, 16), enc_features=(4, 4), dec_features=(4, 4, 4), int_steps=int_steps)
    flow = model.get_layer("flow")
    kernel, bias = flow.get_weights()
    rng = np.random.default_rng(int_steps)
    flow.set_weights([rng.normal(0, 0.3, kernel.shape).astype(np.float32), bias])
    return model


@pytest.mark.parametrize("int_steps, slab", [(0, None), (7, 3)])
def test_tiled_registration_equals_the_untiled_one(int_steps, slab, monkeypatch):
    """Tiling is the default; on odd sizes (padded to 24 rows) with the automatic slab (one slab
    here) or the smallest one (min_slab = 3 for one final convolution), the field and the moved
    image are the untiled ones."""
    traced = []

    def spy(*args, **kwargs):
        traced.append(kwargs["slab"])
        return tiled_displacement(*args, **kwargs)

    monkeypatch.setattr(predictors, "tiled_displacement", spy)
    model = random_field_model(int_steps)
    rng = np.random.default_rng(2)
    shape = (21, 18, 23)
    moving = ndimage.gaussian_filter(rng.uniform(size=shape), 1).astype(np.float32)
    fixed = rng.uniform(size=shape).astype(np.float32)
    expected = Registrator(model, config=RunConfig(), tiled=False).register(moving, fixed)
    scale = np.abs(expected.displacement).max()
    assert scale > 0.5
    registrator = Registrator(model, config=RunConfig(), slab=slab)
    assert registrator.tiled and registrator.slab == slab
    result = registrator.register(moving, fixed)
    assert len(traced) == 1  # the untiled Registrator did not use it, the tiled one did
    np.testing.assert_allclose(result.displacement, expected.displacement, atol=1e-5 * scale)
    np.testing.assert_allclose(result.moved, expected.moved, atol=1e-5)


def test_tiling_arguments(tmp_path):
    model = shift_model([0.0, 0.0, 0.0])
    with pytest.raises(TypeError, match=r"True or False. Received: tiled='no'"):
        Registrator(model, config=RunConfig(), tiled="no")
    with pytest.raises(ValueError, match=r"needs tiled=True. Received: tiled=False, slab=8"):
        Registrator(model, config=RunConfig(), tiled=False, slab=8)
    with pytest.raises(ValueError, match=r"at least 3 rows.*Received: slab=2"):
        Registrator(model, config=RunConfig(), slab=2)
    export_saved_model(model, tmp_path)
    assert Registrator(tmp_path / "vxm", config=RunConfig()).tiled  # (its warps)
    with pytest.raises(ValueError, match=r"SavedModel.*Received: slab=8"):
        Registrator(tmp_path / "vxm", config=RunConfig(), slab=8)


@pytest.mark.parametrize("tiled", [False, True])
def test_bfloat16_registration_is_close_to_float32(tiled):
    """precision="bfloat16": the U-Net computes in bfloat16 (8 bits of mantissa), the field and
    the warp in float32; against the float32 field (an independent computation of the same
    function at higher precision), the error is at bfloat16's level, not larger."""
    model = random_field_model(7)
    rng = np.random.default_rng(3)
    shape = (21, 18, 23)
    moving = ndimage.gaussian_filter(rng.uniform(size=shape), 1).astype(np.float32)
    fixed = ndimage.gaussian_filter(rng.uniform(size=shape), 1).astype(np.float32)
    expected = Registrator(model, config=RunConfig(), tiled=False).register(moving, fixed)
    registrator = Registrator(model, config=RunConfig(), tiled=tiled, precision="bfloat16")
    assert registrator.settings()["precision"] == "bfloat16"
    convs = [layer for layer in registrator.predictor.model.layers if "unet" in layer.name]
    assert convs and all(layer.compute_dtype == "bfloat16" for layer in convs)
    result = registrator.register(moving, fixed)
    assert result.displacement.dtype == np.float32 and result.moved.dtype == np.float32
    error = np.abs(result.displacement - expected.displacement)
    scale = np.abs(expected.displacement).max()
    assert scale > 0.5
    assert 0 < error.max() < 0.03 * scale  # bf16 differs (it ran), but only by rounding
    np.testing.assert_allclose(result.moved, expected.moved, atol=0.05)


def test_bfloat16_without_hardware_support_warns(monkeypatch, caplog):
    monkeypatch.setattr(predictors, "native_bfloat16", lambda: False)
    model = shift_model([0.0, 0.0, 0.0])
    with caplog.at_level("WARNING", logger="vxmtf.registration.predictors"):
        Registrator(model, config=RunConfig(), precision="bfloat16")
    assert "emulated" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="vxmtf.registration.predictors"):
        Registrator(model, config=RunConfig())
    assert "emulated" not in caplog.text


def test_precision_arguments(tmp_path):
    model = shift_model([0.0, 0.0, 0.0])
    with pytest.raises(
        ValueError, match=r"one of \('float32', 'bfloat16'\). Received: precision='fp16'"
    ):
        Registrator(model, config=RunConfig(), precision="fp16")
    export_saved_model(model, tmp_path)
    with pytest.raises(ValueError, match=r"SavedModel.*Received: precision='bfloat16'"):
        Registrator(tmp_path / "vxm", config=RunConfig(), precision="bfloat16")
    assert Registrator(tmp_path / "vxm", config=RunConfig()).settings()["precision"] == "float32"


@pytest.mark.parametrize("shape", [(11, 6, 7), (9, 10)])
def test_warp_by_chunks_of_rows_is_the_whole_warp(shape):
    """Chunks of 1 row, of rows that do not divide the axis, and larger than it; linear and
    nearest; displacements that reach across chunks and out of the volume."""
    rng = np.random.default_rng(3)
    image = rng.uniform(size=shape).astype(np.float32)
    labels = rng.integers(0, 5, size=shape).astype(np.uint8)
    displacement = rng.normal(0, 3, size=(*shape, len(shape))).astype(np.float32)
    whole = Registrator.warp(image, displacement)
    whole_labels = Registrator.warp(labels, displacement, "nearest")
    for rows in (1, 4, shape[0], 50):
        np.testing.assert_array_equal(Registrator.warp(image, displacement, rows=rows), whole)
        chunked = Registrator.warp(labels, displacement, "nearest", rows=rows)
        assert chunked.dtype == np.uint8
        np.testing.assert_array_equal(chunked, whole_labels)
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match=rf"int >= 1. Received: rows={bad!r}"):
            Registrator.warp(image, displacement, rows=bad)


def test_warp_rows_keeps_a_chunk_near_its_budget():
    assert ops.warp_rows((160, 192, 224)) == 128 * 2**20 // (128 * 192 * 224) == 24
    assert ops.warp_rows((8, 10**9, 10)) == 1
    assert ops.warp_rows((16, 16)) >= 16  # small images: one chunk
