"""`results.json` -> `results.md`: the benchmark results as Markdown tables."""

from __future__ import annotations

from pathlib import Path

from benchmarks.case import previous_default

__all__ = ["markdown", "pipeline_ratio", "write_markdown"]

TASKS = {"train": "training step", "register": "registration"}
PARTS = (
    "unet",
    "resize",
    "integrate",
    "warp",
    "ncc",
    "grad",
    "optimizer",
    "step",
)  # breakdown order


def _spec(result):
    return result.get("spec", {})


def _flags(result):
    flags = [flag for flag in ("xla", "bf16", "untiled", "explicit") if _spec(result).get(flag)]
    if result.get("tiled"):
        flags.append(f"tiled, slab {result['slab']}")
    if result.get("finite_losses") is False:
        flags.append("**loss became NaN**")
    return ", ".join(flags) or "-"


def _peak(results):
    peak = results["cases"].get("peak", {})
    return peak.get("matmul_gflops_per_s")


def pipeline_ratio(results, pipeline):
    """`(train seconds, ratio)`: pairs/s of a pipeline case times the step time at its shape.

    The training step is the `train-<shape>-int7` case (the default model); None when absent.
    """
    shape = "x".join(str(s) for s in pipeline.get("shape", []))
    train = results["cases"].get(f"train-{shape}-int7", {})
    if "median" not in train or "pairs_per_s" not in pipeline:
        return None, None
    return train["median"], pipeline["pairs_per_s"] * train["median"]


