"""`vxmtf.evaluation` with a model whose displacement is a known whole-voxel shift.

The flow head of a tiny `VxmDense` gets a zero kernel and bias `(1, 0, 0)`: every pair is
registered by `moved[x] = moving[x + (1, 0, 0)]`, i.e. `np.roll(moving, -1, axis=0)` for label
maps kept away from the border. Dice values are computed here with boolean NumPy masks (not
`vxmtf.metrics`) and, for the boxes, in closed form.
"""

import csv
import json
import math

import numpy as np
import pytest
from helpers import shift_model
from scipy import ndimage
from scipy.spatial.distance import cdist

from vxmtf import evaluation
from vxmtf.registration import Registrator

SHAPE = (20, 14, 11)  # not the model's 16^3; padded to (20, 16, 12) and cropped back
#: Labels scored: 1 and 2 in both maps, 4 moving only, 5 fixed only, 7 in neither.
LABELS = [1, 2, 4, 5, 7]


@pytest.fixture(scope="module")
def registrator():
    return Registrator(shift_model((1.0, 0.0, 0.0)))


def labelled_pair(offset, seed=0):
    """Fixed labels (boxes 1, 2, 5) and moving labels = boxes 1, 2 moved by `offset` voxels
    along axis 0, plus box 4; images are noise (the model ignores them)."""
    fixed = np.zeros(SHAPE, np.int32)
    fixed[4:10, 3:9, 2:7] = 1  # 6 voxels long along axis 0
    fixed[12:16, 9:14, 4:10] = 2  # 4 voxels long
    moving = np.roll(fixed, offset, axis=0)
    fixed[1:3, 1:3, 9:11] = 5
    moving[14:17, 1:4, 1:4] = 4
    rng = np.random.default_rng(seed)
    return {
        "moving": rng.uniform(size=SHAPE).astype(np.float32),
        "fixed": rng.uniform(size=SHAPE).astype(np.float32),
        "moving_labels": moving,
        "fixed_labels": fixed,
    }


def dice_by_hand(a, b, label):
    in_a, in_b = a == label, b == label
    total = int(in_a.sum()) + int(in_b.sum())
    return math.nan if total == 0 else 2.0 * int((in_a & in_b).sum()) / total


def expected(pair):
    """Per-label Dice before and after, with the moved labels given by np.roll."""
    moved = np.roll(pair["moving_labels"], -1, axis=0)
    before = {k: dice_by_hand(pair["moving_labels"], pair["fixed_labels"], k) for k in LABELS}
    after = {k: dice_by_hand(moved, pair["fixed_labels"], k) for k in LABELS}
    return before, after


def hd95_by_brute_force(a, b, label):
    """Oracle: boundary voxels (the mask minus its face-connected erosion), every pairwise
    distance, the 95th percentile of each direction's minima, the larger of the two."""
    surfaces = []
    for labels in (a, b):
        mask = labels == label
        inner = ndimage.binary_erosion(mask, ndimage.generate_binary_structure(3, 1))
        surfaces.append(np.argwhere(mask & ~inner).astype(float))
    if not len(surfaces[0]) and not len(surfaces[1]):
        return math.nan
    if not len(surfaces[0]) or not len(surfaces[1]):
        return math.inf
    distances = cdist(*surfaces)
    return max(np.percentile(distances.min(axis=1), 95), np.percentile(distances.min(axis=0), 95))


def same(actual: float, wanted: float) -> bool:
    return math.isnan(actual) if math.isnan(wanted) else actual == pytest.approx(wanted, abs=1e-12)


def assert_same(actual: dict, wanted: dict):
    assert list(actual) == list(wanted)
    for label, value in wanted.items():
        assert same(actual[label], value), (label, actual[label], value)


