"""`Registrator(refine=...)`: the network's field optimised further on each pair.

Oracles: a pair related by a known smooth shift that the (zero-field) network misses, and the
Jacobian determinant of the refined field (a diffeomorphic model must not fold)."""

import numpy as np
import pytest
from helpers import shift_model
from scipy import ndimage

from vxmtf.export import export_saved_model
from vxmtf.metrics import jacobian_determinant
from vxmtf.refine import RefineConfig
from vxmtf.registration import Registrator
from vxmtf.training.config import ModelConfig, RunConfig

SHAPE = (24, 24, 24)


def _pair():
    """Fixed: smooth blobs; moving[x] = fixed[x + 1.5 e0] (SciPy's shift by -1.5), so that
    moved[x] = moving[x + u(x)] = fixed[x] needs u = -1.5 along axis 0."""
    rng = np.random.default_rng(0)
    fixed = ndimage.gaussian_filter(rng.uniform(size=SHAPE), 2.5)
    fixed = (fixed - fixed.min()) / (fixed.max() - fixed.min())
    moving = ndimage.shift(fixed, (-1.5, 0.0, 0.0), order=3, mode="nearest")
    return moving.astype(np.float32), fixed.astype(np.float32)


def _config(int_steps):
    return RunConfig(
        model=ModelConfig(enc_features=(4, 4), dec_features=(4, 4, 4), int_steps=int_steps)
    )


@pytest.mark.parametrize("int_steps", [0, 7])
def test_refinement_recovers_a_shift_the_network_misses(int_steps):
    moving, fixed = _pair()
    model = shift_model([0.0, 0.0, 0.0], int_steps=int_steps)
    plain = Registrator(model, config=_config(int_steps)).register(moving, fixed)
    assert np.abs(plain.displacement).max() == 0.0 and plain.refinement is None
    refiner = Registrator(
        model, config=_config(int_steps), refine=RefineConfig(steps=60, learning_rate=0.1)
    )
    result = refiner.register(moving, fixed)
    history = result.refinement
    assert history["loss"][-1] < history["loss"][0]
    core = (slice(6, -6),) * 3
    along = result.displacement[core][..., 0]
    assert abs(float(np.median(along)) + 1.5) < 0.4, np.median(along)
    assert np.abs(result.displacement[core][..., 1:]).mean() < 0.3
    error_before = np.abs(plain.moved - fixed)[core].mean()
    error_after = np.abs(result.moved - fixed)[core].mean()
    assert error_after < 0.5 * error_before
    if int_steps:
        assert jacobian_determinant(result.displacement).min() > 0  # no folding
    assert refiner.settings()["refine"]["steps"] == 60


def test_refine_options_and_errors(tmp_path):
    model = shift_model([0.0, 0.0, 0.0])
    assert Registrator(model, config=_config(0), refine=5).refine.steps == 5
    assert Registrator(model, config=_config(0), refine={"steps": 2}).refine.steps == 2
    assert Registrator(model, config=_config(0)).settings() == {
        "refine": None,
        "affine": None,
        "precision": "float32",
    }
    with pytest.raises(ValueError, match="refine_steps"):
        Registrator(model, config=_config(0), refine=-1)
    with pytest.raises(TypeError, match="Received: refine='many'"):
        Registrator(model, config=_config(0), refine="many")
    export_saved_model(model, tmp_path)
    with pytest.raises(ValueError, match="SavedModel"):
        Registrator(tmp_path / "vxm", config=_config(0), refine=3)


def test_full_resolution_stage_on_a_finer_velocity():
    """`full_fine_steps` at `full_reg_weight`: the full-resolution stage continues on the
    velocity resized 2x finer; the shift is still recovered, without folding."""
    moving, fixed = _pair()
    config = _config(7)
    config.data.downsample = 2
    model = shift_model([0.0, 0.0, 0.0], int_steps=7)
    refine = RefineConfig(
        steps=40, learning_rate=0.1, full_steps=5, full_fine_steps=10, full_reg_weight=0.5
    )
    result = Registrator(model, config=config, refine=refine).register(moving, fixed)
    assert result.displacement.shape == (*moving.shape, 3)
    assert len(result.refinement["loss"]) == 40 + 5 + 10 + 1
    core = (slice(6, -6),) * 3
    assert abs(float(np.median(result.displacement[core][..., 0])) + 1.5) < 0.4
    assert jacobian_determinant(result.displacement).min() > 0
    assert Registrator(model, config=config, refine=refine).settings()["refine"] == {
        **RefineConfig().to_dict(),
        **{"steps": 40, "learning_rate": 0.1, "full_steps": 5},
        **{"full_fine_steps": 10, "full_reg_weight": 0.5},
    }


@pytest.mark.parametrize("int_steps", [0, 7])
def test_full_resolution_refinement_of_a_downsampled_run(int_steps):
    """A run at half resolution on an odd-sized pair (cropped remainder, padding): the last
    steps against the full-resolution images still recover the shift, on the full grid."""
    moving, fixed = _pair()
    moving, fixed = moving[:, :23, :22], fixed[:, :23, :22]  # odd sizes: remainder, padding
    config = _config(int_steps)
    config.data.downsample = 2
    model = shift_model([0.0, 0.0, 0.0], int_steps=int_steps)
    refine = RefineConfig(steps=40, learning_rate=0.1, full_steps=20)
    result = Registrator(model, config=config, refine=refine).register(moving, fixed)
    assert result.displacement.shape == (*moving.shape, 3)
    history = result.refinement
    assert len(history["loss"]) == 40 + 20 + 1
    core = (slice(6, -6),) * 3
    assert abs(float(np.median(result.displacement[core][..., 0])) + 1.5) < 0.4
    if int_steps:
        assert jacobian_determinant(result.displacement).min() > 0
