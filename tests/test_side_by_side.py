"""`benchmarks.side_by_side`: the shell shared by the side-by-side timing scripts."""

import json
import sys

import pytest

from benchmarks import side_by_side


def test_rounds_below_one_is_refused_with_the_value(capsys):
    with pytest.raises(SystemExit):
        side_by_side.parse_args("timing", ["--rounds", "0"])
    assert "--rounds must be >= 1. Received: 0" in capsys.readouterr().err


def test_table_has_one_column_per_method_and_the_ratio_of_auto():
    result = {"a": {"median_ms": 12.4, "r": 1.0}, "auto": {"median_ms": 3.1, "r": 4.0}}
    lines = side_by_side.header(True, ("a", "auto"), "a / auto").splitlines()
    assert lines == ["| case (XLA) | a ms | auto ms | a / auto |", "|---|---|---|---|"]
    assert side_by_side.row("c", result, ("a", "auto"), "r") == "| c | 12 | 3 | 4.00x |"


def test_write_records_the_command_from_argv_or_the_process(tmp_path, monkeypatch):
    out = tmp_path / "sub" / "t.json"
    side_by_side.write(out, "benchmarks.x", ["--jit"], 3, [{"case": "c"}])
    payload = json.loads(out.read_text())
    assert payload["command"] == "python -m benchmarks.x --jit"
    assert payload["rounds"] == 3 and payload["results"] == [{"case": "c"}]
    assert "cpu" in json.dumps(payload["machine"]).lower()
    monkeypatch.setattr(sys, "argv", ["bench", "--rounds", "2"])
    side_by_side.write(out, "benchmarks.x", None, 2, [])
    assert json.loads(out.read_text())["command"] == "python -m benchmarks.x --rounds 2"
