"""`python -m evaluate.dice` (its `main`) with a saved model whose displacement is a known shift.

The model moves every image by one voxel along axis 0 (`moved[x] = moving[x + (1, 0, 0)]`); the
pairs' moving label maps are the fixed ones moved by two voxels, so the expected Dice of each box
follows from its length: `(L - 2) / L` before and `(L - 1) / L` after.
"""

import csv
import json
import struct

import matplotlib.image
import nibabel as nib
import numpy as np
import pytest

from evaluate.dice import main
from vxmtf.networks.vxm_dense import VxmDense

SHAPE = (20, 14, 11)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    model = VxmDense((16, 16, 16), enc_features=(4, 4), dec_features=(4, 4, 4), int_steps=0)
    flow = model.get_layer("flow")
    kernel, _ = flow.get_weights()
    flow.set_weights([np.zeros_like(kernel), np.array([1.0, 0.0, 0.0], np.float32)])
    path = tmp_path_factory.mktemp("model") / "shift.keras"
    model.save(path)
    return path


def _write_pair(folder, index, seed):
    """A labelled pair of NIfTI files: boxes 1 (6 voxels long on axis 0) and 2 (4 long); the
    moving maps are the fixed ones moved by 2 voxels; images brighter inside the boxes."""
    fixed = np.zeros(SHAPE, np.uint8)
    fixed[4:10, 3:9, 2:7] = 1
    fixed[12:16, 8:13, 4:10] = 2
    moving = np.roll(fixed, 2, axis=0)
    rng = np.random.default_rng(seed)
    names = {}
    for role, labels in (("moving", moving), ("fixed", fixed)):
        image = 40.0 * labels + 100.0 * (labels > 0) + rng.normal(20.0, 5.0, SHAPE)
        names[role] = folder / f"{role}{index}.nii.gz"
        names[f"{role}_labels"] = folder / f"{role}{index}_seg.nii.gz"
        nib.save(nib.Nifti1Image(image.astype(np.float32), np.eye(4)), names[role])
        nib.save(nib.Nifti1Image(labels, np.eye(4)), names[f"{role}_labels"])
    return names


@pytest.fixture(scope="module")
def pairs_csv(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs")
    rows = [_write_pair(folder, i, seed=i) for i in range(2)]
    path = folder / "pairs.csv"
    columns = ["moving", "fixed", "moving_labels", "fixed_labels"]
    lines = [",".join(columns)] + [",".join(row[c].name for c in columns) for row in rows]
    path.write_text("\n".join(lines) + "\n")  # relative paths: found next to the CSV
    return path


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])  # width, height


def test_pairs_csv_with_figures(model_path, pairs_csv, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["--model", str(model_path), "--pairs", str(pairs_csv), "--out", str(out)]
    assert main([*argv, "--labels", "1", "2", "7", "--figures", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "pairs                      2" in printed and "dice_boxplot.png" in printed

    with open(out / "dice.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["pair"], r["label"]) for r in rows] == [
        (p, k) for p in ("0", "1") for k in ("1", "2", "7")
    ]
    assert rows[0]["moving"] == str(pairs_csv.parent / "moving0.nii.gz")
    for row in rows:
        length = {"1": 6, "2": 4, "7": None}[row["label"]]
        if length is None:
            assert (row["dice_before"], row["dice_after"]) == ("nan", "nan")
        else:
            assert float(row["dice_before"]) == pytest.approx((length - 2) / length, abs=1e-6)
            assert float(row["dice_after"]) == pytest.approx((length - 1) / length, abs=1e-6)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["pairs"] == 2 and summary["data"] == str(pairs_csv)
    assert summary["model"] == str(model_path)
    assert summary["dice_before_mean"] == pytest.approx((4 / 6 + 2 / 4) / 2)
    assert summary["dice_after_mean"] == pytest.approx((5 / 6 + 3 / 4) / 2)
    assert summary["dice_after_std"] == pytest.approx(0.0, abs=1e-12)
    assert summary["dice_per_label"] == {
        "1": pytest.approx(5 / 6),
        "2": pytest.approx(3 / 4),
        "7": None,
    }
    assert summary["folding_fraction_mean"] == 0.0

    for name, (min_width, min_height) in {
        "dice_boxplot.png": (400, 250),
        "example_pair.png": (1000, 250),
    }.items():
        path = out / name
        width, height = _png_size(path)
        assert width >= min_width and height >= min_height, (name, width, height)
        assert width < 4000 and height < 2000, (name, width, height)
        pixels = matplotlib.image.imread(path)  # decodes the whole file
        assert pixels.shape[:2] == (height, width)
        assert pixels[..., :3].std() > 0.05, name  # not a blank canvas


def test_synthetic_pairs_when_no_data(model_path, tmp_path, capsys):
    """No data and no config.json: held-back synthetic pairs of the model's input shape."""
    out = tmp_path / "eval"
    argv = ["--model", str(model_path), "--out", str(out), "--max-pairs", "2", "--no-progress"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pairs"] == 2
    assert "synthetic" in summary["data"] and "(16, 16, 16)" in summary["data"]
    assert 0.0 <= summary["dice_before_mean"] <= 1.0
    assert summary["sdlogj_mean"] == pytest.approx(0.0, abs=1e-6)
    assert "pairs                      2" in capsys.readouterr().out


def test_missing_model(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "best.keras"
    assert main(["--model", str(missing), "--out", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err
    assert f"Model not found: {missing}" in err
    assert not (tmp_path / "eval").exists()


def test_atlas_needs_data(model_path, tmp_path, capsys):
    argv = ["--model", str(model_path), "--atlas", "a.nii.gz", "--out", str(tmp_path)]
    assert main(argv) == 2
    assert "An atlas needs a data set" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["-1", "0", "two"])
def test_max_pairs_must_be_a_positive_integer(model_path, tmp_path, capsys, value):
    argv = ["--model", str(model_path), "--out", str(tmp_path / "eval"), "--max-pairs", value]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--max-pairs" in err and f"Received: {value}" in err
    assert "num_val" not in err
    assert not (tmp_path / "eval").exists()


def test_missing_atlas_file_is_named(model_path, pairs_csv, tmp_path, capsys):
    missing = tmp_path / "atlas.nii.gz"
    argv = ["--model", str(model_path), "--data", str(pairs_csv.parent), "--atlas", str(missing)]
    assert main([*argv, "--out", str(tmp_path / "eval"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"The atlas file does not exist: {missing}" in err
    assert "No label map" not in err


def test_non_finite_image_is_refused_naming_the_file(model_path, tmp_path, capsys):
    names = _write_pair(tmp_path, 0, seed=0)
    image = nib.load(names["moving"])
    array = np.asanyarray(image.dataobj).copy()
    array[1, 2, 3], array[4, 5, 6] = np.inf, np.nan
    nib.save(nib.Nifti1Image(array, np.eye(4)), names["moving"])
    columns = ["moving", "fixed", "moving_labels", "fixed_labels"]
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(",".join(str(names[c]) for c in columns) + "\n")
    argv = ["--model", str(model_path), "--pairs", str(pairs), "--out", str(tmp_path / "eval")]
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{names['moving']}: 2 of {array.size} voxels are not finite (NaN or Inf)" in err
    assert not (tmp_path / "eval").exists()
