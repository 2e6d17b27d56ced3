"""What every vxmtf command line shares; importing it loads no TensorFlow.

The entry points (`python -m train`, `python -m evaluate.dice`, `python -m vxmtf.register`,
`python -m vxmtf.export`, the benchmarks) parse their own options and call one library function;
around that they share, from here:

- the environment TensorFlow reads when it is imported (`ENVIRONMENT`, set by
  `prepare_environment` unless the user set it): TensorFlow's oneDNN CPU kernels on
  (`TF_ENABLE_ONEDNN_OPTS=1`; TensorFlow enables them by default only on CPUs with AVX-512-class
  features, although they make 3D convolutions several times faster on other x86 CPUs too) and
  its C++ INFO lines off (`TF_CPP_MIN_LOG_LEVEL=1`);
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
import os
import sys

ONEDNN = "TF_ENABLE_ONEDNN_OPTS"
LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL"
#: Environment variables TensorFlow reads at import, and the values the tools default them to.
ENVIRONMENT = {ONEDNN: "1", LOG_LEVEL: "1"}
EXIT_OK = 0
EXIT_BAD_INPUT = 2
#: The exceptions that mean bad input (files, values, options), reported without a traceback.
BAD_INPUT = (OSError, ValueError, TypeError, ImportError, IndexError)

__all__ = [
    "BAD_INPUT",
    "ENVIRONMENT",
    "EXIT_BAD_INPUT",
    "EXIT_OK",
    "add_model_arguments",
    "add_verbose_argument",
    "onednn_enabled",
    "parse_args",
    "prepare_environment",
    "report_error",
    "run_main",
    "setup_logging",
]


def prepare_environment() -> None:
    """Sets each `ENVIRONMENT` variable the user has not set; effective before TensorFlow's
    import only."""
    for name, value in ENVIRONMENT.items():
        os.environ.setdefault(name, value)


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

    When TensorFlow is not imported yet, the `ENVIRONMENT` defaults are set first. When it is
    (a module inside `vxmtf`), the environment does not set `TF_ENABLE_ONEDNN_OPTS` and this
    process's TensorFlow has oneDNN off, the process is replaced (`os.execv`) by the same
    command with the defaults set; `TF_ENABLE_ONEDNN_OPTS=0` opts out.
    """
    if "tensorflow" not in sys.modules:
        prepare_environment()
    elif ONEDNN not in os.environ and onednn_enabled() is False:
        prepare_environment()
        os.execv(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]])
    raise SystemExit(main())


def add_model_arguments(parser, default=None, config=True):
    """`--model` (required unless `default`) and, with `config`, `--config`."""
    parser.add_argument(
        "--model",
        required=default is None,
        default=default,
        help="a .keras file, a SavedModel folder (or <base>/<name>: its newest version) or a "
        "training run folder" + (f"; default: {default}" if default else ""),
    )
    if config:
        parser.add_argument(
            "--config",
            help="the run's config.json (default: <model>.config.json or config.json beside "
            "the model, or above its SavedModel export)",
        )


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
