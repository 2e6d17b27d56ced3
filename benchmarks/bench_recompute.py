"""`python -m benchmarks.bench_recompute`: a training step with and without recomputation, and
the U-Net's decoder forms (transposed, the default, against the explicit layers).

Measures `VxmDense(recompute=...)` (`python -m train --recompute`) on the training step of
`benchmarks.workloads`: default network, batch 1, NCC window 9 on `moved` + Grad l2 on
`preint_flow`, Adam; the training model built by `vxmtf.training.trainer.build_training_model`,
timed with `train_on_batch` on one repeated random pair. For each shape and int_steps:

- memory: each setting (recompute off / on) runs in its own process, `--rounds` times,
  interleaved (off, on, on, off, ...), so that a process's peak resident memory (`ru_maxrss`,
  TensorFlow's own ~0.76 GB included, GB = 10^9 bytes) is that setting's alone. Their median
  step times are reported too, but they come from different processes at different times.
- time: one more process builds both training models from the same weights and alternates
  their steps (off, on, on, off, ...), so that a changing background load hits both alike. It
  reports the median step time of each and the ratio of the medians, and the median of the
  ratios of adjacent steps.

    python -m benchmarks.bench_recompute                       # 80x96x112, int_steps 0 and 7
    python -m benchmarks.bench_recompute --shapes 160x192x224 --int-steps 0 7 --rounds 1 \\
        --repeats 2 --warmup 1

Decoder forms (`--measure decoder`): one process per shape and int_steps builds the default
model (`VxmDense(transposed_decoder=True)`: each decoder merge a stride-2 transposed convolution
of the coarse tensor plus a convolution of the skip) and the explicit one
(`transposed_decoder=False`: upsampling, concatenation, convolution, as the VoxelMorph code)
with the same weights, and alternates their calls (explicit, transposed, transposed,
explicit, ...) on each path of `--paths`: `whole` (the model called in a tf.function, as
`Registrator(tiled=False)` and the whole SavedModel export run it), `tiled`
(`tiled_displacement` with the default slab, as `Registrator` runs it by default) and `train`
(`train_on_batch` of the training model above). It reports the median time of each form and
the ratio transposed / explicit (of the medians, and the median of adjacent pairs' ratios):

    python -m benchmarks.bench_recompute --measure decoder --int-steps 7
    python -m benchmarks.bench_recompute --measure decoder --int-steps 7 \\
        --shapes 160x192x224 --paths whole tiled

Prints Markdown tables; `--out FILE` also writes every process's result as JSON.
"""

# Before TensorFlow is imported (the children import vxmtf): as `benchmarks.case` does.
import vxmtf_cli  # noqa: E402  (imports no TensorFlow)

vxmtf_cli.prepare_environment()

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# Rough peak of the plain training step: 1 GB plus 1.6 kB per voxel (10.5-11.4 GB measured at
# 160x192x224); a process does not start unless the machine has this much memory available.
BASE_GB, GB_PER_VOXEL = 1.0, 1.6e-6


def peak_memory_gb():
    """Peak resident memory of this process so far, in GB (Linux `ru_maxrss` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def available_gb():
    """`MemAvailable` of /proc/meminfo in GB, or None where there is no such file."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return None


def parse_shape(text):
    """`"80x96x112"` -> `(80, 96, 112)`.

    Raises:
        argparse.ArgumentTypeError: not 2 or 3 positive integers joined by `x`.
    """
    try:
        shape = tuple(int(s) for s in text.split("x"))
    except ValueError:
        shape = ()
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise argparse.ArgumentTypeError(
            f"Expected a shape like 80x96x112 (2 or 3 positive sizes). Received: {text!r}"
        )
    return shape


def build_step(shape, int_steps, recompute, weights=None, transposed_decoder=True):
    """A compiled training model; returns `(step, model)`, `step()` giving the step's loss.

    `transposed_decoder=False` switches the model's U-Net to the explicit decoder layers before
    anything is traced (the training configuration has no such option: it is a comparison)."""
    import keras
    import tensorflow as tf

    from benchmarks.workloads import random_pair
    from vxmtf.training.config import ModelConfig, RunConfig, TrainConfig
    from vxmtf.training.trainer import build_training_model

    keras.utils.set_random_seed(0)  # the same initial weights with and without recompute
    config = RunConfig(
        model=ModelConfig(int_steps=int_steps), train=TrainConfig(recompute=recompute)
    )
    built = build_training_model(config, shape)
    model = built.model
    # `Unet.call` reads the attribute when it is traced (the layers and weights are the same).
    model.unet.transposed_decoder = transposed_decoder
    if weights is not None:
        model.set_weights(weights)
    trainer = built.compile()
    moving, fixed = random_pair(shape)
    x = {"moving": moving, "fixed": fixed}
    y = {"moved": fixed, "preint_flow": tf.zeros([1, 1])}  # Grad ignores its target

    def step():
        return float(trainer.train_on_batch(x, y, return_dict=True)["loss"])

    return step, model


