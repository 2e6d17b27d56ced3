"""`python -m benchmarks.bench_rescale`: the ways `rescale_field` applies its resize, timed.

`vxmtf.ops.rescale_field` resizes a field one axis at a time by a linear map ``x -> W x``. It
can apply it by gathers (``method="gather"``, differentiated by TensorFlow: an unsorted segment
sum over every output element), by matrix products (``"product"``), or as it does by default
(``"auto"``: gathers forward and ``W^T`` backward outside XLA, products inside XLA). This script
times, in one process and alternating the methods round by round:

- ``resize``: forward and backward of the resize alone (gradient of ``sum(resize(v) * w)``);
- ``forward``: the resize alone, forward only (what registration runs);
- ``refine``: one full-resolution refinement step's objective and gradient, as
  `vxmtf.refine.refine_field` computes it for the shipped LPBA40 model (velocity 40x48x40,
  7 scaling-and-squaring steps, images 160x192x160, NCC window 9 + lambda x Grad).

Each case reports the median of ``--rounds`` calls after a warm-up, and the median of the
per-round ratios to ``gather``, as a markdown table (``--out`` also writes it with the machine's
description to a JSON file)::

    python -m benchmarks.bench_rescale              # graph mode
    python -m benchmarks.bench_rescale --jit        # XLA, as bench_refine and Registrator refine
"""

import vxmtf_cli  # noqa: E402  (imports no TensorFlow)

vxmtf_cli.prepare_environment()

import sys  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks import side_by_side  # noqa: E402
from benchmarks.timing import time_alternating  # noqa: E402
from vxmtf.losses.grad import grad_penalty  # noqa: E402
from vxmtf.losses.ncc import mean_local_ncc  # noqa: E402
from vxmtf.ops.integrate import integrate_velocity  # noqa: E402
from vxmtf.ops.resample import warp  # noqa: E402
from vxmtf.ops.rescale import rescale_field  # noqa: E402

METHODS = ("gather", "auto", "product")
#: (kind, input grid, output grid): the refinement grids of the shipped LPBA40 model.
CASES = (
    ("resize", (40, 48, 40), (160, 192, 160)),
    ("resize", (40, 48, 40), (80, 96, 80)),
    ("resize", (80, 96, 80), (160, 192, 160)),
    ("forward", (80, 96, 80), (160, 192, 160)),
    ("refine", (40, 48, 40), (160, 192, 160)),
)


def build(kind, in_shape, out_shape, method, jit_compile, seed=0):
    """A `tf.function` for one case and method, and its arguments."""
    rng = np.random.default_rng(seed)
    field = tf.constant(rng.normal(size=(1, *in_shape, 3)).astype(np.float32))
    if kind == "forward":
        function = tf.function(
            lambda v: rescale_field(v, out_shape=out_shape, method=method),
            jit_compile=jit_compile,
            autograph=False,
        )
        return function, (field,)
    if kind == "resize":
        upstream = tf.constant(rng.normal(size=(1, *out_shape, 3)).astype(np.float32))

        def resize(v):
            with tf.GradientTape() as tape:
                tape.watch(v)
                value = tf.reduce_sum(
                    rescale_field(v, out_shape=out_shape, method=method) * upstream
                )
            return tape.gradient(value, v)

        return tf.function(resize, jit_compile=jit_compile, autograph=False), (field,)
    moving = tf.constant(rng.random((1, *out_shape, 1), np.float32))
    fixed = tf.constant(rng.random((1, *out_shape, 1), np.float32))

    def refine(moving, fixed, v):  # refine_field's objective and its gradient, one step
        with tf.GradientTape() as tape:
            tape.watch(v)
            displacement = rescale_field(
                integrate_velocity(v, 7), out_shape=out_shape, method=method
            )
            similarity = -mean_local_ncc(fixed, warp(moving, displacement), window=9)
            loss = tf.reduce_sum(similarity) + 4.0 * tf.reduce_sum(grad_penalty(v, "l2"))
        return tape.gradient(loss, v)

    function = tf.function(refine, jit_compile=jit_compile, autograph=False)
    return function, (moving, fixed, 0.5 * field)


def run_case(kind, in_shape, out_shape, rounds, jit_compile, methods=METHODS):
    """Median ms per method and median per-round ratio to ``gather`` (``gather_over_this``)."""
    calls = {}
    for m in methods:
        function, args = build(kind, in_shape, out_shape, m, jit_compile)
        calls[m] = lambda function=function, args=args: function(*args).numpy()
    timed = time_alternating(calls, rounds, baseline="gather")
    return {
        m: {"median_ms": t["median_ms"], "gather_over_this": t["baseline_over_this"]}
        for m, t in timed.items()
    }


def main(argv=None):
    args = side_by_side.parse_args(__doc__.splitlines()[0], argv)
    print(side_by_side.header(args.jit, METHODS, "gather / auto"))
    rows = []
    for kind, in_shape, out_shape in CASES:
        result = run_case(kind, in_shape, out_shape, args.rounds, args.jit)
        name = f"{kind} {'x'.join(map(str, in_shape))} -> {'x'.join(map(str, out_shape))}"
        rows.append({"case": name, "jit_compile": args.jit, **result})
        print(side_by_side.row(name, result, METHODS, "gather_over_this"), flush=True)
    if args.out:
        side_by_side.write(args.out, "benchmarks.bench_rescale", argv, args.rounds, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
