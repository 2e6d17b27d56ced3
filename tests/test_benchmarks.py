"""The benchmark harness (`python -m benchmarks`): FLOP counter, case names, report, smoke run."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.case import parse_case, peak_memory_gb, run_case
from benchmarks.flops import TRAIN_FACTOR, conv_flops
from benchmarks.harness import (
    default_cases,
    previous_default,
    select_cases,
    with_flags,
    with_previous,
)
from benchmarks.report import markdown, pipeline_ratio
from vxmtf.networks import VxmDense

ROOT = Path(__file__).resolve().parents[1]


def _conv(kernel_voxels, c_in, c_out, voxels):
    return 2 * kernel_voxels * c_in * c_out * voxels


@pytest.mark.parametrize("ndim", [2, 3])
def test_conv_flops_matches_a_hand_count(ndim):
    # Encoder 4, decoder 4 then 2, on a 4^ndim input. By hand, with k = 3^ndim, v = 4^ndim:
    #   enc_conv_0    2 -> 4 at 4^ndim
    #   dec_conv_0    4 -> 4 at 2^ndim (after one 2x pooling)
    #   final_conv_0  8 -> 2 at 4^ndim (4 upsampled + 4 skip channels)
    #   flow          2 -> ndim at 4^ndim
    model = VxmDense((4,) * ndim, enc_features=(4,), dec_features=(4, 2), int_steps=0)
    k, v = 3**ndim, 4**ndim
    expected = {
        "enc_conv_0": _conv(k, 2, 4, v),
        "dec_conv_0": _conv(k, 4, 4, 2**ndim),
        "final_conv_0": _conv(k, 8, 2, v),
        "flow": _conv(k, 2, ndim, v),
    }
    total, per_layer = conv_flops(model, decoder="explicit")
    assert per_layer == expected
    assert total == (110592 if ndim == 3 else 9216)  # the same sums, written out
    assert conv_flops(model, batch=2, decoder="explicit")[0] == 2 * total
    # As the model runs it (the transposed decoder, its default): final_conv_0's 4 upsampled
    # channels as a stride-2 transposed convolution, 4^ndim taps at each of the 2^ndim coarse
    # voxels; its 4 skip channels as a 3^ndim convolution at 4^ndim.
    assert model.get_layer("unet").transposed_decoder is True
    transposed = dict(expected, final_conv_0=2 * 2 * (4**ndim * 4 * 2**ndim + k * 4 * v))
    assert conv_flops(model)[1] == transposed
    assert conv_flops(model, decoder="transposed")[1] == transposed
    explicit_model = VxmDense(
        (4,) * ndim, enc_features=(4,), dec_features=(4, 2), int_steps=0, transposed_decoder=False
    )
    assert conv_flops(explicit_model)[1] == expected
    with pytest.raises(ValueError, match="decoder.*Received: decoder='fast'"):
        conv_flops(model, decoder="fast")


def test_conv_flops_of_the_default_network_is_about_5_gflop_per_32_cube():
    # Dominated by the full-resolution decoder: 48->32, 32->16, 16->16 and the flow head.
    total, per_layer = conv_flops(VxmDense((32, 32, 32), int_steps=7), decoder="explicit")
    assert len(per_layer) == 12
    full = 32**3 * 2 * 27 * (48 * 32 + 32 * 16 + 16 * 16 + 16 * 3)
    assert full < total < 1.2 * full
    assert math.isclose(total / 1e9, 4.88, rel_tol=0.01)
    assert TRAIN_FACTOR == 3


def test_conv_flops_needs_known_sizes():
    with pytest.raises(ValueError, match="known spatial sizes"):
        conv_flops(VxmDense((None, None, None), int_steps=0))


def test_parse_case():
    spec = parse_case("train-80x96x112-int7+xla")
    assert spec["kind"] == "train"
    assert spec["shape"] == (80, 96, 112)
    assert spec["int_steps"] == 7
    assert spec["xla"] and not spec["bf16"]
    assert parse_case("pipeline-ds2")["downsample"] == 2
    assert parse_case("peak")["kind"] == "peak"
    for bad in ("train-80x96x112", "train-80x96x112-int7+fast", "pipeline-2", "fly", "peak+xla"):
        with pytest.raises(ValueError, match="Expected a case name"):
            parse_case(bad)


def test_parse_registration_cases():
    """Registration runs Registrator (tiled unless +untiled, float32 unless +bf16, no XLA)."""
    assert not parse_case("register-32x32x32-int7")["untiled"]
    spec = parse_case("register-160x192x224-int0+untiled")
    assert (spec["kind"], spec["shape"], spec["int_steps"]) == ("register", (160, 192, 224), 0)
    assert spec["untiled"]
    spec = parse_case("tilecost-160x192x224-int7")
    assert (spec["kind"], spec["shape"], spec["int_steps"]) == ("tilecost", (160, 192, 224), 7)
    for bad in (
        "train-32x32x32-int0+untiled",
        "serve-32x32x32-int0+bf16",
        "register-32x32x32-int0+xla",
        "breakdown-32x32x32-int0+explicit",
        "tilecost-32x32x32-int0+untiled",
    ):
        with pytest.raises(ValueError, match="Expected a case name"):
            parse_case(bad)
    assert with_flags("register-32x32x32-int0", True, True) == "register-32x32x32-int0"
    assert with_flags("tilecost-32x32x32-int0", True, True) == "tilecost-32x32x32-int0"
    assert {"register-160x192x224-int7+untiled", "tilecost-160x192x224-int0"} <= set(
        default_cases()
    )


def test_each_changed_default_is_paired_with_the_previous_one():
    assert parse_case("train-32x32x32-int7+explicit")["explicit"]
    assert not parse_case("train-32x32x32-int7")["explicit"]
    assert parse_case("register-32x32x32-int7+bf16")["bf16"]
    assert previous_default("train-32x32x32-int7") == "train-32x32x32-int7+explicit"
    assert previous_default("register-32x32x32-int0+untiled") == (
        "register-32x32x32-int0+untiled+explicit"
    )
    for unchanged in ("peak", "pipeline-ds2", "tilecost-32x32x32-int0", "train-32x32x32-int7+xla"):
        assert previous_default(unchanged) is None
    assert with_previous(["peak", "train-8x8x8-int0", "train-8x8x8-int0+explicit"]) == [
        "peak",
        "train-8x8x8-int0",
        "train-8x8x8-int0+explicit",
    ]
    for name in with_previous(default_cases()):
        parse_case(name)


def test_the_previous_default_runs_the_explicit_decoder():
    """The `+explicit` twin runs more multiplications (flops.py counts the layers that run)."""
    now = run_case(parse_case("train-16x16x16-int0"), 1, 0)
    previous = run_case(parse_case("train-16x16x16-int0+explicit"), 1, 0)
    assert now["transposed_decoder"] and not previous["transposed_decoder"]
    assert previous["flops"] > 1.2 * now["flops"]
    result = run_case(parse_case("register-16x16x16-int0+explicit"), 1, 0)
    assert not result["transposed_decoder"] and result["median"] > 0


def test_pipeline_case_is_skipped_without_data(tmp_path):
    result = run_case(parse_case("pipeline-ds2"), 1, 0, dataset=str(tmp_path / "absent.json"))
    assert result == {"skipped": f"dataset not found: {tmp_path / 'absent.json'}"}
    assert 0.01 < peak_memory_gb() < 100


def test_default_cases_parse_and_select():
    for quick in (False, True):
        cases = default_cases(quick)
        assert len(cases) == len(set(cases))
        for name in cases:
            parse_case(name)
    assert "train-160x192x224-int7" in default_cases()
    assert select_cases(["train-80*"]) == [
        "train-80x96x112-int0",
        "train-80x96x112-int7",
        "train-80x96x80-int7",
        "train-80x96x112-int7+xla",
        "train-80x96x112-int7+bf16",
    ]
    assert select_cases(["train-64x64x64-int0"]) == ["train-64x64x64-int0"]
    with pytest.raises(ValueError, match="No case matches"):
        select_cases(["nothing*"])
    assert with_flags("train-32x32x32-int0", True, True) == "train-32x32x32-int0+xla+bf16"
    assert with_flags("register-32x32x32-int0", True, False) == "register-32x32x32-int0"
    assert with_flags("peak", True, True) == "peak"


def test_report_pipeline_ratio_and_tables():
    results = {
        "machine": {
            "cpu": "CPU",
            "cores": 2,
            "memory_gb": 8.0,
            "python": "3",
            "tensorflow": "2",
            "keras": "3",
            "onednn": True,
            "TF_ENABLE_ONEDNN_OPTS": "1",
            "date": "today",
        },
        "commands": ["python -m benchmarks"],
        "cases": {
            "train-80x96x80-int7": {
                "spec": parse_case("train-80x96x80-int7"),
                "median": 2.0,
                "min": 1.9,
                "max": 2.1,
                "peak_gb": 1.5,
                "gflops_per_s": 50.0,
            },
            "pipeline-ds2": {
                "spec": parse_case("pipeline-ds2"),
                "shape": [80, 96, 80],
                "pairs_per_s": 4.0,
                "peak_gb": 0.9,
            },
        },
    }
    results["cases"]["register-80x96x80-int0"] = {
        "spec": parse_case("register-80x96x80-int0"),
        "median": 0.5,
        "min": 0.4,
        "max": 0.6,
        "peak_gb": 1.2,
        "gflops_per_s": 100.0,
        "tiled": True,
        "slab": 24,
    }
    timing = {"median": 1.0, "min": 1.0, "max": 1.0, "cpu_median": 2.0}
    results["cases"]["tilecost-80x96x80-int7"] = {
        "spec": parse_case("tilecost-80x96x80-int7"),
        "slab": 24,
        "tiled": {**timing, "median": 1.05},
        "untiled": timing,
        "ratio": 1.05,
        "cpu_ratio": 1.04,
        "peak_gb": 3.0,
    }
    parts = {"unet": {"median": 0.5}, "step": {"median": 1.0}}
    for name in ("breakdown-32x32x32-int7", "breakdown-32x32x32-int7+bf16"):
        results["cases"][name] = {"spec": parse_case(name), "parts": parts, "sum_of_parts": 0.5}
    results["cases"]["register-80x96x80-int0+explicit"] = {
        **results["cases"]["register-80x96x80-int0"],
        "spec": parse_case("register-80x96x80-int0+explicit"),
        "median": 0.8,
        "peak_gb": 1.4,
    }
    step, ratio = pipeline_ratio(results, results["cases"]["pipeline-ds2"])
    assert (step, ratio) == (2.0, 8.0)
    text = markdown(results)
    assert "| training step | 80x96x80 | 7 | - | 2.000 | 1.900 | 2.100 | 1.50 | 50.0 | - |" in text
    assert "| downsample 2 | 80x96x80 | 4.00 | 0.90 | 2.00 | 8.0x |" in text
    row = "| registration | 80x96x80 | 0 | tiled, slab 24 | 0.500 | 0.400 | 0.600 | 1.20 | 100.0 |"
    assert row in text
    row = "| registration | 80x96x80 | 0 | tiled, slab 24 | 0.500 | 0.800 | **1.60x** | 1.20 "
    row += "| 1.40 |"
    assert row in text
    row = "| 80x96x80 | 7 | 24 | 1.050 | 1.000 | 1.050 | 2.00 | 2.00 | 1.040 |"
    assert row in text
    # the two breakdown columns of one shape are told apart by their flags
    assert "| part | 32x32x32 int_steps 7 | 32x32x32 int_steps 7 (bf16) |" in text
    assert "| unet | 0.500 (50%) | 0.500 (50%) |" in text


def test_quick_run_writes_positive_results(tmp_path):
    case = "train-32x32x32-int0"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--cases", case, "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    machine = results["machine"]
    assert machine["cores"] > 0
    assert machine["cpu"]
    assert isinstance(machine["onednn"], bool)
    assert machine["tensorflow"].startswith("2.")
    assert machine["keras"].startswith("3.")
    result = results["cases"][case]
    for key in ("median", "min", "max", "peak_gb", "gflops_per_s", "flops"):
        assert result[key] > 0, key
    assert result["min"] <= result["median"] <= result["max"]
    assert len(result["times"]) == 2
    assert result["finite_losses"]
    assert results["commands"] == [f"python -m benchmarks --quick --cases {case} --out {tmp_path}"]
    assert "| training step | 32x32x32 | 0 |" in (tmp_path / "results.md").read_text()


def test_registration_workloads_run_the_registrator():
    result = run_case(parse_case("register-16x16x16-int0"), 1, 0)
    assert result["tiled"] and result["slab"] >= 5 and result["median"] > 0
    assert not run_case(parse_case("register-16x16x16-int0+untiled"), 1, 0)["tiled"]
    result = run_case(parse_case("tilecost-16x16x16-int7"), 2, 0)
    for path in ("tiled", "untiled"):
        assert len(result[path]["times"]) == len(result[path]["cpu_times"]) == 2
        assert result[path]["median"] > 0
    assert result["ratio"] > 0 and result["cpu_ratio"] > 0


def test_cpu_fields_parse_the_first_cpu_and_tolerate_no_cpuinfo(monkeypatch):
    import io

    from benchmarks import harness

    text = (
        "processor\t: 0\nmodel name\t: Chip A\nflags\t\t: fpu avx2\n\n"
        "processor\t: 1\nmodel name\t: Chip B\n"
    )
    monkeypatch.setattr(harness, "open", lambda path: io.StringIO(text), raising=False)
    fields = harness.cpu_fields()
    assert fields["model name"] == "Chip A" and fields["flags"].split() == ["fpu", "avx2"]

    def missing(path):
        raise FileNotFoundError(path)

    monkeypatch.setattr(harness, "open", missing, raising=False)
    assert harness.cpu_fields() == {}
