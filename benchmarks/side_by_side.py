"""The command line, table and JSON file that side-by-side timing scripts share.

`benchmarks.bench_rescale` and `benchmarks.bench_integrate` time several methods of one
operation on a few cases, alternating the methods round by round
(`benchmarks.timing.time_alternating`). Both take ``--jit``, ``--rounds`` and ``--out``, print a
markdown table with one column of median milliseconds per method and one ratio column, and
write the same rows with the command and the machine to a JSON file. That shell lives here;
the scripts keep what differs (their cases and how each is built).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.harness import machine_info
from vxmtf.atomic import atomic_write_text


def parse_args(description: str, argv: list[str] | None) -> argparse.Namespace:
    """``--jit``, ``--rounds`` (>= 1, default 7) and ``--out``, parsed from `argv`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--jit", action="store_true", help="compile every case with XLA")
    parser.add_argument("--rounds", type=int, default=7, help="timed calls per method and case")
    parser.add_argument("--out", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1. Received: {args.rounds}")
    return args


def header(jit_compile: bool, methods: tuple[str, ...], ratio: str) -> str:
    """The table's two header lines; `ratio` names the last column (e.g. ``"gather / auto"``)."""
    mode = "XLA" if jit_compile else "graph"
    columns = " | ".join(f"{m} ms" for m in methods)
    return f"| case ({mode}) | {columns} | {ratio} |\n|---|" + "---|" * (len(methods) + 1)


def row(name: str, result: dict, methods: tuple[str, ...], ratio_key: str) -> str:
    """One table line: `result[m]["median_ms"]` per method, then `result["auto"][ratio_key]`."""
    times = " | ".join(f"{result[m]['median_ms']:.0f}" for m in methods)
    return f"| {name} | {times} | {result['auto'][ratio_key]:.2f}x |"


def write(path: Path, module: str, argv: list[str] | None, rounds: int, rows: list) -> None:
    """Write `rows` to `path` as JSON with the command that made them and the machine.

    ``command`` is ``python -m <module>`` followed by `argv` (or this process's arguments when
    `argv` is None, as when run from the shell).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    command = " ".join([f"python -m {module}", *(sys.argv[1:] if argv is None else argv)])
    payload = {"command": command, "machine": machine_info(), "rounds": rounds, "results": rows}
    atomic_write_text(path, json.dumps(payload, indent=1) + "\n")
