"""Speed of the NCC loss: separable box sums (vxmtf) against a dense window^3 convolution.

The dense variant is the approach of the original VoxelMorph code: each of the five local
sums (I, J, I^2, J^2, IJ) is a `tf.nn.conv3d` with a 9x9x9 kernel of ones. vxmtf's `NCC`
stacks the five quantities and sums them with one separable `box_sum` call. Both run as
forward + backward (gradient with respect to the moved image) inside a `tf.function`; the
median of `--repeats` timed calls after one warm-up call is reported, as a markdown table.

    python benchmarks/bench_ncc.py                      # graph mode (box_sum: "conv")
    python benchmarks/bench_ncc.py --jit                # XLA (box_sum: "shift")
    python benchmarks/bench_ncc.py --box-sum            # box_sum methods alone, 5 channels

oneDNN is switched on (TF_ENABLE_ONEDNN_OPTS=1) unless the environment already sets it, as in
the project's entry points. This is a benchmark script, not a test.
"""

import os

import vxmtf_cli  # noqa: E402  (imports no TensorFlow)

vxmtf_cli.prepare_environment()

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

# Measure this checkout's vxmtf, installed or not.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vxmtf.losses.ncc import NCC  # noqa: E402
from vxmtf.ops.filters import box_sum  # noqa: E402

DEFAULT_SIZES = ("160x192x224", "80x96x112")


def dense_ncc_loss(fixed, moved, window=9, eps=1e-5):
    """Negative mean squared local NCC with one dense ones-kernel conv3d per local sum."""
    kernel = tf.ones([window] * 3 + [1, 1], fixed.dtype)
    count = float(window**3)

    def local_sum(t):
        return tf.nn.conv3d(t, kernel, strides=[1] * 5, padding="SAME")

    sum_i, sum_j = local_sum(fixed), local_sum(moved)
    sum_ii, sum_jj = local_sum(fixed * fixed), local_sum(moved * moved)
    sum_ij = local_sum(fixed * moved)
    cross = sum_ij - sum_i * sum_j / count
    var_i = sum_ii - sum_i * sum_i / count
    var_j = sum_jj - sum_j * sum_j / count
    cc = cross * cross / (var_i * var_j + eps)
    return -tf.reduce_mean(cc, axis=[1, 2, 3, 4])


def _forward_backward(loss_fn, jit_compile):
    @tf.function(jit_compile=jit_compile)
    def step(fixed, moved):
        with tf.GradientTape() as tape:
            tape.watch(moved)
            loss = tf.reduce_mean(loss_fn(fixed, moved))
        return loss, tape.gradient(loss, moved)

    return step


def _median_seconds(fn, args, repeats):
    loss, grad = fn(*args)  # warm-up: tracing, compilation, allocation
    _ = loss.numpy(), grad.numpy().ravel()[:1]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        loss, grad = fn(*args)
        _ = loss.numpy(), grad.numpy().ravel()[:1]
        times.append(time.perf_counter() - start)
    return statistics.median(times), float(loss)


def _volumes(size, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    shape = (1, *size, channels)
    fixed = rng.uniform(size=shape).astype(np.float32)
    moved = (0.7 * fixed + 0.3 * rng.uniform(size=shape)).astype(np.float32)
    return tf.constant(fixed), tf.constant(moved)


def bench_ncc(sizes, repeats, jit_compile, window):
    ncc = NCC(window=window)
    fast = _forward_backward(ncc, jit_compile)
    dense = _forward_backward(lambda f, m: dense_ncc_loss(f, m, window), jit_compile)
    rows = []
    for size in sizes:
        fixed, moved = _volumes(size)
        t_fast, v_fast = _median_seconds(fast, (fixed, moved), repeats)
        t_dense, v_dense = _median_seconds(dense, (fixed, moved), repeats)
        rows.append((size, t_fast, t_dense, abs(v_fast - v_dense)))
    print(
        f"| volume | vxmtf NCC (separable box_sum) | dense {window}^3 conv3d NCC | speed-up "
        "| loss diff |"
    )
    print("|---|---|---|---|---|")
    for size, t_fast, t_dense, diff in rows:
        print(
            f"| {'x'.join(map(str, size))} | {t_fast * 1e3:.0f} ms | {t_dense * 1e3:.0f} ms "
            f"| {t_dense / t_fast:.1f}x | {diff:.1e} |"
        )


def bench_box_sum(sizes, repeats, jit_compile, window, channels=5):
    print(f"| volume | method | box_sum forward + backward ({channels} channels) |")
    print("|---|---|---|")
    for size in sizes:
        x, _ = _volumes(size, channels)
        for method in ("conv", "shift"):
            step = _forward_backward(
                lambda _, t, method=method: tf.reduce_sum(box_sum(t, window, method) ** 2),
                jit_compile,
            )
            seconds, _ = _median_seconds(step, (x, x), repeats)
            print(f"| {'x'.join(map(str, size))} | {method} | {seconds * 1e3:.0f} ms |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        nargs="+",
        default=list(DEFAULT_SIZES),
        help="spatial sizes DxHxW (default: %(default)s)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per case")
    parser.add_argument("--window", type=int, default=9)
    parser.add_argument("--jit", action="store_true", help="compile the steps with XLA")
    parser.add_argument(
        "--box-sum",
        action="store_true",
        help="time box_sum's 'conv' and 'shift' methods instead of the losses",
    )
    args = parser.parse_args(argv)
    sizes = [tuple(int(s) for s in size.split("x")) for size in args.sizes]

    print(
        f"TensorFlow {tf.__version__}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPU(s), TF_ENABLE_ONEDNN_OPTS={os.environ['TF_ENABLE_ONEDNN_OPTS']}, "
        f"XLA={'on' if args.jit else 'off'}, window={args.window}, batch 1, float32, "
        f"median of {args.repeats} after a warm-up\n"
    )
    if args.box_sum:
        bench_box_sum(sizes, args.repeats, args.jit, args.window)
    else:
        bench_ncc(sizes, args.repeats, args.jit, args.window)
    argv = sys.argv[1:] if argv is None else argv
    command = " ".join(["python", "benchmarks/bench_ncc.py", *argv])
    print(f"\nReproduce: `{command}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
