"""`benchmarks.compare_official` and the official-code cases of `benchmarks.case`."""

import importlib.util

import pytest

from benchmarks import compare_official
from benchmarks.case import parse_case


def test_comparisons_pair_each_vxmtf_case_with_the_official_counterpart():
    assert compare_official.cases("train-80x96x112-int7") == (
        "train-80x96x112-int7",
        "officialtrain-80x96x112-int7",
    )
    assert compare_official.cases("register-160x192x224-int0")[1] == (
        "officialpredict-160x192x224-int0"
    )
    # bfloat16 on vxmtf's side only: the official code runs float32 as published
    assert compare_official.cases("register-16x16x16-int7+bf16") == (
        "register-16x16x16-int7+bf16",
        "officialpredict-16x16x16-int7",
    )
    assert parse_case("register-16x16x16-int7+bf16")["bf16"]
    spec = parse_case("officialpredict-160x192x224-int7")
    assert (spec["kind"], spec["shape"], spec["int_steps"]) == (
        "officialpredict",
        (160, 192, 224),
        7,
    )
    bad_names = ("serve-32x32x32-int0", "train-32x32x32-int7+xla", "train", "train-32x32-seven")
    for bad in (*bad_names, "register-32x32x32-int7+bf16+bf16"):
        with pytest.raises(ValueError, match="Received"):
            compare_official.cases(bad)


def test_summary_takes_medians_of_process_medians_and_the_ratio():
    runs = {
        "train-8x8x8-int0": [{"median": 1.0, "peak_gb": 1.0}, {"median": 3.0, "peak_gb": 1.5}],
        "officialtrain-8x8x8-int0": [
            {"median": 4.0, "peak_gb": 2.0},
            {"error": "exit code 1: boom"},
        ],
    }
    row = compare_official.summarize("train-8x8x8-int0", runs)
    assert row["vxmtf"]["median"] == 2.0 and row["vxmtf"]["peak_gb"] == 1.5
    assert row["official"]["median"] == 4.0 and row["official"]["errors"] == ["exit code 1: boom"]
    assert row["speedup"] == 2.0
    table = compare_official.results_table([row])
    assert "| train-8x8x8-int0 | 2.000 | 4.000 | **2.00x** | 1.50 | 2.00 |" in table
    failed = compare_official.summarize(
        "train-8x8x8-int0", {"train-8x8x8-int0": runs["train-8x8x8-int0"]}
    )
    assert failed["official"]["median"] is None and failed["speedup"] is None
    assert "error" in compare_official.results_table([failed])


def test_bad_options_are_usage_errors(capsys):
    assert compare_official.main(["--comparisons", "serve-8x8x8-int0"]) == 2
    assert "serve-8x8x8-int0" in capsys.readouterr().err
    assert compare_official.main(["--rounds", "0"]) == 2
    assert "--rounds" in capsys.readouterr().err


@pytest.mark.skipif(
    importlib.util.find_spec("voxelmorph") is None or importlib.util.find_spec("tf_keras") is None,
    reason="the official VoxelMorph baseline is not installed (pip install -e '.[official]')",
)
def test_the_official_training_step_runs_on_tf_keras(tmp_path):
    from benchmarks.harness import run_case_process

    result = run_case_process("officialtrain-16x16x16-int7", 1, 1, False, "", 300)
    assert "error" not in result, result.get("error")
    assert result["finite_losses"] and result["keras"].startswith("tf-keras")
    assert result["median"] > 0
