"""The benchmark harness: run the selected cases, one process each, and write the results.

`run_benchmarks` starts `python -m benchmarks.case NAME` for every case in turn (never two at
once: they would share the two cores), collects each case's JSON, and after every case rewrites
`results.json` (machine, command, cases) and `results.md` (tables, `benchmarks.report`) in the
output folder, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.case import previous_default
from benchmarks.report import write_markdown

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
SIZES = ("80x96x112", "160x192x224")
QUICK_SIZES = ("32x32x32", "48x48x48")
# LPBA40 is 160x192x160: full resolution and downsampled 2x (shapes of the pipeline cases, which
# also get a training step for the pipeline-to-training ratio).
PIPELINE_SHAPES = {1: "160x192x160", 2: "80x96x80"}
QUICK_PIPELINE_SHAPES = {4: "48x48x48"}


def default_cases(quick=False):
    """Every case, in the order they run (names: `benchmarks.case`)."""
    small, large = QUICK_SIZES if quick else SIZES
    pipeline = QUICK_PIPELINE_SHAPES if quick else PIPELINE_SHAPES
    cases = ["peak"]
    for kind in ("train", "register"):
        for size in (small, large):
            cases += [f"{kind}-{size}-int0", f"{kind}-{size}-int7"]
    # Registration in one piece, for comparison with the tiled default, and the two timed
    # alternately in one process (the time cost of tiling).
    cases += [f"register-{large}-int0+untiled", f"register-{large}-int7+untiled"]
    cases += [f"tilecost-{large}-int0", f"tilecost-{large}-int7"]
    for downsample, shape in pipeline.items():
        cases += [f"pipeline-ds{downsample}", f"train-{shape}-int7"]
    cases += [f"breakdown-{small}-int0", f"breakdown-{small}-int7"]
    cases += [f"train-{small}-int7+xla", f"train-{small}-int7+bf16"]
    # bfloat16 where it pays (CPUs with AMX; see benchmarks/NOTES.md): training and registration
    cases += [f"train-{large}-int7+bf16", f"register-{large}-int7+bf16"]
    return list(dict.fromkeys(cases))  # in quick mode a pipeline shape repeats a train case


def select_cases(patterns, quick=False):
    """Cases matching any of the shell-style `patterns` (a name not in the defaults is kept)."""
    if not patterns:
        return default_cases(quick)
    defaults = default_cases(quick)
    chosen = []
    for pattern in patterns:
        matches = [c for c in defaults if fnmatch.fnmatchcase(c, pattern)]
        if not matches and not any(ch in pattern for ch in "*?["):
            matches = [pattern]  # an explicit extra case, e.g. train-64x64x64-int0
        if not matches:
            raise ValueError(
                f"No case matches {pattern!r}. Expected one of {defaults} or a case name "
                f"(see benchmarks.case). Received: {pattern!r}"
            )
        chosen += [c for c in matches if c not in chosen]
    return chosen


def with_previous(cases):
    """`cases` with each one's `previous_default` right after it (once)."""
    out = []
    for name in cases:
        out += [c for c in (name, previous_default(name)) if c and c not in out]
    return out


def with_flags(name, xla, mixed_precision):
    """Add the `--xla` / `--mixed-precision` switches to a training-type case name (registration
    runs `Registrator`, without XLA; its bfloat16 is a case of its own, `register-...+bf16`)."""
    if name.split("-")[0] not in ("train", "breakdown"):
        return name
    if xla and "+xla" not in name:
        name += "+xla"
    if mixed_precision and "+bf16" not in name:
        name += "+bf16"
    return name


def cpu_fields():
    """The first CPU's `/proc/cpuinfo` fields ("model name", "flags", ...); {} when unreadable."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def machine_info():
    """CPU model, cores, memory, library versions and whether oneDNN is on."""
    import keras
    import tensorflow as tf
    from tensorflow.python.util import _pywrap_util_port

    fields = cpu_fields()
    cpu = fields.get("model name") or platform.processor() or "unknown"
    flags = fields.get("flags", "").split()
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    return {
        "cpu": cpu,
        "cpu_family_model_stepping": "/".join(
            fields.get(k, "?") for k in ("cpu family", "model", "stepping")
        ),
        "cpu_flags": [
            f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags
        ],
        "cores": os.cpu_count(),
        "memory_gb": round(memory_gb, 1),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "onednn": bool(_pywrap_util_port.IsMklEnabled()),
        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def run_case_process(name, repeats, warmup, quick, dataset, timeout):
    """Run one case in a fresh Python process; its result dict, or `{"error": ...}`."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "case.json"
        command = [sys.executable, "-m", "benchmarks.case", name, "--json", str(out)]
        command += ["--repeats", str(repeats), "--warmup", str(warmup), "--dataset", dataset]
        if quick:
            command.append("--quick")
        try:  # run from the checkout's root, so that `benchmarks` is importable
            done = subprocess.run(
                command, cwd=ROOT, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            return {"case": name, "error": f"timed out after {timeout} s"}
        if done.returncode != 0 or not out.is_file():
            tail = "\n".join(done.stderr.strip().splitlines()[-15:])
            return {"case": name, "error": f"exit code {done.returncode}: {tail}"}
        return json.loads(out.read_text())


def run_benchmarks(
    cases,
    out_dir,
    repeats=5,
    warmup=2,
    quick=False,
    dataset="/work/shared/data/LPBA40/LPBA40_dataset.json",
    command="",
    append=False,
    timeout=3600,
):
    """Run `cases` one after another and write `results.json` and `results.md` in `out_dir`.

    Args:
        cases: case names (`benchmarks.case`).
        out_dir: output folder, created if needed.
        repeats, warmup: timed and untimed runs per case.
        quick: tiny peak and pipeline workloads (smoke tests).
        dataset: the LPBA40 dataset JSON for the pipeline cases.
        command: the command line to record.
        append: keep the cases of an existing `results.json`, replacing those run again.
        timeout: seconds allowed per case.

    Returns:
        The results dict written to `results.json`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    results = {"machine": machine_info(), "commands": [], "cases": {}}
    if append and path.is_file():
        previous = json.loads(path.read_text())
        results["commands"] = previous.get("commands", [])
        results["cases"] = previous.get("cases", {})
    results["commands"].append(command)
    results["settings"] = {"repeats": repeats, "warmup": warmup, "quick": quick}
    for name in cases:
        logger.info("Running %s", name)
        start = time.perf_counter()
        result = run_case_process(name, repeats, warmup, quick, dataset, timeout)
        result["repeats"], result["warmup"] = repeats, warmup
        results["cases"][name] = result
        logger.info("%s done in %.0f s", name, time.perf_counter() - start)
        path.write_text(json.dumps(results, indent=1) + "\n")
        write_markdown(results, out_dir / "results.md")
    return results
