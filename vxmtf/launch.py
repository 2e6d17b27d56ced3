"""Start-up of the `python -m vxmtf.<tool>` command-line entry points.

TensorFlow decides at import whether to use its oneDNN CPU kernels (`TF_ENABLE_ONEDNN_OPTS`):
on by default only on CPUs with AVX-512-class features, although they make the 3D convolutions
several times faster on other x86 CPUs too. The entry points outside the package (`python -m
train`, `python -m evaluate.dice`) set the variable before importing TensorFlow. A module inside
the package cannot: `python -m vxmtf.register` imports `vxmtf`, and so TensorFlow, before the
module's own code runs. `run_main` therefore starts the tool again in a fresh interpreter with
the variable set, once, when the user has not set it and oneDNN is off. The library itself never
touches the environment.
"""

import os
import sys

ONEDNN = "TF_ENABLE_ONEDNN_OPTS"


def onednn_enabled():
    """Whether TensorFlow runs with its oneDNN CPU kernels in this process (None: unknown)."""
    try:
        from tensorflow.python.util import _pywrap_util_port  # private; may change
    except ImportError:
        return None
    is_enabled = getattr(_pywrap_util_port, "IsMklEnabled", None)
    return None if is_enabled is None else bool(is_enabled())


def run_main(module, main):
    """Run `main()` as the `python -m <module>` process, first turning oneDNN on if needed.

    When the environment does not set `TF_ENABLE_ONEDNN_OPTS` and this process's TensorFlow
    has oneDNN off, the process is replaced (`os.execv`) by the same command with the variable
    set to 1; `TF_ENABLE_ONEDNN_OPTS=0` opts out. Exits with `main()`'s return code.
    """
    if ONEDNN not in os.environ and onednn_enabled() is False:
        os.environ[ONEDNN] = "1"
        os.execv(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]])
    raise SystemExit(main())