def test_evaluate_pair_dice_before_and_after(registrator):
    pair = labelled_pair(offset=2)
    before, after, metrics = evaluation.evaluate_pair(registrator, pair, labels=LABELS)
    want_before, want_after = expected(pair)
    assert_same(before, want_before)
    assert_same(after, want_after)
    moved = np.roll(pair["moving_labels"], -1, axis=0)
    for label in LABELS:
        want = hd95_by_brute_force(pair["moving_labels"], pair["fixed_labels"], label)
        assert same(metrics["hd95_before"][label], want), label
        want = hd95_by_brute_force(moved, pair["fixed_labels"], label)
        assert same(metrics["hd95_after"][label], want), label
    assert metrics["hd95_after"][4] == metrics["hd95_after"][5] == math.inf  # in one map only
    # Closed form for the boxes: lengths 6 and 4 along axis 0, offset 2, then 1 after.
    assert before[1] == pytest.approx(4 / 6) and after[1] == pytest.approx(5 / 6)
    assert before[2] == pytest.approx(2 / 4) and after[2] == pytest.approx(3 / 4)
    assert before[4] == after[4] == before[5] == after[5] == 0.0
    assert math.isnan(before[7]) and math.isnan(after[7])

    np.testing.assert_array_equal(
        metrics["moved_labels"], np.roll(pair["moving_labels"], -1, axis=0)
    )
    assert metrics["moved_labels"].dtype == pair["moving_labels"].dtype
    np.testing.assert_allclose(metrics["displacement"], np.broadcast_to([1, 0, 0], (*SHAPE, 3)))
    # A constant field: det J = 1 everywhere.
    assert metrics["folding_fraction"] == 0.0
    assert metrics["sdlogj"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["seconds"] > 0


def test_default_labels_are_those_present(registrator):
    before, after, _ = evaluation.evaluate_pair(registrator, labelled_pair(offset=2))
    assert list(before) == list(after) == [1, 2, 4, 5]  # 7 absent from both: not scored


def _sources(offsets):
    return [
        evaluation.PairSource(f"m{i}.nii.gz", f"f{i}.nii.gz", lambda o=o, i=i: labelled_pair(o, i))
        for i, o in enumerate(offsets)
    ]


@pytest.fixture(scope="module")
def result(registrator):
    return evaluation.evaluate(registrator, _sources([2, 3]), labels=LABELS, progress=False)


def test_evaluate_records_and_summary(result):
    pairs = [labelled_pair(2, 0), labelled_pair(3, 1)]
    wanted = [expected(pair) for pair in pairs]
    assert len(result.records) == 2 * len(LABELS)
    assert [(r["pair"], r["label"]) for r in result.records] == [
        (p, k) for p in range(2) for k in LABELS
    ]
    for record in result.records:
        before, after = wanted[record["pair"]]
        assert record["moving"] == f"m{record['pair']}.nii.gz"
        for key, values in (("dice_before", before), ("dice_after", after)):
            assert same(record[key], values[record["label"]]), record

    # Per pair: the mean over labels 1, 2, 4, 5 (7 has no Dice and is left out).
    pair_before = [np.mean([b[k] for k in (1, 2, 4, 5)]) for b, _ in wanted]
    pair_after = [np.mean([a[k] for k in (1, 2, 4, 5)]) for _, a in wanted]
    assert [p["dice_before"] for p in result.pairs] == pytest.approx(pair_before)
    assert [p["dice_after"] for p in result.pairs] == pytest.approx(pair_after)
    # Offset 3: box 1 goes from 3/6 to 4/6, box 2 from 1/4 to 2/4.
    assert pair_before[1] == pytest.approx((3 / 6 + 1 / 4) / 4)

    summary = result.summary(model="m.keras", data="pairs.csv")
    assert summary["pairs"] == 2
    assert summary["dice_before_mean"] == pytest.approx(np.mean(pair_before))
    assert summary["dice_before_std"] == pytest.approx(np.std(pair_before))
    assert summary["dice_after_mean"] == pytest.approx(np.mean(pair_after))
    assert summary["dice_after_std"] == pytest.approx(np.std(pair_after))
    assert summary["dice_before_std"] > 0
    assert summary["dice_per_label"]["1"] == pytest.approx((5 / 6 + 4 / 6) / 2)
    assert summary["dice_per_label_before"]["2"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert summary["dice_per_label"]["7"] is None  # NaN has no JSON form
    assert summary["folding_fraction_mean"] == 0.0
    assert summary["sdlogj_mean"] == pytest.approx(0.0, abs=1e-6)
    # Timing leaves out the first pair (tracing, warm-up).
    assert summary["seconds_per_pair"] == pytest.approx(result.pairs[1]["seconds"])
    assert summary["timing_excludes_first_pair"] is True


def test_write_results_files(result, tmp_path):
    summary = evaluation.write_results(result, tmp_path, model="m.keras", data="pairs.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dice.csv", "summary.json"]

    with open(tmp_path / "dice.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    # The columns of earlier versions first, then HD95 (mm) and the structure's name.
    assert rows[0][:6] == ["pair", "moving", "fixed", "label", "dice_before", "dice_after"]
    assert rows[0][6:] == ["hd95_before", "hd95_after", "structure"]
    assert len(rows) == 1 + 2 * len(LABELS)
    first = dict(zip(rows[0], rows[1], strict=True))
    pair = labelled_pair(2, 0)
    moved = np.roll(pair["moving_labels"], -1, axis=0)
    assert first == {
        "pair": "0",
        "moving": "m0.nii.gz",
        "fixed": "f0.nii.gz",
        "label": "1",
        "dice_before": f"{4 / 6:.6f}",
        "dice_after": f"{5 / 6:.6f}",
        "hd95_before": f"{hd95_by_brute_force(pair['moving_labels'], pair['fixed_labels'], 1):.6f}",
        "hd95_after": f"{hd95_by_brute_force(moved, pair['fixed_labels'], 1):.6f}",
        "structure": "",
    }
    absent = [r for r in rows[1:] if r[3] == "7"]
    assert [r[4:6] for r in absent] == [["nan", "nan"]] * 2
    assert [r[6:8] for r in rows[1:] if r[3] == "4"] == [["inf", "inf"]] * 2

    def no_constants(name):
        raise AssertionError(f"summary.json is not strict JSON: {name}")

    text = (tmp_path / "summary.json").read_text()
    loaded = json.loads(text, parse_constant=no_constants)
    assert loaded == summary
    required = {
        "pairs",
        "dice_before_mean",
        "dice_before_std",
        "dice_after_mean",
        "dice_after_std",
        "dice_per_label",
        "folding_fraction_mean",
        "sdlogj_mean",
        "seconds_per_pair",
    }
    assert required <= set(loaded)
    assert set(loaded["dice_per_label"]) == {"1", "2", "4", "5", "7"}

    table = evaluation.format_summary(summary)
    assert "       7      nan      nan" in table and "pairs                      2" in table
