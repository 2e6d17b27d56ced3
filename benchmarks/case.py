"""`python -m benchmarks.case NAME`: run one benchmark case in this process, write its JSON.

Case names (see `parse_case`):

    train-80x96x112-int7       training step, VxmDense(80x96x112, int_steps=7)
    register-160x192x224-int0  registration of one pair with vxmtf.registration.Registrator
                               (tiled, the package's default; +untiled: the whole network at once;
                               +bf16: `Registrator(precision="bfloat16")`)
    tilecost-160x192x224-int0  tiled and untiled registration timed alternately in one process
    serve-160x192x224-int7     serving_default of a vxmtf.export SavedModel on raw volumes
                               (tiled, the export's default; +untiled: the whole network)
    servecost-160x192x224-int7 tiled and whole serving timed alternately in one process
    breakdown-80x96x112-int7   a training step timed part by part
    officialtrain-80x96x112-int7
                               the official VoxelMorph TF code's training step (tf-keras;
                               `benchmarks.official`)
    officialpredict-160x192x224-int7
                               the official code's `predict_on_batch` of one pair
    pipeline-ds2               the tf.data pipeline on LPBA40, downsampled 2x
    peak                       the machine's float32 matmul and Conv3D throughput

`train` and `breakdown` names take optional suffixes `+xla` (compile with XLA,
`jit_compile=True`) and `+bf16` (Keras policy `mixed_bfloat16`); `register` and `serve` names
take `+untiled`, and `register` names `+bf16` (the U-Net in bfloat16, fields and the warp in
float32; the export always computes in float32). `train`, `register` and `serve` names take
`+explicit`: the U-Net's explicit upsample-concatenate-convolve decoder, the default before the
transposed form (`VxmDense(transposed_decoder=False)`; same weights, more multiplications).
The peak resident memory of the process (`ru_maxrss`, which includes TensorFlow itself) is
added to the result, in GB (10^9 bytes). The harness (`python -m benchmarks`) runs every case
in its own process.
"""

# Before TensorFlow is imported (vxmtf and the workloads import it).
import vxmtf_cli  # noqa: E402  (imports no TensorFlow)

vxmtf_cli.prepare_environment()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

KINDS = ("train", "register", "serve", "servecost", "tilecost", "breakdown", "pipeline", "peak")
OFFICIAL_KINDS = ("officialtrain", "officialpredict")  # run on tf-keras (benchmarks.official)
SHAPED_KINDS = KINDS[:6] + OFFICIAL_KINDS
FLAGS = ("xla", "bf16", "untiled", "explicit")
#: The flags each kind accepts.
KIND_FLAGS = {
    "train": ("xla", "bf16", "explicit"),
    "breakdown": ("xla", "bf16"),
    "register": ("untiled", "bf16", "explicit"),
    "serve": ("untiled", "explicit"),
}
DEFAULT_DATASET = "/work/shared/data/LPBA40/LPBA40_dataset.json"
#: Case kinds whose previous default differs from today's: the explicit U-Net decoder, which the
#: transposed form replaced (issue #16); `previous_default` names each one's `+explicit` twin.
PREVIOUS_DEFAULT_KINDS = ("train", "register", "serve")


def parse_case(name):
    """Split a case name into its parts.

    Returns:
        A dict with `kind` and, by kind, `shape` (tuple), `int_steps`, `xla`, `bf16`,
        `untiled` (train/register/serve/servecost/tilecost/breakdown) or `downsample`
        (pipeline).

    Raises:
        ValueError: a name that does not follow the grammar of the module docstring.
    """
    base, *flags = name.split("+")
    parts = base.split("-")
    kind = parts[0]
    spec = {"name": name, "kind": kind}
    try:
        if kind in SHAPED_KINDS:
            _, shape, steps = parts
            if not steps.startswith("int") or set(flags) - set(KIND_FLAGS.get(kind, ())):
                raise ValueError
            spec["shape"] = tuple(int(s) for s in shape.split("x"))
            spec["int_steps"] = int(steps[3:])
            spec.update({flag: flag in flags for flag in FLAGS})
        elif kind == "pipeline":
            _, ds = parts
            if not ds.startswith("ds") or flags:
                raise ValueError
            spec["downsample"] = int(ds[2:])
        elif kind != "peak" or len(parts) != 1 or flags:
            raise ValueError
    except ValueError:
        raise ValueError(
            "Expected a case name like train-80x96x112-int7[+xla][+bf16][+explicit], "
            "register-160x192x224-int0[+untiled][+bf16][+explicit], "
            "serve-160x192x224-int7[+untiled][+explicit], "
            "servecost-160x192x224-int7, tilecost-160x192x224-int0, "
            "breakdown-80x96x112-int7[+xla][+bf16], officialtrain-80x96x112-int7, "
            "officialpredict-160x192x224-int7, pipeline-ds2 or peak. "
            f"Received: {name!r}"
        ) from None
    return spec


