"""`benchmarks.bench_integrate` on tiny grids, and `benchmarks.timing.time_alternating`."""

import json
import time

import numpy as np

from benchmarks import bench_integrate
from benchmarks.timing import time_alternating


def test_time_alternating_calls_each_once_per_round_and_rates_against_baseline():
    calls = {"slow": 0, "fast": 0}

    def sleeper(name, seconds):
        def fn():
            calls[name] += 1
            time.sleep(seconds)

        return fn

    result = time_alternating(
        {"slow": sleeper("slow", 0.03), "fast": sleeper("fast", 0.003)}, 3, baseline="slow"
    )
    assert calls == {"slow": 4, "fast": 4}  # one warm-up and three timed calls each
    assert result["slow"]["baseline_over_this"] == 1.0
    assert result["slow"]["median_ms"] >= 30.0
    assert result["fast"]["baseline_over_this"] > 3.0


def test_methods_compute_the_same_gradient_and_main_writes_the_table(tmp_path, monkeypatch, capsys):
    gradients = [
        bench_integrate.build("gradient", (6, 5, 4), m, False)() for m in ("unrolled", "loop")
    ]
    assert np.abs(gradients[0]).max() > 0
    np.testing.assert_allclose(gradients[1], gradients[0], rtol=1e-4, atol=1e-5)

    monkeypatch.setattr(bench_integrate, "CASES", (("forward", (6, 5, 4)),))
    out = tmp_path / "integrate.json"
    assert bench_integrate.main(["--rounds", "1", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| case (graph) | unrolled ms | auto ms | loop ms | unrolled / auto |"
    assert lines[2].startswith("| forward 6x5x4, 7 steps | ")
    payload = json.loads(out.read_text())
    assert payload["command"] == f"python -m benchmarks.bench_integrate --rounds 1 --out {out}"
    assert set(payload["results"][0]) >= {"case", "jit_compile", "unrolled", "auto", "loop"}
    assert payload["results"][0]["unrolled"]["baseline_over_this"] == 1.0
