"""Timing and random inputs shared by the workloads of vxmtf and of the official baseline.

NumPy only (no TensorFlow, no Keras): `benchmarks.official` uses it in a process that must load
Keras 2 (tf-keras) and nothing of Keras 3.
"""

from __future__ import annotations

import statistics
import time

import numpy as np


def time_calls(fn, repeats, warmup):
    """Run `fn()` `warmup` times untimed, then `repeats` times timed.

    Returns:
        `{"median", "min", "max"}` seconds and `"times"`, the list of timed seconds.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {
        "median": statistics.median(times),
        "min": min(times),
        "max": max(times),
        "times": times,
    }


def random_arrays(shape, seed=0):
    """A `(moving, fixed)` pair of `(*shape)` float32 NumPy volumes in [0, 1]: uniform noise and
    the same noise shifted 2 voxels along the first axis, lightly re-noised."""
    rng = np.random.default_rng(seed)
    fixed = rng.uniform(size=tuple(shape)).astype(np.float32)
    moving = np.roll(fixed, 2, axis=0) * 0.9 + 0.1 * rng.uniform(size=fixed.shape)
    return moving.astype(np.float32), fixed


def time_alternating(functions, rounds, baseline):
    """Time several zero-argument callables side by side, rotating their order every round.

    Args:
        functions: `{name: fn}`; each `fn()` must block until its work is done. Every one is
            called once untimed first (tracing, compilation, warm-up).
        rounds: timed calls of each.
        baseline: the name the ratios are taken against.

    Returns:
        `{name: {"median_ms", "baseline_over_this"}}`: the median of the timed calls and the
        median of the per-round ratios `baseline seconds / this one's seconds` (so a machine's
        drift during the run cancels within each round).
    """
    names = list(functions)
    for name in names:
        functions[name]()
    seconds = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            functions[name]()
            seconds[name].append(time.perf_counter() - start)
    return {
        name: {
            "median_ms": 1e3 * statistics.median(seconds[name]),
            "baseline_over_this": statistics.median(
                b / s for b, s in zip(seconds[baseline], seconds[name], strict=True)
            ),
        }
        for name in names
    }
