"""`vxmtf.checks`: the shared argument validators."""

import re

import numpy as np
import pytest

from vxmtf.checks import check_bool, check_int, check_positive, is_int


@pytest.mark.parametrize("value", [0, 7, -3, np.int64(5), np.uint8(2)])
def test_is_int_accepts_python_and_numpy_integers(value):
    assert is_int(value)


@pytest.mark.parametrize("value", [True, False, np.bool_(True), 4.0, np.float32(4), "4", None])
def test_is_int_rejects_bools_floats_and_strings(value):
    assert not is_int(value)


def test_check_int_returns_a_python_int():
    assert check_int("steps", 7) == 7
    value = check_int("steps", np.int64(3), minimum=0)
    assert value == 3 and type(value) is int


@pytest.mark.parametrize("value", [True, False, 4.0, "4", None, [4]])
def test_check_int_rejects_non_integers(value):
    with pytest.raises(ValueError, match=re.escape(f"Received: steps={value!r}")):
        check_int("steps", value, minimum=0)


def test_check_int_enforces_the_minimum():
    assert check_int("rows", 1, minimum=1) == 1
    with pytest.raises(ValueError) as info:
        check_int("rows", 0, minimum=1)
    assert str(info.value) == "`rows` must be an int >= 1. Received: rows=0"
    assert check_int("offset", -5) == -5  # no minimum: any int


def test_check_int_optional_and_hint():
    assert check_int("rows", None, minimum=1, optional=True) is None
    with pytest.raises(ValueError) as info:
        check_int("rows", -1, minimum=1, optional=True, hint="rows per chunk")
    assert str(info.value) == (
        "`rows` must be None or an int >= 1 (rows per chunk). Received: rows=-1"
    )
    with pytest.raises(ValueError, match="Received: rows=None"):
        check_int("rows", None, minimum=1)


def test_check_bool():
    assert check_bool("tiled", True) is True
    assert check_bool("tiled", False) is False
    for value in (1, 0, "no", None, np.bool_(True)):
        with pytest.raises(TypeError) as info:
            check_bool("tiled", value)
        assert str(info.value) == f"`tiled` must be True or False. Received: tiled={value!r}"
    with pytest.raises(TypeError, match=r"True or False \(a flag\)\. Received: flag='yes'"):
        check_bool("flag", "yes", hint="a flag")


def test_check_positive_returns_a_float():
    for value in (2, 0.5, np.float32(1e-5), np.int32(3)):
        result = check_positive("eps", value)
        assert type(result) is float and result == pytest.approx(float(value))


@pytest.mark.parametrize("value", [0, -1, 0.0, -1e-9, True, False, float("nan"), float("inf")])
def test_check_positive_rejects_non_positive_bools_and_non_finite(value):
    with pytest.raises(ValueError) as info:
        check_positive("eps", value)
    assert str(info.value) == f"`eps` must be a positive number. Received: eps={value!r}"


def test_check_positive_unit_optional_and_hint():
    assert check_positive("loss_mult", None, optional=True) is None
    with pytest.raises(ValueError, match=r"None or a positive number\. Received: loss_mult=0"):
        check_positive("loss_mult", 0, optional=True)
    with pytest.raises(ValueError, match=r"a positive number of bytes\. Received: budget='1'"):
        check_positive("budget", "1", unit="bytes")
    with pytest.raises(ValueError, match=r"positive number \(keeps it finite\)\. Received: e=-1"):
        check_positive("e", -1, hint="keeps it finite")
