"""The measured workloads: a training step, a registration, the data pipeline, a machine peak.

Each `*_workload` function builds what it measures in the current process, times it and returns
a JSON-ready dict; `benchmarks.case` runs exactly one of them per process so that the peak
resident memory belongs to that workload alone. Timings are wall-clock seconds of complete,
synchronous calls (the results are brought back to NumPy), after untimed warm-up calls that
trace, compile and allocate.
"""

from __future__ import annotations

import statistics
import tempfile
import time

import numpy as np
import tensorflow as tf

from benchmarks.flops import TRAIN_FACTOR, conv_flops
from benchmarks.timing import random_arrays, time_calls
from vxmtf.networks import VxmDense, default_slab
from vxmtf.registration import Registrator
from vxmtf.training.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from vxmtf.training.data import TrainingData

# The training model (losses, loss weights, the Grad multiplier for a half-resolution velocity)
# is built exactly as `vxmtf.training.train` builds it.
from vxmtf.training.trainer import build_training_model

__all__ = [
    "build_trainer",
    "peak_workload",
    "pipeline_workload",
    "random_pair",
    "register_workload",
    "serve_cost_workload",
    "serve_workload",
    "tiling_cost_workload",
    "time_calls",
    "train_workload",
]


def random_pair(shape, seed=0):
    """A `(moving, fixed)` pair of `(1, *shape, 1)` float32 tensors in [0, 1]."""
    moving, fixed = random_arrays(shape, seed)
    return tf.constant(moving[None, ..., None]), tf.constant(fixed[None, ..., None])


def build_trainer(shape, int_steps, xla=False, transposed_decoder=True):
    """The default VoxelMorph model at `shape` and its compiled training wrapper
    (`transposed_decoder=False`: the explicit decoder, the previous default).

    Encoder 16-32-32-32, decoder 32-32-32-32-32-16-16, NCC (window 9) on `moved` with weight 1
    plus Grad("l2") on `preint_flow` with weight 1 (times `int_resolution` = 2 when integrating),
    Adam 1e-4: `vxmtf.training.trainer.build_training_model` with a default `RunConfig`.

    Returns:
        `(model, trainer, config)`.
    """
    config = RunConfig(model=ModelConfig(int_steps=int_steps), train=TrainConfig(xla=xla))
    built = build_training_model(config, shape, transposed_decoder=transposed_decoder)
    return built.model, built.compile(), config


def train_workload(shape, int_steps, repeats, warmup, xla=False, transposed_decoder=True):
    """Seconds per `train_on_batch` step on one repeated pair, and achieved GFLOP/s (of the
    convolutions the model runs: fewer with the transposed decoder)."""
    model, trainer, _ = build_trainer(shape, int_steps, xla, transposed_decoder)
    moving, fixed = random_pair(shape)
    x = {"moving": moving, "fixed": fixed}
    y = {"moved": fixed, "preint_flow": tf.zeros([1, 1])}  # Grad ignores its target
    losses = []

    def step():
        logs = trainer.train_on_batch(x, y, return_dict=True)
        losses.append(float(logs["loss"]))

    result = time_calls(step, repeats, warmup)
    forward, _ = conv_flops(model)
    result["flops"] = TRAIN_FACTOR * forward
    result["gflops_per_s"] = result["flops"] / result["median"] / 1e9
    result["losses"] = losses  # NaN is kept (JSON NaN) and flagged in the report
    result["finite_losses"] = bool(np.all(np.isfinite(losses)))
    result["transposed_decoder"] = transposed_decoder
    return result


def build_registrator(
    shape, int_steps, tiled=True, slab=None, precision="float32", transposed_decoder=True
):
    """The default VoxelMorph model at `shape` (random weights) in a `Registrator`: the package's
    registration path (`python -m vxmtf.register`, `python -m evaluate.dice`), the U-Net in
    `precision` ("float32" or "bfloat16"), its decoder transposed (the default) or explicit.

    Returns:
        `(model, registrator)`.
    """
    model = VxmDense(
        tuple(shape), int_steps=int_steps, transposed_decoder=transposed_decoder, name="vxm_dense"
    )
    config = RunConfig(model=ModelConfig(int_steps=int_steps))  # min-max, no downsampling
    registrator = Registrator(model, config=config, tiled=tiled, slab=slab, precision=precision)
    return model, registrator


def random_volumes(shape, seed=0):
    """A `(moving, fixed)` pair of `(*shape)` float32 NumPy volumes in [0, 1]."""
    moving, fixed = random_pair(shape, seed)
    return moving.numpy()[0, ..., 0], fixed.numpy()[0, ..., 0]


