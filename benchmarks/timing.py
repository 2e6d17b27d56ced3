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
