"""What every vxmtf command line shares; importing it loads no TensorFlow.

The entry points (`python -m train`, `python -m evaluate.dice`, `python -m vxmtf.register`,
`python -m vxmtf.export`, the benchmarks) parse their own options and call one library function;
around that they share, from here:

- the environment TensorFlow reads when it is imported (set by `prepare_environment` unless the
  user set it): TensorFlow's oneDNN CPU kernels on (`TF_ENABLE_ONEDNN_OPTS=1`; TensorFlow
  enables them by default only on CPUs with AVX-512-class features, although they make 3D
  convolutions several times faster on other x86 CPUs too) and its C++ log quiet
  (`TF_CPP_MIN_LOG_LEVEL=3`, or 0 with `-v`);
- `start(argv)`, which does that and imports TensorFlow with the lines its native libraries
  print at import (oneDNN and CUDA notices, written before its log level applies) captured:
  known start-up notices are dropped, anything else is passed on, and `-v` shows everything.
  On a CPU-only machine a normal start then prints nothing of TensorFlow's own;
- `run_main`, which starts a tool whose module lives inside `vxmtf` (and so has imported
  TensorFlow before its own code runs) again in a fresh interpreter when oneDNN would otherwise
  stay off;
- the options `--model`, `--config` and `-v/--verbose` (`add_model_arguments`,
  `add_verbose_argument`), the logging set-up (`setup_logging`), and one exit-code policy: 0 on
  success, 2 (`EXIT_BAD_INPUT`) with `error: <message>` on stderr for bad input (a usage error,
  a missing or unreadable file, a bad value; `report_error`).

This is a package of its own, beside `vxmtf`, because `import vxmtf` imports TensorFlow (it
registers the package's Keras objects), and these settings must be made before that.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import tempfile

ONEDNN = "TF_ENABLE_ONEDNN_OPTS"
LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL"
#: Environment variables TensorFlow reads at import, and the values the tools default them to
#: (`-v` sets the log level to 0: every line of TensorFlow's C++ log).
ENVIRONMENT = {ONEDNN: "1", LOG_LEVEL: "3"}
#: Lines TensorFlow's native libraries print at import on a machine without a GPU, or to say
#: what they were built for: information, not problems (shown with `-v`).
STARTUP_NOTICES = (
    "All log messages before absl::InitializeLog() is called",
    "oneDNN custom operations are on",
    "Could not find cuda drivers",
    "cpu_feature_guard.cc",
    "To enable the following instructions",
    "Unable to register cuDNN factory",
    "Unable to register cuFFT factory",
    "Unable to register cuBLAS factory",
    "computation placer already registered",
    "TF-TRT Warning",
)
EXIT_OK = 0
EXIT_BAD_INPUT = 2
#: The exceptions that mean bad input (files, values, options), reported without a traceback.
BAD_INPUT = (OSError, ValueError, TypeError, ImportError, IndexError)

__all__ = [
    "BAD_INPUT",
    "ENVIRONMENT",
    "EXIT_BAD_INPUT",
    "EXIT_OK",
    "HelpFormatter",
    "add_model_arguments",
    "add_registration_arguments",
    "add_verbose_argument",
    "onednn_enabled",
    "parse_args",
    "prepare_environment",
    "registration_options",
    "import_tensorflow",
    "non_negative_float",
    "non_negative_int",
    "positive_float",
    "report_error",
    "run_main",
    "setup_logging",
    "start",
]


def prepare_environment(verbose: bool = False) -> None:
    """Sets each `ENVIRONMENT` variable the user has not set (the log level to 0 when
    `verbose`); effective before TensorFlow's import only."""
    for name, value in ENVIRONMENT.items():
        os.environ.setdefault(name, "0" if verbose and name == LOG_LEVEL else value)


def start(argv=None) -> None:
    """Start-up of a command line, before TensorFlow is imported: `prepare_environment` (verbose
    when `argv`, default `sys.argv[1:]`, holds `-v`/`--verbose`), then `import_tensorflow`."""
    argv = sys.argv[1:] if argv is None else argv
    verbose = any(arg in ("-v", "--verbose") for arg in argv)
    prepare_environment(verbose)
    import_tensorflow(verbose)


def import_tensorflow(verbose: bool = False) -> None:
    """Imports TensorFlow; unless `verbose`, its native libraries' output during the import
    (file descriptor 2) is captured, `STARTUP_NOTICES` lines are dropped and the rest written
    to stderr. Does nothing when TensorFlow is already imported."""
    if "tensorflow" in sys.modules:
        return
    if verbose:
        import tensorflow  # noqa: F401

        return
    sys.stderr.flush()
    with tempfile.TemporaryFile(mode="w+b") as capture:
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode(errors="replace")
    kept = [
        line
        for line in text.splitlines()
        if line.strip() and not any(notice in line for notice in STARTUP_NOTICES)
    ]
    if kept:
        print("\n".join(kept), file=sys.stderr)


def onednn_enabled():
    """Whether TensorFlow runs with its oneDNN CPU kernels in this process (None: unknown).
    Imports TensorFlow."""
    try:
        from tensorflow.python.util import _pywrap_util_port  # private; may change
    except ImportError:
        return None
    is_enabled = getattr(_pywrap_util_port, "IsMklEnabled", None)
    return None if is_enabled is None else bool(is_enabled())


def run_main(module, main):
    """Run `main()` as the `python -m <module>` process; exits with its return code.

    When TensorFlow is not imported yet, `start` runs first. When it is
    (a module inside `vxmtf`), the environment does not set `TF_ENABLE_ONEDNN_OPTS` and this
    process's TensorFlow has oneDNN off, the process is replaced (`os.execv`) by the same
    command with the defaults set; `TF_ENABLE_ONEDNN_OPTS=0` opts out.
    """
    if "tensorflow" not in sys.modules:
        start()
    elif ONEDNN not in os.environ and onednn_enabled() is False:
        prepare_environment()
        os.execv(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]])
    raise SystemExit(main())


