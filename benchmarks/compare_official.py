"""`python -m benchmarks.compare_official`: vxmtf against the official VoxelMorph TF code, side
by side on one machine (issue #16).

Each comparison is a vxmtf case and the official code's counterpart (`benchmarks.case`), every
run in its own process, alternated over `--rounds` (vxmtf, official, official, vxmtf, ...) so
that a changing background load hits both alike. Reported per comparison: each side's median
seconds (the median over its processes' medians) and peak resident memory (GB = 10^9 bytes,
TensorFlow included), and official / vxmtf, the speed-up.

    pip install -e '.[official]'            # voxelmorph 0.2, neurite 0.2, tf-keras
    python -m benchmarks.compare_official --out /tmp/official
    python -m benchmarks.compare_official --comparisons train-80x96x112-int7 --rounds 1

Comparisons (name: vxmtf case against official case):
- `train-S-intN`: `train-S-intN` (vxmtf's training step) against `officialtrain-S-intN`;
- `register-S-intN`: `register-S-intN` (`Registrator.register` on NumPy volumes: normalisation,
  the network, the warp, results back in NumPy) against `officialpredict-S-intN` (the official
  model's `predict_on_batch` alone: no preprocessing).

A `+bf16` suffix runs vxmtf's side in bfloat16 (training: the Keras policy `mixed_bfloat16`;
registration: `Registrator(precision="bfloat16")`, the U-Net in bfloat16 and the fields and warp in
float32) against the official code in float32, as each would be used on a CPU with AVX512_BF16
or AMX.

Writes `results.json` and `results.md` in `--out`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

DEFAULT_COMPARISONS = (
    "train-80x96x112-int0",
    "train-80x96x112-int7",
    "train-160x192x224-int7",
    "register-160x192x224-int7",
)
_OFFICIAL = {"train": "officialtrain", "register": "officialpredict"}


def cases(comparison: str) -> tuple[str, str]:
    """`(vxmtf case, official case)` of a comparison name.

    Raises:
        ValueError: a name that is not `train-...` or `register-...` of `benchmarks.case`.
    """
    from benchmarks.case import parse_case

    kind, sep, rest = comparison.partition("-")
    rest, *flags = rest.split("+")
    if kind not in _OFFICIAL or not sep or flags not in ([], ["bf16"]):
        raise ValueError(
            "Expected a comparison like train-80x96x112-int7 or register-160x192x224-int7, "
            f"optionally with +bf16. Received: {comparison!r}"
        )
    ours, official = comparison, f"{_OFFICIAL[kind]}-{rest}"
    parse_case(ours), parse_case(official)  # the same grammar: raises on a bad shape or steps
    return ours, official


def summarize(comparison: str, runs: dict) -> dict:
    """Medians and peaks of one comparison's runs (`{case: [result, ...]}`)."""
    ours, official = cases(comparison)
    row = {"comparison": comparison}
    for side, case in (("vxmtf", ours), ("official", official)):
        good = [r for r in runs.get(case, []) if "error" not in r]
        errors = [r["error"] for r in runs.get(case, []) if "error" in r]
        row[side] = {
            "median": statistics.median(r["median"] for r in good) if good else None,
            "peak_gb": max(r["peak_gb"] for r in good) if good else None,
            "processes": len(good),
            "errors": errors,
        }
    a, b = row["vxmtf"]["median"], row["official"]["median"]
    row["speedup"] = b / a if a and b else None
    return row


def results_table(rows: list[dict]) -> str:
    def cell(value, spec):
        return "error" if value is None else format(value, spec)

    lines = [
        "| comparison | vxmtf s | official s | official / vxmtf | vxmtf GB | official GB |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        ours, official = r["vxmtf"], r["official"]
        speedup = "" if r["speedup"] is None else f"**{r['speedup']:.2f}x**"
        lines.append(
            f"| {r['comparison']} | {cell(ours['median'], '.3f')} | "
            f"{cell(official['median'], '.3f')} | {speedup} | {cell(ours['peak_gb'], '.2f')} | "
            f"{cell(official['peak_gb'], '.2f')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.compare_official",
        description="vxmtf against the official VoxelMorph TF code, one process per run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--comparisons", nargs="+", default=list(DEFAULT_COMPARISONS))
    p.add_argument("--rounds", type=int, default=2, help="processes per side and comparison")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per process")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first")
    p.add_argument("--out", default="runs/compare_official", help="output folder")
    p.add_argument("--timeout", type=int, default=1800, help="seconds allowed per process")
    args = p.parse_args(argv)
    try:
        pairs = {c: cases(c) for c in args.comparisons}
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.rounds < 1:
        print(f"error: --rounds must be >= 1. Received: {args.rounds}", file=sys.stderr)
        return 2

    import vxmtf_cli

    vxmtf_cli.start([])  # a quiet TensorFlow import (machine_info reads its version)
    from benchmarks.harness import machine_info, run_case_process

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list] = {}
    for ours, official in pairs.values():
        for round_ in range(args.rounds):
            order = (ours, official) if round_ % 2 == 0 else (official, ours)
            for case in order:
                print(f"{case} (round {round_ + 1} of {args.rounds})", flush=True)
                result = run_case_process(case, args.repeats, args.warmup, False, "", args.timeout)
                if "error" in result:
                    print(f"  {result['error']}", file=sys.stderr)
                else:
                    print(f"  median {result['median']:.3f} s, peak {result['peak_gb']:.2f} GB")
                runs.setdefault(case, []).append(result)
    rows = [summarize(c, runs) for c in pairs]
    machine = machine_info()
    (out / "results.json").write_text(
        json.dumps({"machine": machine, "rows": rows, "runs": runs}, indent=1) + "\n"
    )
    header = (
        f"Machine: {machine.get('cpu')}, {machine.get('cores')} cores; TensorFlow "
        f"{machine.get('tensorflow')}; {args.rounds} process(es) per side, {args.repeats} timed "
        f"calls after {args.warmup} untimed in each.\n\n"
    )
    table = results_table(rows)
    (out / "results.md").write_text(header + table)
    print(header + table)
    return 0 if all(r["speedup"] is not None for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
