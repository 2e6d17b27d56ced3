"""The shipped model `pretrained/vxm_lpba40.keras`: it loads with its preprocessing, and registers
a held-out LPBA40 pair out of the box through `python -m vxmtf.register` and `evaluate.dice`.

Oracles: Dice and the Jacobian determinant are recomputed here with NumPy (`np.gradient` central
differences), independently of `vxmtf.metrics`.
"""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from vxmtf.networks import VxmDense
from vxmtf.registration import Registrator

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "pretrained" / "vxm_lpba40.keras"
SEG_MODEL = ROOT / "pretrained" / "vxm_lpba40_seg.keras"
CARD = ROOT / "pretrained" / "README.md"
#: Validation subject 7 onto the atlas (subject 1): a `registration_val` pair, never trained on.
MOVING, FIXED = "LPBA40_0007_0000.nii.gz", "LPBA40_0001_0000.nii.gz"


def mean_dice(a, b):
    scores = []
    for label in np.union1d(np.unique(a), np.unique(b)):
        if label == 0:
            continue
        x, y = a == label, b == label
        scores.append(2 * np.logical_and(x, y).sum() / (x.sum() + y.sum()))
    return float(np.mean(scores))


def folded_share(displacement):
    """Share of voxels with det(I + grad u) <= 0, central differences (one-sided at borders)."""
    grads = [np.stack(np.gradient(displacement[..., c]), -1) for c in range(3)]
    jacobian = np.stack(grads, -2) + np.eye(3)  # (*S, 3, 3): d(x + u)_c / dx_k
    return float((np.linalg.det(jacobian) <= 0).mean())


@pytest.mark.parametrize("model", [MODEL, SEG_MODEL], ids=["unsupervised", "semi-supervised"])
def test_shipped_model_loads_with_its_preprocessing(model):
    assert model.is_file(), f"pretrained/{model.name} is missing"
    assert model.stat().st_size < 5e6
    registrator = Registrator(model)
    assert registrator.config_path == model.with_suffix(".config.json")
    assert (registrator.downsample, registrator.normalize) == (2, "minmax")
    expected_seg_weight = 2.0 if model == SEG_MODEL else 0.0  # the model card's commands
    assert registrator.config.train.seg_weight == expected_seg_weight
    import keras

    assert isinstance(keras.models.load_model(model, compile=False), VxmDense)
    card = CARD.read_text()
    for needed in ("python -m train", "LPBA40", "Shattuck", "terms", "Dice", model.name):
        assert needed in card, needed
    assert "56-structure" in card  # the semi-supervised model assumes LPBA40's protocol


def test_registers_a_held_out_pair_from_nifti(lpba40_dir, tmp_path):
    from vxmtf.register import main

    images, labels = lpba40_dir / "imagesTr", lpba40_dir / "labelsTr"
    out = {name: tmp_path / f"{name}.nii.gz" for name in ("moved", "warp", "moved_labels")}
    code = main(
        ["--model", str(MODEL), "--moving", str(images / MOVING), "--fixed", str(images / FIXED),
         "--moved", str(out["moved"]), "--warp", str(out["warp"]),
         "--moving-labels", str(labels / MOVING), "--moved-labels", str(out["moved_labels"])]
    )  # fmt: skip
    assert code == 0
    fixed_image = nib.load(images / FIXED)
    moved_labels = nib.load(out["moved_labels"])
    np.testing.assert_allclose(moved_labels.affine, fixed_image.affine)
    fixed_labels = np.asarray(nib.load(labels / FIXED).dataobj)
    moving_labels = np.asarray(nib.load(labels / MOVING).dataobj)
    before = mean_dice(moving_labels, fixed_labels)
    after = mean_dice(np.asarray(moved_labels.dataobj), fixed_labels)
    assert 0.45 < before < 0.6  # the affine-only overlap the data README states (about 0.52)
    assert after > before + 0.05, (before, after)
    displacement = nib.load(out["warp"]).get_fdata(dtype=np.float32)
    assert displacement.shape == (*fixed_image.shape, 3)
    assert folded_share(displacement) < 0.01


def test_evaluate_dice_runs_out_of_the_box(lpba40_dir, tmp_path, monkeypatch):
    from evaluate.dice import main

    monkeypatch.chdir(ROOT)  # the shipped config names the data as ../shared/data/LPBA40/...
    assert main(["--model", str(MODEL), "--max-pairs", "1", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["dice_after_mean"] > summary["dice_before_mean"] + 0.05