def register_workload(
    shape,
    int_steps,
    repeats,
    warmup,
    tiled=True,
    slab=None,
    precision="float32",
    transposed_decoder=True,
):
    """Seconds per registration of one pair of `(*shape)` NumPy volumes with `Registrator.register`
    (normalisation, the network, the warp of the moving image; results back in NumPy), and
    GFLOP/s of the untiled network's convolutions.

    `tiled` chooses between the slab-wise network (`vxmtf.networks.tiled_displacement`, the
    default) and the whole network in one graph; `slab` is None for the automatic slab size;
    `precision` is the U-Net's (`Registrator(precision=...)`); `transposed_decoder=False` runs
    the explicit decoder (the previous default).
    """
    model, registrator = build_registrator(
        shape, int_steps, tiled, slab, precision, transposed_decoder
    )
    moving, fixed = random_volumes(shape)

    def register():
        registrator.register(moving, fixed).moved.ravel()[:1]

    result = time_calls(register, repeats, warmup)
    result["flops"], _ = conv_flops(model)
    result["gflops_per_s"] = result["flops"] / result["median"] / 1e9
    result["tiled"] = tiled
    result["precision"] = precision
    result["transposed_decoder"] = transposed_decoder
    if tiled:
        result["slab"] = slab or default_slab((1, *shape, 1), model)
    return result


def _exported_server(shape, int_steps, folder, tiled, transposed_decoder=True):
    """`serving_default` of the default model at `shape` (random weights, min-max, no
    downsampling) exported to `folder` and loaded back, and a raw `(moving, fixed)` pair."""
    from vxmtf.export import export_saved_model

    model = VxmDense(
        tuple(shape), int_steps=int_steps, transposed_decoder=transposed_decoder, name="vxm_dense"
    )
    config = RunConfig(model=ModelConfig(int_steps=int_steps))  # min-max, no downsampling
    path = export_saved_model(model, folder, f"vxm_{tiled}", config=config, tiled=tiled)
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]

    def request(moving, fixed):
        out = serve(moving=moving, fixed=fixed)
        return out["displacement"].numpy().ravel()[:1], out["moved"].numpy().ravel()[:1]

    return request


def _raw_pair(shape):
    """`random_pair` scaled and offset like scanner intensities (the export normalises)."""
    return tuple(1000.0 * x.numpy() + 50.0 for x in random_pair(shape))


def serve_workload(shape, int_steps, repeats, warmup, tiled=True, transposed_decoder=True):
    """Seconds per `serving_default` call of a `vxmtf.export` SavedModel on one raw pair.

    The default VoxelMorph model at `shape` (random weights) is exported with a default run
    configuration (min-max normalisation, no downsampling), loaded back with
    `tf.saved_model.load` and called on a pair of `(1, *shape, 1)` float32 volumes scaled and
    offset like scanner intensities: the request a model server runs, normalisation, network
    and warp of the moving image included (results back in NumPy). `tiled` chooses the
    export's slab-wise network and row-chunked warps (the default) or the whole graph;
    `transposed_decoder=False` exports the explicit decoder (the previous default).
    """
    moving, fixed = _raw_pair(shape)
    with tempfile.TemporaryDirectory() as folder:
        request = _exported_server(shape, int_steps, folder, tiled, transposed_decoder)
        result = time_calls(lambda: request(moving, fixed), repeats, warmup)
    result["tiled"] = tiled
    result["transposed_decoder"] = transposed_decoder
    if tiled:
        result["slab"] = default_slab((1, *shape, 1), VxmDense(tuple(shape), int_steps=int_steps))
    return result


def serve_cost_workload(shape, int_steps, repeats, warmup):
    """Tiled against whole serving, timed alternately in one process (as
    `tiling_cost_workload`): `{"tiled": ..., "untiled": ...}` times and `"ratio"`, the median
    of the per-repeat tiled / whole ratios. The peak memory holds both exports."""
    moving, fixed = _raw_pair(shape)
    with tempfile.TemporaryDirectory() as folder:
        calls = {
            "tiled": _exported_server(shape, int_steps, folder, True),
            "untiled": _exported_server(shape, int_steps, folder, False),
        }
        for request in calls.values():
            for _ in range(warmup):
                request(moving, fixed)
        times = {name: [] for name in calls}
        for repeat in range(repeats):
            order = list(calls) if repeat % 2 == 0 else list(calls)[::-1]
            for name in order:
                start = time.perf_counter()
                calls[name](moving, fixed)
                times[name].append(time.perf_counter() - start)
    result = {name: {"median": statistics.median(t), "times": t} for name, t in times.items()}
    pairs = zip(times["tiled"], times["untiled"], strict=True)
    result["ratio"] = statistics.median(t / u for t, u in pairs)
    return result