#: Actions that take no value (a flag's presence is its value): their "default" is only the
#: value when the flag is absent, and printing it (`--no-export ... (default: True)`) misleads.
_FLAG_ACTIONS = (
    argparse._StoreConstAction,  # store_true / store_false subclass it
    argparse._AppendConstAction,
    argparse._CountAction,
    argparse._HelpAction,
    argparse._VersionAction,
)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """`--help` keeps the description's line breaks and shows the default of every option
    that has one (not of required options, flags, or options that are off unless given)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        # store_true / store_false / store_const / count: on or off when given
        flag = isinstance(action, _FLAG_ACTIONS) or action.nargs == 0
        quiet = flag or default in (None, argparse.SUPPRESS) or action.required
        if quiet or "%(default)" in text or "default:" in text:
            return text
        if isinstance(default, (list, tuple)):
            default = " ".join(str(v) for v in default)
        return f"{text} (default: {default})"


def _number(text: str, kind, test, expected: str):
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not test(value):
        raise argparse.ArgumentTypeError(f"expected {expected}. Received: {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse `type`: a finite number > 0 (`nan`, `inf`, 0 and negatives are usage errors)."""
    return _number(text, float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")


def non_negative_float(text: str) -> float:
    """argparse `type`: a finite number >= 0."""
    return _number(text, float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")


def non_negative_int(text: str) -> int:
    """argparse `type`: an integer >= 0."""
    return _number(text, int, lambda v: v >= 0, "an integer >= 0")


def add_model_arguments(parser, default=None, config=True):
    """`--model` (required unless `default`) and, with `config`, `--config`."""
    parser.add_argument(
        "--model",
        required=default is None,
        default=default,
        help="a .keras file, a SavedModel folder (or <base>/<name>: its newest version) or a "
        "training run folder",
    )
    if config:
        parser.add_argument(
            "--config",
            help="the run's config.json (default: <model>.config.json or config.json beside "
            "the model, or above its SavedModel export)",
        )


def add_registration_arguments(parser):
    """The options of `Registrator` beyond the model, shared by `vxmtf.register` and
    `evaluate.dice`: the affine stage (`--affine`, ...) and test-time refinement
    (`--refine-steps`, ...). `registration_options(args)` turns them into keyword arguments."""
    parser.add_argument(
        "--precision",
        choices=("float32", "bfloat16"),
        default="float32",
        help="arithmetic of the network's U-Net: bfloat16 is faster on CPUs with AVX512_BF16 "
        "or AMX and on GPUs (fields and warps stay float32; Keras models only)",
    )
    group = parser.add_argument_group("affine stage (raw scans: before the deformable model)")
    group.add_argument(
        "--affine",
        action="store_true",
        help="register affinely first, in world coordinates from both files' affines",
    )
    group.add_argument(
        "--affine-type",
        choices=("affine", "similarity", "rigid"),
        default="affine",
        help="degrees of freedom: 12, 7 or 6 in 3D",
    )
    group.add_argument(
        "--affine-metric",
        choices=("ncc", "mse", "mi"),
        default="ncc",
        help="similarity of the affine stage (mi: mutual information, for other contrasts)",
    )
    group = parser.add_argument_group("test-time refinement (instance optimisation)")
    group.add_argument(
        "--refine-steps",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="Adam steps optimising the network's field on each pair, on the model's own "
        "objective (0: the network alone)",
    )
    group.add_argument(
        "--refine-lr",
        type=positive_float,
        default=0.3,
        metavar="LR",
        help="Adam step size (voxels of the field's grid)",
    )
    group.add_argument(
        "--refine-full-steps",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="Adam steps last, against the images at full resolution (for a run trained "
        "downsampled)",
    )
    group.add_argument(
        "--refine-full-fine-steps",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="Adam steps after those, against the full-resolution images, on the field resized "
        "2x finer (slower per step, a little more accurate)",
    )
    group.add_argument(
        "--refine-full-lambda",
        type=non_negative_float,
        default=None,
        metavar="F",
        help="lambda of the full-resolution steps alone (default: the model's)",
    )
    group.add_argument(
        "--refine-coarse-steps",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="Adam steps first, on a smooth update on a 2x coarser grid",
    )


def registration_options(args) -> dict:
    """`refine`, `affine` and `precision` keyword arguments of `Registrator` from
    `add_registration_arguments` options."""
    refine = {
        "steps": args.refine_steps,
        "coarse_steps": args.refine_coarse_steps,
        "full_steps": args.refine_full_steps,
        "full_fine_steps": args.refine_full_fine_steps,
        "full_reg_weight": args.refine_full_lambda,
        "learning_rate": args.refine_lr,
    }
    affine = None
    if args.affine:
        affine = {"transform": args.affine_type, "metric": args.affine_metric}
    return {"refine": refine, "affine": affine, "precision": args.precision}


def add_verbose_argument(parser):
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")


def parse_args(parser: argparse.ArgumentParser, argv):
    """`(args, None)`, or `(None, exit code)` after `--help` (0) or a usage error (2, with
    argparse's message on stderr)."""
    try:
        return parser.parse_args(argv), None
    except SystemExit as exit_:
        return None, int(exit_.code or 0)


def setup_logging(verbose: bool) -> None:
    """Python logging at INFO (`verbose`) or WARNING, one line per record on stderr."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def report_error(error: BaseException) -> int:
    """Prints `error: <message>` on stderr; returns `EXIT_BAD_INPUT`."""
    print(f"error: {error}", file=sys.stderr)
    return EXIT_BAD_INPUT