def memory_case(shape, int_steps, recompute, repeats, warmup):
    """Time one setting's step in this process and report its peak memory."""
    import numpy as np

    from benchmarks.workloads import time_calls

    import_gb = peak_memory_gb()
    step, _ = build_step(shape, int_steps, recompute)
    losses = []
    result = time_calls(lambda: losses.append(step()), repeats, warmup)
    result.update(
        losses=losses,
        finite_losses=bool(np.all(np.isfinite(losses))),
        import_gb=import_gb,
        peak_gb=peak_memory_gb(),
    )
    return result


def time_case(shape, int_steps, repeats, warmup):
    """Alternate the steps of both settings in this process; their times and ratios."""
    plain, model = build_step(shape, int_steps, recompute=False)
    recomputing, _ = build_step(shape, int_steps, recompute=True, weights=model.get_weights())
    steps = {False: plain, True: recomputing}
    for _ in range(warmup):
        plain()
        recomputing()
    times = {False: [], True: []}
    losses = {False: [], True: []}
    for index in range(repeats):
        order = (False, True) if index % 2 == 0 else (True, False)
        for recompute in order:
            start = time.perf_counter()
            losses[recompute].append(steps[recompute]())
            times[recompute].append(time.perf_counter() - start)
    ratios = [on / off for on, off in zip(times[True], times[False], strict=True)]
    return {
        "times_off": times[False],
        "times_on": times[True],
        "losses_off": losses[False],
        "losses_on": losses[True],
        "median_off": statistics.median(times[False]),
        "median_on": statistics.median(times[True]),
        "median_pair_ratio": statistics.median(ratios),
        "peak_gb": peak_memory_gb(),
    }


#: The decoder-form paths of `--measure decoder`, in the order they are run.
DECODER_PATHS = ("whole", "tiled", "train")


def decoder_case(shape, int_steps, repeats, warmup, paths=DECODER_PATHS):
    """Alternate the explicit and the transposed decoder form on each path in this process.

    Returns:
        `{path: {"times_explicit", "times_transposed", "median_explicit",
        "median_transposed", "ratio", "median_pair_ratio", "max_abs_diff"}}` (`ratio`:
        transposed / explicit of the medians; `max_abs_diff`: of the two forms' first outputs,
        the displacement in voxels or the loss), and `peak_gb`.
    """
    import keras
    import tensorflow as tf

    from benchmarks.workloads import random_pair
    from vxmtf.networks import VxmDense, tiled_displacement

    moving, fixed = random_pair(shape)
    calls = {}
    if "whole" in paths or "tiled" in paths:
        keras.utils.set_random_seed(0)
        models = {True: VxmDense(shape, int_steps=int_steps)}
        models[False] = VxmDense(shape, int_steps=int_steps, transposed_decoder=False)
        models[False].set_weights(models[True].get_weights())
        spec = tf.TensorSpec([1, *shape, 1], tf.float32)

        def whole(model):
            run = tf.function(
                lambda m, f: model([m, f], training=False)["displacement"],
                input_signature=[spec, spec],
            )
            return lambda: run(moving, fixed).numpy()

        def tiled(model):
            run = tf.function(
                lambda m, f: tiled_displacement(model, m, f), input_signature=[spec, spec]
            )
            return lambda: run(moving, fixed).numpy()

        for path, make in (("whole", whole), ("tiled", tiled)):
            if path in paths:
                calls[path] = {form: make(model) for form, model in models.items()}
    if "train" in paths:
        transposed, model = build_step(shape, int_steps, recompute=False)
        explicit, _ = build_step(
            shape, int_steps, False, weights=model.get_weights(), transposed_decoder=False
        )
        calls["train"] = {True: transposed, False: explicit}

    result = {}
    for path in (p for p in DECODER_PATHS if p in calls):
        forms = calls[path]
        first = {form: forms[form]() for form in (False, True)}  # traces, and the outputs
        for _ in range(max(warmup - 1, 0)):
            forms[False]()
            forms[True]()
        times = {False: [], True: []}
        for index in range(repeats):
            for form in (False, True) if index % 2 == 0 else (True, False):
                start = time.perf_counter()
                forms[form]()
                times[form].append(time.perf_counter() - start)
        ratios = [t / e for t, e in zip(times[True], times[False], strict=True)]
        medians = {form: statistics.median(times[form]) for form in times}
        diff = abs(first[True] - first[False])
        result[path] = {
            "times_explicit": times[False],
            "times_transposed": times[True],
            "median_explicit": medians[False],
            "median_transposed": medians[True],
            "ratio": medians[True] / medians[False],
            "median_pair_ratio": statistics.median(ratios),
            "max_abs_diff": float(diff.max()) if hasattr(diff, "max") else float(diff),
        }
    result["peak_gb"] = peak_memory_gb()
    return result