def tiling_cost_workload(shape, int_steps, repeats, warmup):
    """Tiled against untiled registration, timed alternately in one process.

    Under a fluctuating background load, interleaving is what makes the two comparable: each
    repeat times one tiled and one untiled `Registrator.register` call of the same pair (the
    order alternating), and the ratio of each such couple is taken. CPU seconds
    (`time.process_time`, all threads) are recorded too. The peak memory of this process holds
    both and is not the one of either path (see the `register-*` cases).

    Returns:
        `{"tiled": ..., "untiled": ...}` as `time_calls` gives them plus `"cpu_times"`, and
        `"ratio"` / `"cpu_ratio"`: median of the per-repeat tiled / untiled ratios.
    """
    model, tiled = build_registrator(shape, int_steps, tiled=True)
    config = RunConfig(model=ModelConfig(int_steps=int_steps))
    untiled = Registrator(model, config=config, tiled=False)
    moving, fixed = random_volumes(shape)
    calls = {"tiled": tiled, "untiled": untiled}
    for registrator in calls.values():
        for _ in range(warmup):
            registrator.register(moving, fixed)
    times = {name: [] for name in calls}
    cpu_times = {name: [] for name in calls}
    for repeat in range(repeats):
        order = list(calls) if repeat % 2 == 0 else list(calls)[::-1]
        for name in order:
            start, cpu = time.perf_counter(), time.process_time()
            calls[name].register(moving, fixed).moved.ravel()[:1]
            times[name].append(time.perf_counter() - start)
            cpu_times[name].append(time.process_time() - cpu)
    result = {"slab": default_slab((1, *shape, 1), model)}
    for name in calls:
        result[name] = {
            "median": statistics.median(times[name]),
            "min": min(times[name]),
            "max": max(times[name]),
            "times": times[name],
            "cpu_median": statistics.median(cpu_times[name]),
            "cpu_times": cpu_times[name],
        }
    for key, values in (("ratio", times), ("cpu_ratio", cpu_times)):
        pairs = zip(values["tiled"], values["untiled"], strict=True)
        result[key] = statistics.median(t / u for t, u in pairs)
    return result


def pipeline_workload(dataset, downsample, pairs, warmup):
    """Pairs per second delivered by the training `tf.data` pipeline on real files.

    The pipeline is the one `vxmtf.training.train` feeds to `fit` for
    `RunConfig(DataConfig(data=dataset, downsample=downsample))` (scan-to-scan pairs, files read
    and preprocessed in parallel, prefetched), consumed alone: nothing else runs meanwhile.
    """
    config = RunConfig(data=DataConfig(data=str(dataset), downsample=downsample))
    data = TrainingData(config)
    iterator = iter(data.dataset(batch_size=1, seed=0))
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(pairs):
        x, _ = next(iterator)
        x["moving"].numpy().ravel()[:1]
    seconds = time.perf_counter() - start
    return {
        "shape": list(data.shape),
        "pairs": pairs,
        "seconds": seconds,
        "pairs_per_s": pairs / seconds,
    }


def peak_workload(matmul_size, conv_shape, repeats):
    """The machine's float32 peak, best of `repeats`: a square matmul and a 32->32 Conv3D.

    The matmul (`2 n^3` FLOPs) is the reference peak. The Conv3D (3^3 kernel, 32 channels in and
    out, batch 1, `conv_shape` voxels, as in the U-Net's full-resolution decoder) shows what
    oneDNN's convolutions reach on this machine.
    """
    n = int(matmul_size)
    a = tf.random.uniform([n, n])
    b = tf.random.uniform([n, n])
    matmul = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
    matmul_time = time_calls(lambda: matmul().numpy(), repeats, warmup=1)["min"]

    x = tf.random.uniform([1, *conv_shape, 32])
    kernel = tf.random.normal([3, 3, 3, 32, 32])
    conv = tf.function(
        lambda: tf.reduce_sum(tf.nn.conv3d(x, kernel, strides=[1] * 5, padding="SAME"))
    )
    conv_time = time_calls(lambda: conv().numpy(), repeats, warmup=1)["min"]
    conv_flop = 2 * 27 * 32 * 32 * int(np.prod(conv_shape))
    return {
        "matmul_size": n,
        "matmul_gflops_per_s": 2 * n**3 / matmul_time / 1e9,
        "conv3d_shape": list(conv_shape),
        "conv3d_gflops_per_s": conv_flop / conv_time / 1e9,
    }
