"""`python -m benchmarks.bench_integrate`: scaling and squaring unrolled or as a loop, timed.

`vxmtf.ops.integrate_velocity` composes the field with itself `steps` times. Unrolled
(``method="unrolled"``) XLA fuses each squaring's sampling into the next and recomputes it
per corner; as a ``tf.while_loop`` (``"loop"``) each squaring stays one computation. ``"auto"``
(the default) loops inside XLA when no gradient tape records, and unrolls otherwise. This
script times, in one process and alternating the methods round by round, on the velocity
grids of the shipped LPBA40 models (40x48x40 and 80x96x80, 7 steps):

- ``forward``: the integration alone (what registration and every refinement stage's final
  evaluation run);
- ``gradient``: forward and backward (gradient of ``sum(integrate(v) * w)``, as refinement).

Each case reports the median of ``--rounds`` calls after a warm-up and the median of the
per-round ratios to ``unrolled``, as a markdown table (``--out`` also writes it with the
machine's description to a JSON file)::

    python -m benchmarks.bench_integrate            # graph mode
    python -m benchmarks.bench_integrate --jit      # XLA
"""

import vxmtf_cli  # noqa: E402  (imports no TensorFlow)

vxmtf_cli.prepare_environment()

import sys  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks import side_by_side  # noqa: E402
from benchmarks.timing import time_alternating  # noqa: E402
from vxmtf.ops.integrate import integrate_velocity  # noqa: E402

METHODS = ("unrolled", "auto", "loop")
#: (kind, velocity grid)
CASES = (
    ("forward", (40, 48, 40)),
    ("gradient", (40, 48, 40)),
    ("forward", (80, 96, 80)),
    ("gradient", (80, 96, 80)),
)
STEPS = 7


def build(kind, shape, method, jit_compile, seed=0):
    """A zero-argument callable running one case with one method to completion."""
    rng = np.random.default_rng(seed)
    # About 2 voxels of displacement, as a trained model's velocities.
    velocity = tf.constant(rng.normal(scale=2.0, size=(1, *shape, 3)).astype(np.float32))
    if kind == "forward":

        def run(v):
            return integrate_velocity(v, STEPS, method=method)

    else:
        upstream = tf.constant(rng.normal(size=(1, *shape, 3)).astype(np.float32))

        def run(v):
            with tf.GradientTape() as tape:
                tape.watch(v)
                value = tf.reduce_sum(integrate_velocity(v, STEPS, method=method) * upstream)
            return tape.gradient(value, v)

    function = tf.function(run, jit_compile=jit_compile, autograph=False)
    return lambda: function(velocity).numpy()


def main(argv=None):
    args = side_by_side.parse_args(__doc__.splitlines()[0], argv)
    print(side_by_side.header(args.jit, METHODS, "unrolled / auto"))
    rows = []
    for kind, shape in CASES:
        calls = {m: build(kind, shape, m, args.jit) for m in METHODS}
        result = time_alternating(calls, args.rounds, baseline="unrolled")
        name = f"{kind} {'x'.join(map(str, shape))}, {STEPS} steps"
        rows.append({"case": name, "jit_compile": args.jit, **result})
        print(side_by_side.row(name, result, METHODS, "baseline_over_this"), flush=True)
    if args.out:
        side_by_side.write(args.out, "benchmarks.bench_integrate", argv, args.rounds, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