def markdown(results):
    """The results as Markdown: machine, timing table, pipeline table, step breakdown."""
    machine = results["machine"]
    cases = results["cases"]
    peak = _peak(results)
    lines = [
        f"Machine: {machine['cpu']} (family/model/stepping "
        f"{machine.get('cpu_family_model_stepping', '?')}; "
        f"{' '.join(machine.get('cpu_flags', []))}), {machine['cores']} cores, "
        f"{machine['memory_gb']} GB; "
        f"TensorFlow {machine['tensorflow']}, Keras {machine['keras']}, Python "
        f"{machine['python']}, oneDNN {'on' if machine['onednn'] else 'off'} "
        f"(TF_ENABLE_ONEDNN_OPTS={machine['TF_ENABLE_ONEDNN_OPTS']}); {machine['date']}.",
        "",
    ]
    if "peak" in cases and "error" not in cases["peak"]:
        p = cases["peak"]
        lines += [
            f"Measured peak (float32, best of several): {p['matmul_size']}^2 matmul "
            f"{p['matmul_gflops_per_s']:.0f} GFLOP/s; 3^3 Conv3D 32->32 at "
            f"{'x'.join(map(str, p['conv3d_shape']))} {p['conv3d_gflops_per_s']:.0f} GFLOP/s.",
            "",
        ]
    lines += [
        "Batch 1, float32 unless flagged; seconds: median (min-max) of the timed runs after "
        "warm-up; peak memory: the case's process, TensorFlow included (GB = 10^9 bytes); "
        "GFLOP/s: analytic convolution FLOPs (training step = 3x forward) / median.",
        "",
        "| task | shape | int_steps | flags | median s | min s | max s | peak GB | GFLOP/s "
        "| % of matmul peak |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in cases.values():
        spec = _spec(r)
        if spec.get("kind") not in TASKS or "median" not in r:
            continue
        share = f"{100 * r['gflops_per_s'] / peak:.0f}%" if peak else "-"
        lines.append(
            f"| {TASKS[spec['kind']]} | {'x'.join(map(str, spec['shape']))} "
            f"| {spec['int_steps']} | {_flags(r)} | {r['median']:.3f} | {r['min']:.3f} "
            f"| {r['max']:.3f} | {r['peak_gb']:.2f} | {r['gflops_per_s']:.1f} | {share} |"
        )
    pipelines = {n: r for n, r in cases.items() if _spec(r).get("kind") == "pipeline"}
    if pipelines:
        lines += [
            "",
            "| pipeline (LPBA40) | shape | pairs/s | peak GB | training step s (int_steps 7) "
            "| pairs/s x step s |",
            "|---|---|---|---|---|---|",
        ]
        for name, r in pipelines.items():
            if "skipped" in r:
                lines.append(f"| {name} | skipped: {r['skipped']} | | | | |")
                continue
            if "pairs_per_s" not in r:
                continue
            step, ratio = pipeline_ratio(results, r)
            lines.append(
                f"| downsample {_spec(r)['downsample']} | {'x'.join(map(str, r['shape']))} "
                f"| {r['pairs_per_s']:.2f} | {r['peak_gb']:.2f} "
                f"| {'-' if step is None else f'{step:.2f}'} "
                f"| {'-' if ratio is None else f'{ratio:.1f}x'} |"
            )
    lines += _previous_table(cases)
    lines += _breakdown_table(cases)
    lines += _tiling_cost_table(cases)
    errors = [(n, r["error"]) for n, r in cases.items() if "error" in r]
    if errors:
        lines += ["", "Failed cases:", ""]
        lines += [f"- `{n}`: {e.splitlines()[-1] if e else e}" for n, e in errors]
    commands = [c for c in results.get("commands", []) if c]
    if commands:
        lines += ["", "Command(s):", ""] + [f"    {c}" for c in commands]
    return "\n".join(lines) + "\n"


def _previous_table(cases):
    """Each case against its `+explicit` twin (the previous default's decoder), where both ran."""
    twins = {name: previous_default(name) for name in cases}
    pairs = [
        (r, cases[twins[name]])
        for name, r in cases.items()
        if "median" in r and "median" in cases.get(twins[name], {})
    ]
    if not pairs:
        return []
    lines = [
        "",
        "Against the previous default (the explicit upsample-concatenate-convolve decoder, "
        "`+explicit`, run right after each case on the same machine; median s):",
        "",
        "| task | shape | int_steps | flags | now s | previous s | previous / now | now GB "
        "| previous GB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for now, previous in pairs:
        spec = _spec(now)
        task = TASKS.get(spec["kind"], "serving")
        lines.append(
            f"| {task} | {'x'.join(map(str, spec['shape']))} | {spec['int_steps']} "
            f"| {_flags(now)} | {now['median']:.3f} | {previous['median']:.3f} "
            f"| **{previous['median'] / now['median']:.2f}x** | {now['peak_gb']:.2f} "
            f"| {previous['peak_gb']:.2f} |"
        )
    return lines


def _breakdown_table(cases):
    runs = {n: r for n, r in cases.items() if _spec(r).get("kind") == "breakdown" and "parts" in r}
    if not runs:
        return []
    names = list(runs)
    header = " | ".join(_breakdown_column(runs[n]) for n in names)
    lines = [
        "",
        "Training step by parts (forward + backward of each alone; median s, share of the step):",
        "",
        f"| part | {header} |",
        "|---|" + "---|" * len(names),
    ]
    parts = [p for p in PARTS if any(p in runs[n]["parts"] for n in names)]
    for part in [*parts, "sum_of_parts"]:
        cells = []
        for n in names:
            r = runs[n]
            step = r["parts"]["step"]["median"]
            value = (
                r["sum_of_parts"]
                if part == "sum_of_parts"
                else (r["parts"].get(part, {}).get("median"))
            )
            cells.append("-" if value is None else f"{value:.3f} ({100 * value / step:.0f}%)")
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
    return lines


def _breakdown_column(result):
    """Column title: shape, int_steps and the flags (a float32 and a bf16 run must differ)."""
    spec = _spec(result)
    title = f"{'x'.join(map(str, spec['shape']))} int_steps {spec['int_steps']}"
    flags = _flags(result)
    return title if flags == "-" else f"{title} ({flags})"


def _tiling_cost_table(cases):
    runs = [r for r in cases.values() if _spec(r).get("kind") == "tilecost" and "ratio" in r]
    if not runs:
        return []
    lines = [
        "",
        "Registration, tiled against untiled, timed alternately in one process (median s; "
        "ratio: median of the per-repeat tiled / untiled ratios; CPU: process CPU seconds):",
        "",
        "| shape | int_steps | slab | tiled s | untiled s | ratio | tiled CPU s | untiled CPU s "
        "| CPU ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        tiled, untiled = r["tiled"], r["untiled"]
        lines.append(
            f"| {'x'.join(map(str, _spec(r)['shape']))} | {_spec(r)['int_steps']} | {r['slab']} "
            f"| {tiled['median']:.3f} | {untiled['median']:.3f} | {r['ratio']:.3f} "
            f"| {tiled['cpu_median']:.2f} | {untiled['cpu_median']:.2f} | {r['cpu_ratio']:.3f} |"
        )
    return lines


def write_markdown(results, path):
    Path(path).write_text(markdown(results))
