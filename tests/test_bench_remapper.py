"""`benchmarks.bench_remapper`: the table (no TensorFlow work) and, marked slow, the
alternating measurement on a tiny shape (about 30 s on an idle 2-core machine: every setting
traces and optimizes a training step)."""

import re

import pytest

from benchmarks.bench_remapper import machine, measure, op_diff, table
from vxmtf_cli import onednn_enabled

HEAD = (
    "| shape | int_steps | default median s | off median s | off/default "
    "| fused conv default | fused conv off | remapper msgs | re-instantiated |"
)


def test_table_and_op_diff():
    def setting(median, fused, messages):
        counts = {"fused_conv3d": fused, "onednn_fused_conv3d": fused}
        return {"median": median, "messages": ["remapper failed: ..."] * messages, **counts}

    result = {"default": setting(2.0, 12, 1), "off": setting(2.5, 0, 0)}
    result |= {"ratio": {"default": 1.0, "off": 1.25}, "reinstantiated": 0}
    lines = table({((80, 96, 112), 7): result}, ("default", "off")).splitlines()
    assert lines == [
        HEAD,
        "|" + "---|" * 9,
        "| 80x96x112 | 7 | 2.000 | 2.500 | 1.250 | 12/12 | 0/0 | default:1 off:0 | 0 |",
    ]
    assert op_diff({"Conv3D": 12, "BiasAdd": 12}, {"_FusedConv3D": 12}) == (
        "BiasAdd 12/0, Conv3D 12/0, _FusedConv3D 0/12"
    )
    assert op_diff({"Conv3D": 1}, {"Conv3D": 1}) == "none"


@pytest.mark.slow
def test_measure_alternates_the_settings_and_tables_them():
    shape, settings = (16, 16, 16), ("default", "off")
    result = measure(shape, int_steps=0, rounds=2, settings=settings)

    for name in settings:
        assert len(result[name]["times"]) == 2
        assert result[name]["median"] > 0
        assert result[name]["instantiations"] > 0
    # Remapping fuses each Conv3D that feeds a BiasAdd with it, and oneDNN runs the fused
    # kernels; without it, none is fused. (The decoder's skip convolutions, summed with a
    # transposed convolution before their bias, stay plain either way.) TensorFlow fuses
    # Conv3D only for oneDNN, which is off by default on some CPUs (AMD's, for TensorFlow
    # 2.21) unless TF_ENABLE_ONEDNN_OPTS=1: there nothing is fused in either setting.
    fused = result["default"]["fused_conv3d"]
    assert fused == result["default"]["onednn_fused_conv3d"]
    assert (fused > 0) == bool(onednn_enabled()), (fused, onednn_enabled())
    assert result["off"]["fused_conv3d"] == result["off"]["onednn_fused_conv3d"] == 0
    assert result["off"]["plain_conv3d"] == (
        result["default"]["fused_conv3d"] + result["default"]["plain_conv3d"]
    )
    # Setting the option before each call selects the graph already instantiated for it.
    assert result["reinstantiated"] == 0
    assert result["ratio"]["default"] == 1.0

    lines = table({(shape, 0): result}, settings).splitlines()
    assert lines[0] == HEAD
    assert lines[1] == "|" + "---|" * 9
    fused_cell = r"[1-9]\d*/[1-9]\d*" if onednn_enabled() else "0/0"
    assert re.fullmatch(
        r"\| 16x16x16 \| 0 \| \d+\.\d{3} \| \d+\.\d{3} \| \d+\.\d{3} \| " + fused_cell + " "
        r"\| 0/0 \| default:\d+ off:0 \| 0 \|",
        lines[2],
    ), lines[2]
    assert set(machine()) >= {
        "cpu",
        "cores",
        "tensorflow",
        "TF_ENABLE_ONEDNN_OPTS",
        "TF_CPP_MIN_LOG_LEVEL",
    }