def previous_default(name):
    """The case of `name` as the previous default ran it (`+explicit`), or None where nothing
    changed (other kinds, and names that already choose a decoder or run XLA or bfloat16)."""
    base, *flags = name.split("+")
    if base.split("-")[0] not in PREVIOUS_DEFAULT_KINDS or set(flags) & {"explicit", "xla", "bf16"}:
        return None
    return name + "+explicit"


def peak_memory_gb():
    """Peak resident memory of this process so far, in GB (Linux `ru_maxrss` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def run_case(spec, repeats, warmup, quick=False, dataset=DEFAULT_DATASET):
    """Run the workload `spec` names (`parse_case`) and return its result dict."""
    kind = spec["kind"]
    if kind in OFFICIAL_KINDS:  # Keras 2 (tf-keras); nothing of Keras 3 is imported
        from benchmarks import official

        workload = {
            "officialtrain": official.official_train_workload,
            "officialpredict": official.official_predict_workload,
        }[kind]
        return workload(spec["shape"], spec["int_steps"], repeats, warmup)
    import keras

    from benchmarks import workloads

    if spec.get("bf16") and kind != "register":  # the Registrator builds its own bf16 copy
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    if kind == "train":
        return workloads.train_workload(
            spec["shape"],
            spec["int_steps"],
            repeats,
            warmup,
            xla=spec["xla"],
            transposed_decoder=not spec["explicit"],
        )
    if kind == "register":
        return workloads.register_workload(
            spec["shape"],
            spec["int_steps"],
            repeats,
            warmup,
            tiled=not spec["untiled"],
            precision="bfloat16" if spec["bf16"] else "float32",
            transposed_decoder=not spec["explicit"],
        )
    if kind == "serve":
        return workloads.serve_workload(
            spec["shape"],
            spec["int_steps"],
            repeats,
            warmup,
            tiled=not spec["untiled"],
            transposed_decoder=not spec["explicit"],
        )
    if kind == "servecost":
        return workloads.serve_cost_workload(spec["shape"], spec["int_steps"], repeats, warmup)
    if kind == "tilecost":
        return workloads.tiling_cost_workload(spec["shape"], spec["int_steps"], repeats, warmup)
    if kind == "breakdown":
        from benchmarks.breakdown import breakdown_workload

        return breakdown_workload(spec["shape"], spec["int_steps"], repeats, warmup)
    if kind == "pipeline":
        if not Path(dataset).is_file():
            return {"skipped": f"dataset not found: {dataset}"}
        pairs = 4 if quick else 40 // spec["downsample"] + 10
        return workloads.pipeline_workload(dataset, spec["downsample"], pairs, warmup=3)
    if quick:
        return workloads.peak_workload(1024, (32, 32, 32), repeats=2)
    return workloads.peak_workload(4096, (80, 96, 112), repeats=max(repeats, 5))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="case name, e.g. train-80x96x112-int7")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    parser.add_argument("--quick", action="store_true", help="small peak and pipeline runs")
    parser.add_argument("--dataset", default=DEFAULT_DATASET, help="dataset JSON for pipeline")
    parser.add_argument("--json", required=True, help="where to write the result")
    args = parser.parse_args(argv)
    spec = parse_case(args.name)
    if spec["kind"] in OFFICIAL_KINDS:
        os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before TensorFlow's import: tf.keras = Keras 2
    start = time.perf_counter()
    result = run_case(spec, args.repeats, args.warmup, args.quick, args.dataset)
    result.update(
        case=args.name,
        spec={k: list(v) if isinstance(v, tuple) else v for k, v in spec.items()},
        peak_gb=peak_memory_gb(),
        wall_seconds=time.perf_counter() - start,
    )
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
