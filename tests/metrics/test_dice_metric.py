"""Tests for vxmtf.metrics.dice: hand-counted overlaps and a per-label boolean-mask oracle."""

import math

import numpy as np
import pytest

from vxmtf.metrics import dice

# Hand-built maps. Per label (|A|, |B|, |A ∩ B|):
#   1: (4, 5, 3)   2: (2, 3, 2)   3: (3, 0, 0)   4: (0, 1, 0)
A = np.array(
    [
        [1, 1, 1, 1, 2, 2],
        [0, 0, 3, 3, 3, 0],
    ]
)
B = np.array(
    [
        [1, 1, 1, 2, 2, 2],
        [1, 1, 0, 0, 0, 4],
    ]
)


def naive_dice(a, b, labels):
    """One pair of boolean masks per label."""
    out = {}
    for k in labels:
        in_a, in_b = a == k, b == k
        total = in_a.sum() + in_b.sum()
        out[k] = math.nan if total == 0 else 2 * np.sum(in_a & in_b) / total
    return out


def assert_same(result, expected):
    assert list(result) == list(expected)
    for k, v in expected.items():
        if math.isnan(v):
            assert math.isnan(result[k]), k
        else:
            assert result[k] == pytest.approx(v, rel=1e-12, abs=0), k


def test_hand_counted_overlaps():
    result = dice(A, B)
    assert_same(result, {1: 2 * 3 / (4 + 5), 2: 2 * 2 / (2 + 3), 3: 0.0, 4: 0.0})


def test_result_types_are_python_int_and_float():
    result = dice(A.astype(np.uint8), B.astype(np.uint8))
    assert all(type(k) is int for k in result)
    assert all(type(v) is float for v in result.values())


def test_symmetric():
    assert_same(dice(B, A), dice(A, B))


def test_label_only_in_one_volume_is_zero():
    a = np.array([0, 5, 5, 0])
    b = np.array([0, 0, 0, 0])
    assert dice(a, b) == {5: 0.0}
    assert dice(b, a) == {5: 0.0}


def test_label_absent_from_both_is_nan():
    result = dice(A, B, labels=[2, 7])
    assert list(result) == [2, 7]
    assert result[2] == pytest.approx(2 * 2 / (2 + 3))
    assert math.isnan(result[7])
    # A label below the largest one but absent from both maps.
    a = np.array([0, 1, 3])
    assert math.isnan(dice(a, a, labels=[2])[2])


def test_identical_maps_give_one():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 9, size=(6, 7, 5))
    result = dice(a, a.copy())
    assert list(result) == sorted(set(np.unique(a).tolist()) - {0})
    assert all(v == 1.0 for v in result.values())


def test_labels_subset_keeps_requested_order():
    result = dice(A, B, labels=[4, np.int64(1)])
    assert_same(result, {4: 0.0, 1: 2 * 3 / (4 + 5)})


def test_background_only_gives_empty_result():
    zeros = np.zeros((3, 4), dtype=np.uint8)
    assert dice(zeros, zeros) == {}
    assert dice(np.zeros(0, dtype=int), np.zeros(0, dtype=int)) == {}


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64])
@pytest.mark.parametrize("shape", [(50,), (12, 10), (8, 9, 7)])
def test_matches_boolean_mask_oracle_on_random_maps(dtype, shape):
    rng = np.random.default_rng(len(shape))
    a = rng.integers(0, 12, size=shape).astype(dtype)
    b = a.copy()
    flip = rng.random(shape) < 0.4
    b[flip] = rng.integers(0, 14, size=int(flip.sum())).astype(dtype)
    present = sorted((set(np.unique(a).tolist()) | set(np.unique(b).tolist())) - {0})
    assert_same(dice(a, b), naive_dice(a, b, present))
    requested = [13, 3, 20, 1]
    assert_same(dice(a, b, labels=requested), naive_dice(a, b, requested))


def test_large_label_values_match_oracle():
    # FreeSurfer-like label values large enough that the joint histogram is not used.
    rng = np.random.default_rng(1)
    values = np.array([0, 2, 17, 2035, 70_000, 1_000_000])
    a = values[rng.integers(0, values.size, size=(9, 8, 7))]
    b = values[rng.integers(0, values.size, size=(9, 8, 7))]
    b[:4] = a[:4]
    assert_same(dice(a, b), naive_dice(a, b, values[1:].tolist()))
    assert_same(dice(a, b, labels=[5, 2035]), naive_dice(a, b, [5, 2035]))


def test_mixed_dtypes_and_bool_maps():
    assert_same(dice(A.astype(np.uint8), B.astype(np.int64)), dice(A, B))
    a = np.array([True, True, False, True])
    b = np.array([True, False, False, False])
    assert dice(a, b) == {1: 2 * 1 / (3 + 1)}


def test_integral_floats_are_accepted():
    assert_same(dice(A.astype(np.float32), B.astype(np.float64)), dice(A, B))


def test_non_integral_floats_raise_type_error():
    with pytest.raises(TypeError, match="labels_b.dtype=float64"):
        dice(A, B + 0.5)
    with pytest.raises(TypeError, match="labels_a"):
        dice(np.array([1.0, np.nan]), np.array([1, 1]))


def test_non_numeric_raises_type_error():
    with pytest.raises(TypeError, match="labels_a.dtype"):
        dice(np.array(["a", "b"]), np.array([1, 2]))


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError) as info:
        dice(np.zeros((4, 5), dtype=int), np.zeros((5, 4), dtype=int))
    message = str(info.value)
    assert "labels_a.shape=(4, 5)" in message
    assert "labels_b.shape=(5, 4)" in message


def test_negative_labels_raise_value_error():
    with pytest.raises(ValueError, match=r"min\(labels_b\)=-1"):
        dice(np.array([0, 1]), np.array([-1, 1]))


@pytest.mark.parametrize("bad", [[0], [1, -2]])
def test_non_positive_requested_labels_raise_value_error(bad):
    with pytest.raises(ValueError, match="positive labels"):
        dice(A, B, labels=bad)


@pytest.mark.parametrize("bad", [[1.0], [True], ["1"]])
def test_non_integer_requested_labels_raise_type_error(bad):
    with pytest.raises(TypeError, match="Expected `labels` to hold integers"):
        dice(A, B, labels=bad)