def run_child(
    kind, shape, int_steps, recompute, repeats, warmup, min_available_gb, paths=DECODER_PATHS
):
    """Run one `memory` or `time` case in a new process; its result dict (or an `error`)."""
    case = {"kind": kind, "shape": list(shape), "int_steps": int_steps, "recompute": recompute}
    voxels = 1
    for size in shape:
        voxels *= size
    needed = min_available_gb if min_available_gb is not None else BASE_GB + GB_PER_VOXEL * voxels
    free = available_gb()
    if free is not None and free < needed:
        return {**case, "error": f"skipped: {free:.1f} GB available, {needed:.1f} GB needed"}
    command = [sys.executable, "-m", "benchmarks.bench_recompute", "--child", kind]
    command += ["x".join(str(s) for s in shape), str(int_steps), str(int(recompute))]
    command += ["--repeats", str(repeats), "--warmup", str(warmup)]
    if kind == "decoder":
        command += ["--paths", *paths]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = done.stderr.strip().splitlines()[-5:]
        return {**case, "error": f"exit {done.returncode}: " + " | ".join(tail)}
    return {**case, **json.loads(lines[-1]), "process_s": time.perf_counter() - start}


def markdown(results):
    """The memory table, the time table and the decoder-form table (each when measured), as
    Markdown lines."""
    lines = [
        "| shape | int_steps | recompute | processes | peak GB (each process) | "
        "median step s (loaded) | first loss |",
        "|---|---|---|---|---|---|---|",
    ]
    groups = {}
    for r in results:
        key = ("x".join(map(str, r["shape"])), r["int_steps"])
        groups.setdefault(key, []).append(r)
    timing, decoder = [], []
    for (shape, int_steps), runs in groups.items():
        for recompute in (False, True):
            mine = [r for r in runs if r["kind"] == "memory" and r["recompute"] == recompute]
            good = [r for r in mine if "error" not in r]
            state = "on" if recompute else "off"
            if mine and not good:
                errors = "; ".join(r["error"] for r in mine)
                lines.append(f"| {shape} | {int_steps} | {state} | 0 | {errors} | | |")
            elif good:
                peaks = ", ".join(f"{r['peak_gb']:.2f}" for r in good)
                median = statistics.median(t for r in good for t in r["times"])
                lines.append(
                    f"| {shape} | {int_steps} | {state} | {len(good)} | {peaks} | "
                    f"{median:.2f} | {good[0]['losses'][0]:.6f} |"
                )
        for r in runs:
            if r["kind"] == "decoder":
                decoder += _decoder_rows(shape, int_steps, r)
            if r["kind"] != "time":
                continue
            if "error" in r:
                timing.append(f"| {shape} | {int_steps} | {r['error']} | | | | |")
                continue
            timing.append(
                f"| {shape} | {int_steps} | {len(r['times_on'])} | {r['median_off']:.2f} | "
                f"{r['median_on']:.2f} | {r['median_on'] / r['median_off']:.2f} | "
                f"{r['median_pair_ratio']:.2f} |"
            )
    if timing:
        lines += [
            "",
            "Steps alternated in one process (times under whatever load the machine had):",
            "",
            "| shape | int_steps | steps each | off: median s | on: median s | "
            "on / off (medians) | on / off (median of adjacent pairs) |",
            "|---|---|---|---|---|---|---|",
            *timing,
        ]
    if not any(r["kind"] == "memory" for r in results):
        lines = lines[3:] if timing else []  # no memory table (nor its blank line)
    if decoder:
        if lines:
            lines.append("")
        lines += [
            "Decoder forms alternated in one process (explicit: upsampling, concatenation, "
            "convolution; transposed: the default):",
            "",
            "| shape | int_steps | path | calls each | explicit: median s | "
            "transposed: median s | transposed / explicit (medians) | "
            "transposed / explicit (median of adjacent pairs) | max abs diff |",
            "|---|---|---|---|---|---|---|---|---|",
            *decoder,
        ]
    return lines


