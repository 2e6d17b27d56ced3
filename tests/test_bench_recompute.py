"""`benchmarks.bench_recompute`: argument parsing and the report (no TensorFlow work)."""

import argparse

import pytest

from benchmarks.bench_recompute import decoder_case, main, markdown, parse_shape


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


def test_markdown_reports_the_decoder_forms_side_by_side():
    def path(explicit, transposed):
        return {
            "times_transposed": [transposed] * 3,
            "median_explicit": explicit,
            "median_transposed": transposed,
            "ratio": transposed / explicit,
            "median_pair_ratio": 0.7,
            "max_abs_diff": 2e-6,
        }

    results = [
        {"kind": "decoder", "shape": [80, 96, 112], "int_steps": 7, "recompute": False}
        | {"whole": path(1.0, 0.72), "train": path(2.0, 1.5), "peak_gb": 3.0},
        {"kind": "decoder", "shape": [160, 192, 224], "int_steps": 7, "recompute": False}
        | {"error": "skipped: 9.0 GB available, 12.0 GB needed"},
    ]
    lines = markdown(results)
    assert lines[0].startswith("Decoder forms alternated in one process")  # no empty tables
    text = "\n".join(lines)
    assert "| 80x96x112 | 7 | whole | 3 | 1.00 | 0.72 | 0.72 | 0.70 | 2.0e-06 |" in text
    assert "| 80x96x112 | 7 | train | 3 | 2.00 | 1.50 | 0.75 | 0.70 | 2.0e-06 |" in text
    assert "| 160x192x224 | 7 | skipped: 9.0 GB available" in text


def test_decoder_case_times_both_forms_and_they_agree():
    # A real (tiny) run of the child: both forms on each path, the same displacement.
    result = decoder_case((16, 16, 16), 0, repeats=2, warmup=1, paths=("whole", "tiled"))
    assert set(result) == {"whole", "tiled", "peak_gb"}
    for path in ("whole", "tiled"):
        r = result[path]
        assert len(r["times_explicit"]) == len(r["times_transposed"]) == 2
        assert r["ratio"] == pytest.approx(r["median_transposed"] / r["median_explicit"])
        assert r["max_abs_diff"] < 1e-6  # a new model's field is ~1e-5 voxels


def test_paths_are_checked():
    with pytest.raises(SystemExit):
        main(["--measure", "decoder", "--paths", "predict"])
