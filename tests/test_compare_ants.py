"""`benchmarks.compare_ants`: ANTs SyN scored as evaluate.dice scores VoxelMorph (needs antspyx)."""

import csv
import json

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("ants", reason="antspyx (the `bench` extra) is not installed")

from benchmarks.compare_ants import AntsRegistrator, comparison_table, main  # noqa: E402

SHAPE = (24, 24, 24)
SHIFT = 2  # voxels along axis 0: the moving scan's object sits SHIFT voxels further along


def blob_scan(offset):
    """A smooth bright ellipsoid made of two labelled halves, shifted by `offset` on axis 0."""
    grid = np.stack(np.meshgrid(*(np.arange(n, dtype=float) for n in SHAPE), indexing="ij"), -1)
    centre = np.array([11.5 + offset, 11.5, 11.5])
    radius = np.sqrt((((grid - centre) / [7.0, 6.0, 5.0]) ** 2).sum(-1))
    image = np.clip(1.2 - radius, 0, 1).astype(np.float32)
    labels = np.where(radius < 1, np.where(grid[..., 1] < 11.5, 1, 2), 0).astype(np.uint8)
    return image, labels


def test_recovers_a_known_shift():
    fixed, fixed_labels = blob_scan(0)
    moving, moving_labels = blob_scan(SHIFT)
    ants = AntsRegistrator(downsample=1, cc_radius=2, iterations=(40, 20), threads=2)
    result = ants.register(moving, fixed)
    assert result.displacement.shape == (*SHAPE, 3)
    inside = fixed_labels > 0
    # moved[x] = moving[x + u(x)] = fixed[x + u(x) - SHIFT]: u is about +SHIFT along axis 0.
    assert 1.0 < float(np.median(result.displacement[inside][:, 0])) < 3.0
    assert float(np.abs(np.median(result.displacement[inside][:, 1:], axis=0)).max()) < 0.5
    moved_labels = ants.warp_labels(moving_labels, result.displacement)
    assert moved_labels.dtype == moving_labels.dtype
    assert set(np.unique(moved_labels)) <= {0, 1, 2}

    def overlap(a, b):
        return 2 * np.sum((a > 0) & (b > 0)) / (np.sum(a > 0) + np.sum(b > 0))

    assert overlap(moved_labels, fixed_labels) > overlap(moving_labels, fixed_labels) + 0.1


def test_command_line_writes_evaluate_dice_files_and_comparison(tmp_path):
    entries = []
    for index, offset in enumerate((0, SHIFT)):
        image, labels = blob_scan(offset)
        for kind, array in (("images", image), ("labels", labels)):
            (tmp_path / kind).mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(array, np.eye(4)), tmp_path / kind / f"s{index}.nii.gz")
        entries.append({"image": f"images/s{index}.nii.gz", "label": f"labels/s{index}.nii.gz"})
    description = {
        "training": entries,
        "registration_val": [{"fixed": entries[0]["image"], "moving": entries[1]["image"]}],
    }
    (tmp_path / "data.json").write_text(json.dumps(description))
    out = tmp_path / "out"
    args = ["--data", str(tmp_path / "data.json"), "--out", str(out), "--downsample", "2"]
    assert main([*args, "--iterations", "30", "10", "--threads", "2"]) == 0
    with open(out / "dice.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:6] == ["pair", "moving", "fixed", "label", "dice_before", "dice_after"]
    assert list(rows[0])[6:] == ["hd95_before", "hd95_after", "structure"]
    assert sorted(int(r["label"]) for r in rows) == [1, 2]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dice_after_mean"] > summary["dice_before_mean"]
    # Compare with a method folder (here the same results under another name), no new ANTs run.
    assert main([*args, "--skip-ants", "--method", f"again={out}"]) == 0
    table = (out / "comparison.md").read_text()
    assert "| again |" in table and "| ANTs SyNOnly (CC) |" in table and "affine only" in table
    assert (out / "comparison_boxplot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main([*args, "--skip-ants", "--method", "no-equals-sign"]) == 2
    # Resumable per pair: a pair already done is read back, not registered again.
    done = out / "pairs" / "0000.json"
    part = json.loads(done.read_text())
    for record in part["records"]:
        record["dice_after"] = 0.125
    part["pairs"][0]["dice_after"] = 0.125
    done.write_text(json.dumps(part))
    assert main([*args, "--iterations", "30", "10"]) == 0
    assert json.loads((out / "summary.json").read_text())["dice_after_mean"] == 0.125


def test_table_formats_missing_values():
    summary = {
        "dice_before_mean": 0.5,
        "dice_before_std": 0.1,
        "dice_after_mean": 0.7,
        "dice_after_std": 0.05,
        "folding_fraction_mean": None,
        "sdlogj_mean": 0.2,
        "seconds_per_pair": 1.25,
    }
    table = comparison_table({"m": summary})
    assert "| m | 0.700 ± 0.050 | n/a | 0.200 | 1.25 |" in table
    assert "| affine only (before) | 0.500 ± 0.100 |" in table
