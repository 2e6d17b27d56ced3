"""`benchmarks.bench_recompute`: argument parsing and the report (no TensorFlow work)."""

import argparse

import pytest

from benchmarks.bench_recompute import markdown, parse_shape


def test_parse_shape():
    assert parse_shape("80x96x112") == (80, 96, 112)
    assert parse_shape("32x48") == (32, 48)
    for bad in ("80", "80x96x112x4", "80xax112", "0x16x16"):
        with pytest.raises(argparse.ArgumentTypeError, match=f"Received: '{bad}'"):
            parse_shape(bad)


def test_markdown_reports_memory_per_process_and_the_alternating_times():
    def memory(recompute, peak, times):
        return {
            "kind": "memory",
            "shape": [80, 96, 112],
            "int_steps": 0,
            "recompute": recompute,
            "peak_gb": peak,
            "times": times,
            "losses": [-0.05],
        }

    results = [
        memory(False, 2.26, [5.0, 6.0, 7.0]),
        memory(True, 1.84, [5.0, 5.5]),
        {"kind": "time", "shape": [80, 96, 112], "int_steps": 0, "recompute": True}
        | {"times_on": [2.0, 2.2], "median_off": 2.0, "median_on": 2.1, "median_pair_ratio": 1.04},
        {"kind": "memory", "shape": [160, 192, 224], "int_steps": 7, "recompute": False}
        | {"error": "skipped: 9.0 GB available, 12.0 GB needed"},
    ]
    text = "\n".join(markdown(results))
    assert "| 80x96x112 | 0 | off | 1 | 2.26 | 6.00 | -0.050000 |" in text
    assert "| 80x96x112 | 0 | on | 1 | 1.84 | 5.25 | -0.050000 |" in text
    assert "| 80x96x112 | 0 | 2 | 2.00 | 2.10 | 1.05 | 1.04 |" in text
    assert "| 160x192x224 | 7 | off | 0 | skipped: 9.0 GB available" in text
