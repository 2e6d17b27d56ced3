"""`benchmarks.bench_rescale` on tiny grids (its own cases are real-size)."""

import json

from benchmarks import bench_rescale


def test_run_case_times_every_method_against_gather():
    result = bench_rescale.run_case("refine", (4, 5, 4), (8, 10, 8), 1, False)
    assert set(result) == set(bench_rescale.METHODS)
    assert result["gather"]["gather_over_this"] == 1.0
    assert all(r["median_ms"] > 0 for r in result.values())


def test_main_writes_the_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_rescale, "CASES", (("resize", (4, 4, 4), (8, 8, 8)),))
    out = tmp_path / "rescale.json"
    assert bench_rescale.main(["--rounds", "1", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| case (graph) | gather ms | auto ms | product ms | gather / auto |"
    assert lines[2].startswith("| resize 4x4x4 -> 8x8x8 | ")
    assert json.loads(out.read_text())["results"][0]["case"] == "resize 4x4x4 -> 8x8x8"
