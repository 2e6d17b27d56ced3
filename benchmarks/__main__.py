"""`python -m benchmarks`: speed and memory of vxmtf's training, registration and data pipeline.

    python -m benchmarks                         # every case, results in benchmarks/results/
    python -m benchmarks --quick                 # tiny sizes, 2 repeats (smoke test)
    python -m benchmarks --cases 'train-80*' peak --repeats 7
    python -m benchmarks --list                  # the case names
    python -m benchmarks --no-previous           # without the previous default's twins
    python -m benchmarks --cases serve-160x192x224-int7 serve-160x192x224-int7+untiled
                                                 # serving an export, tiled and whole
    python -m benchmarks ncc [--jit] [...]       # the NCC micro-benchmark (bench_ncc.py)

Each case runs in its own process (`python -m benchmarks.case NAME`), one after the other.
Each training, registration and serving case is followed by its twin as the previous default
ran it (`+explicit`: the U-Net's explicit decoder; `--no-previous` skips them), and
`results.md` reports the two side by side.
"""

# Before TensorFlow is imported, here and (inherited) in every case process.
import vxmtf_cli  # noqa: E402  (imports no TensorFlow)

vxmtf_cli.prepare_environment()

import argparse  # noqa: E402
import logging  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes and 2 repeats")
    parser.add_argument(
        "--cases", nargs="+", metavar="PATTERN", help="case names or shell patterns (default: all)"
    )
    parser.add_argument("--list", action="store_true", help="print the case names and exit")
    parser.add_argument("--repeats", type=int, help="timed runs per case (default 5, quick 2)")
    parser.add_argument("--warmup", type=int, help="untimed runs first (default 2, quick 1)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--xla", action="store_true", help="compile training with XLA")
    parser.add_argument(
        "--mixed-precision", action="store_true", help="Keras policy mixed_bfloat16"
    )
    parser.add_argument("--append", action="store_true", help="merge into an existing results.json")
    parser.add_argument(
        "--previous",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run each training, registration and serving case as the previous default "
        "ran it (the explicit decoder, `+explicit`) and report the two side by side",
    )
    parser.add_argument(
        "--dataset",
        default="/work/shared/data/LPBA40/LPBA40_dataset.json",
        help="dataset JSON for the pipeline cases (default: %(default)s)",
    )
    parser.epilog = "python -m benchmarks ncc --help: the NCC micro-benchmark's options"
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["ncc"]:  # before argparse, which would take the sub-command's options
        from benchmarks import bench_ncc

        return bench_ncc.main(argv[1:])
    args = _parser().parse_args(argv)

    from benchmarks.harness import run_benchmarks, select_cases, with_flags, with_previous

    cases = [
        with_flags(name, args.xla, args.mixed_precision)
        for name in select_cases(args.cases, args.quick)
    ]
    if args.previous:
        cases = with_previous(cases)
    if args.list:
        print("\n".join(cases))
        return 0
    repeats = args.repeats or (2 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    if repeats < 1 or warmup < 0:
        raise SystemExit(f"--repeats must be >= 1 and --warmup >= 0. Received: {repeats}, {warmup}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    command = shlex.join(["python", "-m", "benchmarks", *argv])
    results = run_benchmarks(
        cases,
        args.out,
        repeats=repeats,
        warmup=warmup,
        quick=args.quick,
        dataset=args.dataset,
        command=command,
        append=args.append,
    )
    failed = [name for name, r in results["cases"].items() if "error" in r and name in cases]
    for name in failed:
        print(f"{name} failed: {results['cases'][name]['error']}", file=sys.stderr)
    print(f"Results: {args.out / 'results.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
