"""`python -m benchmarks.bench_remapper`: the training step with and without Grappler's remapper.

A CPU training run logs (at `TF_CPP_MIN_LOG_LEVEL` 2 or lower, e.g. `python -m train -v`)

    meta_optimizer.cc:967] remapper failed: INVALID_ARGUMENT: Mutation::Apply error: fanout
    '.../dec_conv_0_activation_1/LeakyRelu/LeakyReluGrad' exist for missing node
    '.../dec_conv_0_1/BiasAdd'.

This script measures what that costs. In one process it builds one compiled training model per
remapper setting (`vxmtf.training.trainer.build_training_model`, default network, batch 1, one
repeated random pair, `train_on_batch`, as `benchmarks.workloads.train_workload` times it):

- `default`: remapping unset (`RewriterConfig.DEFAULT`), exactly what `python -m train` runs;
- `on`: `set_experimental_options({"remapping": True})` (`RewriterConfig.ON`);
- `off`: `set_experimental_options({"remapping": False})`.

Grappler options take effect when a function is instantiated, but in eager mode the options are
a `config_proto` attribute of every function call (`context.function_call_options`), and the
eager kernel cache is keyed on the call's attributes: after `set_experimental_options`, the
*next call of any* `tf.function` instantiates (and optimizes) it again under the new options.
Setting the option once and then running the two models alternately would therefore time the
same optimized graph twice. So the option is set again before every call, to the setting of the
model called; each (function, setting) is instantiated once, then reused from the kernel cache.
The script checks this: graph collection (`context.enable_graph_collection`) records every
instantiation, and the timed calls must record none.

For each setting it reports the remapper messages logged while the function was instantiated
(native stderr, captured), the fused convolutions Grappler left in the optimized graph
(`_FusedConv3D`) and that oneDNN runs in the partition graphs (`_MklNativeFusedConv3D` /
`_MklFusedConv3D`), and the median of `--rounds` timed steps, the settings alternating in a
rotating order; ratios are medians of the per-round ratios to `default`.

    python -m benchmarks.bench_remapper --shape 80 96 112 --int-steps 0 7 --rounds 10
"""

import os

import vxmtf_cli  # noqa: E402  (imports no TensorFlow)

# The remapper message is an ERROR-level log line: keep the level at or below 2.
if int(os.environ.get(vxmtf_cli.LOG_LEVEL, "0") or 0) > 2:
    os.environ[vxmtf_cli.LOG_LEVEL] = "2"
vxmtf_cli.prepare_environment(verbose=True)

import argparse  # noqa: E402
import collections  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import tensorflow as tf  # noqa: E402
from tensorflow.python.eager import context  # noqa: E402

from benchmarks.harness import machine_info  # noqa: E402
from benchmarks.workloads import build_trainer, random_pair  # noqa: E402

# Remapping setting per variant: None restores RewriterConfig.DEFAULT (the option unset).
SETTINGS = {"default": None, "on": True, "off": False}
FUSED_GRAPPLER = ("_FusedConv3D",)
FUSED_ONEDNN = ("_MklNativeFusedConv3D", "_MklFusedConv3D")
PLAIN_CONV = ("Conv3D", "_MklNativeConv3D", "_MklConv3D")
MESSAGE = "remapper failed"


class NativeStderr:
    """Captures file descriptor 2 (TensorFlow's C++ logging) inside a `with`: `.text`."""

    def __enter__(self):
        sys.stderr.flush()
        self._file = tempfile.TemporaryFile(mode="w+b")
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, *exc):
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.seek(0)
        self.text = self._file.read().decode(errors="replace")
        self._file.close()
        return False


def set_remapping(value):
    """`{"remapping": value}`: True ON, False OFF, None back to DEFAULT (the option unset)."""
    tf.config.optimizer.set_experimental_options({"remapping": value})


def graph_ops(graph_def):
    """Op counts of a GraphDef, its function library included."""
    counts = collections.Counter(node.op for node in graph_def.node)
    for function in graph_def.library.function:
        counts.update(node.op for node in function.node_def)
    return counts


def instantiations(run_metadata):
    """`(number of function instantiations, optimized op counts, partition op counts, optimized
    op counts of the largest function: the training step)`."""
    optimized, partitions, largest = collections.Counter(), collections.Counter(), (-1, {})
    for function_graph in run_metadata.function_graphs:
        counts = graph_ops(function_graph.post_optimization_graph)
        optimized.update(counts)
        for partition in function_graph.partition_graphs:
            partitions.update(graph_ops(partition))
        size = len(function_graph.pre_optimization_graph.node)
        if size > largest[0]:
            largest = (size, dict(counts))
    return len(run_metadata.function_graphs), optimized, partitions, largest[1]


def op_diff(ops, base):
    """The op types whose counts differ, `"op a/b"`; `"none"` when the counts are equal."""
    diff = [
        f"{op} {ops.get(op, 0)}/{base.get(op, 0)}"
        for op in sorted(set(ops) | set(base))
        if ops.get(op, 0) != base.get(op, 0)
    ]
    return ", ".join(diff) or "none"


def machine():
    """`benchmarks.harness.machine_info`, with the log level the remapper's messages need."""
    return {
        **machine_info(),
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "(unset)"),
    }


