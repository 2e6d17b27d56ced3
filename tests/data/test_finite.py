"""Tests for vxmtf.data.finite.check_finite."""

import re

import numpy as np
import pytest

from vxmtf.data.finite import check_finite


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_finite_arrays_pass(dtype):
    check_finite(np.linspace(-1e3, 1e3, 24, dtype=dtype).reshape(2, 3, 4), "x")
    check_finite(np.zeros((0, 3), dtype), "empty")


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.bool_])
def test_integer_and_boolean_arrays_are_always_finite(dtype):
    check_finite(np.ones((4, 4), dtype), "labels")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_counts_the_non_finite_voxels_and_names_the_input(bad):
    array = np.zeros((4, 5, 6), np.float32)
    array.flat[[0, 7, 119]] = bad
    message = "scan.nii.gz: 3 of 120 voxels are not finite (NaN or Inf); expected finite"
    with pytest.raises(ValueError, match=re.escape(message)):
        check_finite(array, "scan.nii.gz")


def test_mixed_nan_and_inf_are_counted_together():
    array = np.array([[np.nan, 1.0], [np.inf, -np.inf]])
    with pytest.raises(ValueError, match=re.escape("`moving`: 3 of 4 voxels")):
        check_finite(array, "`moving`")