def _decoder_rows(shape, int_steps, r):
    if "error" in r:
        return [f"| {shape} | {int_steps} | {r['error']} | | | | | | |"]
    rows = []
    for path in DECODER_PATHS:
        if path in r:
            p = r[path]
            rows.append(
                f"| {shape} | {int_steps} | {path} | {len(p['times_transposed'])} | "
                f"{p['median_explicit']:.2f} | {p['median_transposed']:.2f} | "
                f"{p['ratio']:.2f} | {p['median_pair_ratio']:.2f} | {p['max_abs_diff']:.1e} |"
            )
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_recompute",
        description="Training step time and peak memory with and without VxmDense(recompute).",
    )
    p.add_argument("--shapes", type=parse_shape, nargs="+", default=[(80, 96, 112)])
    p.add_argument("--int-steps", type=int, nargs="+", default=[0, 7])
    p.add_argument("--repeats", type=int, default=5, help="timed steps per process and setting")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first, per setting")
    p.add_argument("--rounds", type=int, default=2, help="memory processes per setting")
    p.add_argument(
        "--measure",
        choices=("both", "memory", "time", "decoder"),
        default="both",
        help="recomputation: memory processes, the alternating time process, or both; or "
        "`decoder`: the decoder forms alternated in one process (see --paths)",
    )
    p.add_argument(
        "--paths",
        choices=DECODER_PATHS,
        nargs="+",
        default=list(DECODER_PATHS),
        help="with --measure decoder: the whole forward pass, the tiled one, the training step",
    )
    p.add_argument(
        "--settings",
        choices=("both", "off", "on"),
        default="both",
        help="memory processes with and without recomputation, or one of them only",
    )
    p.add_argument(
        "--min-available-gb",
        type=float,
        default=None,
        help="start a process only with this much memory available "
        "(default: an estimate of the plain step's peak)",
    )
    p.add_argument("--out", type=Path, help="also write every process's result here (JSON)")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        kind, shape, int_steps, recompute = args.child
        shape, int_steps = parse_shape(shape), int(int_steps)
        if kind == "memory":
            result = memory_case(shape, int_steps, bool(int(recompute)), args.repeats, args.warmup)
        elif kind == "decoder":
            result = decoder_case(shape, int_steps, args.repeats, args.warmup, args.paths)
        else:
            result = time_case(shape, int_steps, args.repeats, args.warmup)
        print(json.dumps(result))
        return 0

    results = []

    def run(kind, shape, int_steps, recompute):
        r = run_child(
            kind,
            shape,
            int_steps,
            recompute,
            args.repeats,
            args.warmup,
            args.min_available_gb,
            args.paths,
        )
        results.append(r)
        if "error" in r:
            summary = r["error"]
        elif kind == "memory":
            summary = f"peak {r['peak_gb']:.2f} GB, median {statistics.median(r['times']):.2f} s"
        elif kind == "decoder":
            summary = ", ".join(
                f"{path} transposed / explicit {r[path]['ratio']:.2f}"
                for path in DECODER_PATHS
                if path in r
            )
        else:
            summary = f"median off {r['median_off']:.2f} s, on {r['median_on']:.2f} s"
        setting = f"recompute {'on' if recompute else 'off'}" if kind == "memory" else "both"
        if kind == "decoder":
            setting = "explicit and transposed"
        name = "x".join(map(str, shape))
        print(f"{name} int{int_steps} {kind} {setting}: {summary}", file=sys.stderr, flush=True)
        if args.out:
            args.out.write_text(json.dumps(results, indent=1) + "\n")

    for shape in args.shapes:
        for int_steps in args.int_steps:
            if args.measure == "decoder":
                run("decoder", shape, int_steps, False)
                continue
            if args.measure in ("both", "memory"):
                order = ([False, True, True, False] * args.rounds)[: 2 * args.rounds]
                if args.settings != "both":
                    order = [args.settings == "on"] * args.rounds
                for recompute in order:
                    run("memory", shape, int_steps, recompute)
            if args.measure in ("both", "time"):
                run("time", shape, int_steps, True)
    print("\n".join(markdown(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