def measure(shape, int_steps, rounds, settings=tuple(SETTINGS)):
    """Builds one training model per remapper setting and alternates their timed steps.

    Returns:
        `{setting: {"first_call", "messages", "instantiations", "fused_conv3d",
        "onednn_fused_conv3d", "plain_conv3d", "times", "median"}, "ratio": {setting: median
        of the per-round ratios to the first setting}, "reinstantiated": instantiations or
        remapper messages during the warm-up and timed calls (0 if the options held)}`.
    """
    context.enable_graph_collection()
    context.export_run_metadata()  # drop anything recorded before
    moving, fixed = random_pair(shape)
    x = {"moving": moving, "fixed": fixed}
    y = {"moved": fixed, "preint_flow": tf.zeros([1, 1])}  # Grad ignores its target
    result, trainers = {}, {}
    try:
        for name in settings:  # build, trace and instantiate each under its own setting
            set_remapping(SETTINGS[name])
            trainers[name] = build_trainer(shape, int_steps)[1]
            with NativeStderr() as log:
                start = time.perf_counter()
                trainers[name].train_on_batch(x, y)
                first = time.perf_counter() - start
            count, optimized, partitions, step_ops = instantiations(context.export_run_metadata())
            sys.stderr.write(log.text)  # pass the log on
            result[name] = {
                "first_call": first,
                "messages": [line for line in log.text.splitlines() if MESSAGE in line],
                "instantiations": count,
                "fused_conv3d": sum(optimized[op] for op in FUSED_GRAPPLER),
                "onednn_fused_conv3d": sum(partitions[op] for op in FUSED_ONEDNN),
                "plain_conv3d": sum(partitions[op] for op in PLAIN_CONV),
                "step_graph_ops": step_ops,
                "partition_ops": dict(partitions),
                "times": [],
            }
        reinstantiated = 0

        def step(name):
            nonlocal reinstantiated
            set_remapping(SETTINGS[name])
            with NativeStderr() as log:
                start = time.perf_counter()
                logs = trainers[name].train_on_batch(x, y, return_dict=True)
                float(logs["loss"])
                seconds = time.perf_counter() - start
            sys.stderr.write(log.text)
            reinstantiated += instantiations(context.export_run_metadata())[0]
            reinstantiated += log.text.count(MESSAGE)
            return seconds

        for name in settings:  # warm-up: also proves the first instantiation is reused
            step(name)
        for round_ in range(rounds):
            shift = round_ % len(settings)
            order = settings[shift:] + settings[:shift]
            order = order if round_ % 2 == 0 else order[::-1]
            for name in order:
                result[name]["times"].append(step(name))
    finally:
        set_remapping(None)
        context.context().disable_graph_collection()
    for name in settings:
        result[name]["median"] = statistics.median(result[name]["times"])
    base = settings[0]
    result["ratio"] = {
        name: statistics.median(
            t / b for t, b in zip(result[name]["times"], result[base]["times"], strict=True)
        )
        for name in settings
    }
    result["reinstantiated"] = reinstantiated
    return result


def table(rows, settings=tuple(SETTINGS)):
    """Markdown table of `{(shape, int_steps): measure(...)}`."""
    base = settings[0]
    head = ["shape", "int_steps"]
    head += [f"{name} median s" for name in settings]
    head += [f"{name}/{base}" for name in settings[1:]]
    head += [f"fused conv {name}" for name in settings]
    head += ["remapper msgs", "re-instantiated"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (shape, int_steps), res in rows.items():
        cells = ["x".join(map(str, shape)), str(int_steps)]
        cells += [f"{res[name]['median']:.3f}" for name in settings]
        cells += [f"{res['ratio'][name]:.3f}" for name in settings[1:]]
        cells += [
            f"{res[name]['fused_conv3d']}/{res[name]['onednn_fused_conv3d']}" for name in settings
        ]
        cells.append(" ".join(f"{name}:{len(res[name]['messages'])}" for name in settings))
        cells.append(str(res["reinstantiated"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[80, 96, 112])
    parser.add_argument("--int-steps", type=int, nargs="+", default=[0, 7])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument(
        "--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS), help="first: base"
    )
    args = parser.parse_args(argv)
    settings = tuple(args.settings)
    rows = {}
    for int_steps in args.int_steps:
        rows[(tuple(args.shape), int_steps)] = res = measure(
            tuple(args.shape), int_steps, args.rounds, settings
        )
        for name in settings:
            print(
                f"# int_steps {int_steps} {name}: first call {res[name]['first_call']:.1f} s, "
                f"{res[name]['instantiations']} instantiations, "
                f"optimized graph _FusedConv3D {res[name]['fused_conv3d']}, partition graphs "
                f"oneDNN fused {res[name]['onednn_fused_conv3d']} / plain conv "
                f"{res[name]['plain_conv3d']}, step graph ops differing "
                f"from {settings[0]}'s: "
                f"{op_diff(res[name]['step_graph_ops'], res[settings[0]]['step_graph_ops'])}; "
                "steps " + " ".join(f"{t:.2f}" for t in res[name]["times"]),
                flush=True,
            )
            for message in res[name]["messages"]:
                print(f"#   {message}", flush=True)
    print()
    print("Machine: " + ", ".join(f"{key} {value}" for key, value in machine().items()))
    print()
    print(table(rows, settings))
    print()
    print(
        "fused conv = `_FusedConv3D` in Grappler's optimized graph / oneDNN fused Conv3D in the "
        "executed partition graphs; remapper msgs = 'remapper failed' lines logged when the "
        "setting's function was instantiated; re-instantiated = instantiations or messages "
        "during the warm-up and timed steps (0: every step ran its setting's graph)."
    )
    return rows


if __name__ == "__main__":
    main()
