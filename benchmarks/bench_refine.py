"""Test-time refinement (`vxmtf.refine.refine_field`) of a trained model on validation pairs:
Dice and seconds per pair against the number of steps and the schedule.

    python -m benchmarks.bench_refine --model pretrained/vxm_lpba40.keras \\
        --data ../shared/data/LPBA40/LPBA40_dataset.json --out /root/refine_runs/sweep \\
        --max-pairs 3 --settings steps0,steps25,steps100

Each pair is prepared as `vxmtf.registration.Registrator` prepares it (the run's
`PreprocessConfig`: normalise, block-mean downsample, pad to the size multiple), the float32
model gives ``preint_flow``, and each setting refines it on the model's own objective (the run
configuration's image loss and lambda unless the setting overrides them). The displacement is
cropped, resized to the full grid (`vxmtf.registration.resize_displacement`) and scored as
`evaluate.dice` scores: the moving label map warped nearest-neighbour at full resolution, Dice
per label (`vxmtf.metrics.dice`, label 0 excluded; mean over labels, then over pairs) and the
folding fraction of the full-resolution field. A setting with ``full_steps`` then runs that
many steps more with the full-resolution images (the same velocity, resized 4x instead of 2x),
whose displacement is scored directly.

Seconds per pair count the refinement alone (not the network, nor scoring), after a one-step
warm-up of every graph (tracing and XLA compilation are not counted; `compile_seconds` in the
JSON says how long they took). The CPU may be shared: the times are wall times as measured.

Writes in ``--out``: ``results.json`` (every setting and pair; a rerun skips what it holds, so
an interrupted sweep resumes), ``results.md`` (table) and ``dice_vs_seconds.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

#: The sweep: name -> refinement options (`RefineConfig` fields, and ``full_steps``).
SETTINGS = {
    "steps0": {"steps": 0},
    "steps25": {"steps": 25},
    "steps50": {"steps": 50},
    "steps100": {"steps": 100},
    "steps200": {"steps": 200},
    "lr0.03_steps100": {"steps": 100, "learning_rate": 0.03},
    "lr0.3_steps100": {"steps": 100, "learning_rate": 0.3},
    "lr0.3_steps50": {"steps": 50, "learning_rate": 0.3},
    "coarse25_steps75": {"coarse_steps": 25, "steps": 75},
    "coarse50_steps50_lr0.3": {"coarse_steps": 50, "steps": 50, "learning_rate": 0.3},
    "ncc5_steps100": {"steps": 100, "ncc_window": 5},
    "lambda0.5_steps100": {"steps": 100, "reg_weight": 0.5},
    "lambda0.25_steps100": {"steps": 100, "reg_weight": 0.25},
    "lambda2_steps100": {"steps": 100, "reg_weight": 2.0},
    "steps75_full25": {"steps": 75, "full_steps": 25},
    "steps50_full10": {"steps": 50, "full_steps": 10},
    "lr0.3_steps50_full10": {"steps": 50, "full_steps": 10, "learning_rate": 0.3},
    "lr0.3_steps100_fine50": {"steps": 100, "fine_steps": 50, "learning_rate": 0.3},
    "lr0.3_steps50_fine25": {"steps": 50, "fine_steps": 25, "learning_rate": 0.3},
    "lr0.3_steps50_fine25_full10": {
        "steps": 50,
        "fine_steps": 25,
        "full_steps": 10,
        "learning_rate": 0.3,
    },
    # The full-resolution stage on a velocity 2x finer than the model's (`full_fine_steps`) and
    # with its own lambda (`full_reg_weight`); first 3 pairs: +0.004 and +0.002 over
    # lr0.3_steps50_full10, +0.005 together, at 1.5x its time.
    "lr0.3_steps50_fullfine10": {"steps": 50, "full_fine_steps": 10, "learning_rate": 0.3},
    "lr0.3_steps50_full10_fulllambda0.5": {
        "steps": 50,
        "full_steps": 10,
        "full_reg_weight": 0.5,
        "learning_rate": 0.3,
    },
    "lr0.3_steps50_fullfine10_fulllambda0.5": {
        "steps": 50,
        "full_fine_steps": 10,
        "full_reg_weight": 0.5,
        "learning_rate": 0.3,
    },
    # Fewer steps on the finer velocity, to fit the 15 s of issue #11.
    "lr0.3_steps50_fullfine7_fulllambda0.5": {
        "steps": 50,
        "full_fine_steps": 7,
        "full_reg_weight": 0.5,
        "learning_rate": 0.3,
    },
    "lr0.3_steps40_fullfine6_fulllambda0.5": {
        "steps": 40,
        "full_fine_steps": 6,
        "full_reg_weight": 0.5,
        "learning_rate": 0.3,
    },
    # Adam's step size in the full-resolution stage alone (`full_learning_rate`).
    "lr0.3_steps50_full10_fulllr0.1": {
        "steps": 50,
        "full_steps": 10,
        "full_learning_rate": 0.1,
        "learning_rate": 0.3,
    },
    "lr0.3_steps50_full10_fulllr0.6": {
        "steps": 50,
        "full_steps": 10,
        "full_learning_rate": 0.6,
        "learning_rate": 0.3,
    },
}


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_refine", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--model", default="pretrained/vxm_lpba40.keras", help=".keras VxmDense")
    p.add_argument("--config", default=None, help="run config.json (default: beside --model)")
    p.add_argument("--data", required=True, help="dataset JSON with registration_val pairs")
    p.add_argument("--out", required=True, help="output folder (resumable)")
    p.add_argument("--max-pairs", type=int, default=None, help="first N validation pairs")
    p.add_argument(
        "--settings",
        default=",".join(SETTINGS),
        help=f"comma-separated names among: {', '.join(SETTINGS)}",
    )
    p.add_argument(
        "--xla",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compile each refinement step with XLA (default: on)",
    )
    return p


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _load_results(path: Path) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    return {"settings": {}}


def _summaries(results: dict, first: int | None = None) -> list[dict]:
    """One row per setting: means over its pairs (only pairs ``index < first`` if given)."""
    rows = []
    for name, entry in results["settings"].items():
        pairs = [p for p in entry["pairs"].values() if first is None or p["index"] < first]
        if not pairs:
            continue
        options = {"fine_steps": 0, **entry["options"]}
        dice = [p["dice"] for p in pairs]
        rows.append(
            {
                "name": name,
                **options,
                "pairs": len(pairs),
                "dice_mean": float(np.mean(dice)),
                "dice_std": float(np.std(dice)),
                "seconds_per_pair": float(np.mean([p["seconds"] for p in pairs])),
                "folding_percent": 100.0 * float(np.mean([p["folding"] for p in pairs])),
            }
        )
    return rows


def results_table(results: dict, first: int | None = None) -> str:
    """A Markdown table, one row per setting, by increasing seconds per pair."""
    lines = [
        "| setting | coarse steps | steps | fine steps | full-res steps | lr | NCC window "
        "| lambda | pairs | Dice mean ± std | s / pair | folding % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        # full-res steps "10 (2x finer)": on a velocity twice as fine as the model's; a lambda
        # "1 / 0.5": of the model-grid stages / of the full-resolution stage (an lr likewise)
    ]
    rows = sorted(_summaries(results, first), key=lambda r: (-r["pairs"], r["seconds_per_pair"]))
    for row in rows:
        full = str(row["full_steps"])
        if row.get("full_fine_steps"):
            full = f"{row['full_fine_steps']} (2x finer)"
        weight = f"{row['reg_weight']:g}"
        if row.get("full_reg_weight") is not None:
            weight += f" / {row['full_reg_weight']:g}"
        rate = f"{row['learning_rate']:g}"
        if row.get("full_learning_rate") is not None:
            rate += f" / {row['full_learning_rate']:g}"
        lines.append(
            f"| {row['name']} | {row['coarse_steps']} | {row['steps']} | {row['fine_steps']} "
            f"| {full} | {rate} | {row['ncc_window']} "
            f"| {weight} | {row['pairs']} "
            f"| {row['dice_mean']:.3f} ± {row['dice_std']:.3f} "
            f"| {row['seconds_per_pair']:.1f} | {row['folding_percent']:.4f} |"
        )
    return "\n".join(lines) + "\n"


#: Lines of the plot: a label and the settings it joins, by increasing steps.
SERIES = {
    "Adam lr 0.1": ["steps0", "steps25", "steps50", "steps100", "steps200"],
    "Adam lr 0.3": ["steps0", "lr0.3_steps50", "lr0.3_steps100"],
}


def plot_results(results: dict, path: Path) -> None:
    """Dice against refinement seconds: the first 3 pairs (left), every pair (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, panels = plt.subplots(1, 2, figsize=(14, 6), sharey=False)
    for axes, first in zip(panels, (3, None), strict=True):
        rows = {r["name"]: r for r in _summaries(results, first)}
        if first is None:  # only the settings run on the most pairs
            most = max(r["pairs"] for r in rows.values())
            rows = {n: r for n, r in rows.items() if r["pairs"] == most}
        joined = set()
        for label, names in SERIES.items():
            series = [rows[n] for n in names if n in rows]
            if len(series) > 1:
                axes.plot(
                    [r["seconds_per_pair"] for r in series],
                    [r["dice_mean"] for r in series],
                    "-o",
                    label=label,
                )
                joined.update(r["name"] for r in series)
        for name, row in rows.items():
            if name not in joined:
                axes.plot(row["seconds_per_pair"], row["dice_mean"], "s", color="tab:gray")
            axes.annotate(
                f"{name} ({row['pairs']})",
                (row["seconds_per_pair"], row["dice_mean"]),
                textcoords="offset points",
                xytext=(4, 3),
                fontsize=7,
            )
        axes.axhline(0.720, color="tab:red", linestyle="--", linewidth=1, label="ANTs SyN 0.720")
        axes.set_xlabel("refinement seconds per pair (wall time, 2 heavily shared CPU cores)")
        axes.set_ylabel("mean Dice, 56 LPBA40 structures")
        pairs = "first 3 validation pairs" if first else "all pairs run"
        axes.set_title(f"Test-time refinement, shipped model: {pairs} (n per setting)")
        axes.grid(alpha=0.3)
        axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _options(name: str, objective: dict) -> dict:
    raw = SETTINGS[name]
    return {
        "coarse_steps": raw.get("coarse_steps", 0),
        "steps": raw.get("steps", 0),
        "fine_steps": raw.get("fine_steps", 0),
        "full_steps": raw.get("full_steps", 0),
        "full_fine_steps": raw.get("full_fine_steps", 0),
        "full_reg_weight": raw.get("full_reg_weight", None),
        "full_learning_rate": raw.get("full_learning_rate", None),
        "learning_rate": raw.get("learning_rate", 0.1),
        "ncc_window": raw.get("ncc_window", objective["ncc_window"]),
        "reg_weight": raw.get("reg_weight", objective["reg_weight"]),
        "image_loss": objective["image_loss"],
    }


def refine_config(options: dict):
    """The `vxmtf.refine.RefineConfig` of a setting's `_options`: all of them but
    ``full_learning_rate`` (the bench applies it itself) and ``image_loss`` (the model's)."""
    from vxmtf.refine import RefineConfig

    skip = ("full_learning_rate", "image_loss")
    return RefineConfig(**{k: v for k, v in options.items() if k not in skip})


class PairRunner:
    """Prepares one pair, runs the model, refines and scores displacements."""

    def __init__(self, model, run_config, xla):
        self.model = model
        self.config = run_config
        self.xla = xla
        self.warm = set()

    def load(self, source):
        from vxmtf.data.preprocess import PreprocessConfig, preprocess_image

        data = source.load()
        self.shape = data["fixed"].shape
        self.factor = int(self.config.data.downsample)
        preprocess = PreprocessConfig(
            normalize=self.config.data.normalize,
            downsample=self.factor,
            multiple=self.model.size_multiple,
        )
        images = {}
        for key in ("moving", "fixed"):
            array, self.padding = preprocess_image(data[key], preprocess)
            images[key] = array[None, ..., None].astype(np.float32)
        self.images = images
        self.labels = (data["moving_labels"], data["fixed_labels"])
        full = PreprocessConfig(normalize=self.config.data.normalize, downsample=1, multiple=1)
        self.full_images = {
            key: preprocess_image(data[key], full)[0][None, ..., None].astype(np.float32)
            for key in ("moving", "fixed")
        }
        outputs = self.model([images["moving"], images["fixed"]], training=False)
        self.preint = outputs["preint_flow"]

    def refine(self, options):
        """Returns (full-resolution displacement, refinement seconds, final loss)."""
        from vxmtf.refine import refine_field
        from vxmtf.registration import resize_displacement

        config = refine_config(options)
        kwargs = {**config.kwargs(self.config), "jit_compile": self.xla}
        full_kwargs = {**config.full_kwargs(self.config), "jit_compile": self.xla}
        if options["full_learning_rate"] is not None:  # a bench-only option
            full_kwargs["learning_rate"] = options["full_learning_rate"]
        full = config.full_stage_steps > 0
        if full and (any(self.padding.before) or any(self.padding.after)):
            raise ValueError("full_steps needs a pair that the model grid holds without padding")
        compile_seconds = self._warm_up(kwargs, full_kwargs if full else None)
        start = time.perf_counter()
        field, displacement, history = refine_field(
            self.images["moving"], self.images["fixed"], self.preint, **kwargs
        )
        if full:
            field, displacement, full_history = refine_field(
                self.full_images["moving"], self.full_images["fixed"], field, **full_kwargs
            )
        seconds = time.perf_counter() - start
        displacement = displacement.numpy()[0]
        if not full:
            displacement = self.padding.undo(displacement)
            displacement = resize_displacement(displacement, self.shape, self.factor)
        else:
            displacement = np.pad(
                displacement,
                [(0, s - d) for s, d in zip(self.shape, displacement.shape, strict=False)]
                + [(0, 0)],
                mode="edge",
            )
        final = float((full_history if full else history)["loss"][-1])
        return displacement, seconds, float(history["loss"][0]), final, compile_seconds

    def _warm_up(self, kwargs, full_kwargs):
        """One step of every graph the setting uses, so timing excludes tracing/compiling."""
        from vxmtf.refine import refine_field

        stages = ("coarse_steps", "steps", "fine_steps")
        key = (kwargs["ncc_window"], *(kwargs[n] > 0 for n in stages))
        if full_kwargs is not None:
            key += tuple(full_kwargs[n] > 0 for n in stages)
        if key in self.warm:
            return 0.0

        def one_step_each(stage_kwargs):  # at most one step of each stage
            return {**stage_kwargs, **{n: min(1, stage_kwargs[n]) for n in stages}}

        start = time.perf_counter()
        images = (self.images["moving"], self.images["fixed"])
        warm = one_step_each(kwargs)
        refine_field(*images, self.preint, **warm)
        if full_kwargs is not None:
            field = self.preint
            if kwargs["fine_steps"]:  # the full stage starts on the finer grid
                field = refine_field(*images, field, **{**warm, "steps": 0})[0]
            full = (self.full_images["moving"], self.full_images["fixed"])
            refine_field(*full, field, **one_step_each(full_kwargs))
        self.warm.add(key)
        return time.perf_counter() - start

    def score(self, displacement):
        from vxmtf.metrics import dice, folding_fraction, jacobian_determinant
        from vxmtf.registration import Registrator

        moving_labels, fixed_labels = self.labels
        moved = Registrator.warp(moving_labels, displacement, interpolation="nearest")
        per_label = dice(moved, fixed_labels)
        per_label = {k: v for k, v in per_label.items() if not math.isnan(v)}
        folding = folding_fraction(jacobian_determinant(displacement))
        return float(np.mean(list(per_label.values()))), float(folding), len(per_label)


def main(argv=None) -> int:
    import vxmtf_cli

    vxmtf_cli.start([])  # environment and a quiet TensorFlow import, when run as a program
    args = build_parser().parse_args(argv)
    names = [n.strip() for n in args.settings.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        print(f"error: unknown settings {unknown}; choose among {list(SETTINGS)}", file=sys.stderr)
        return 2
    import keras

    from vxmtf.data.dataset import load_dataset
    from vxmtf.evaluation import dataset_pairs
    from vxmtf.refine import refine_objective
    from vxmtf.registration import find_run_config, load_run_config

    config_path = args.config or find_run_config(args.model)
    if config_path is None:
        print(f"error: no run config beside {args.model}; pass --config", file=sys.stderr)
        return 2
    run_config = load_run_config(config_path)
    objective = refine_objective(run_config)
    keras.config.set_dtype_policy("float32")
    model = keras.models.load_model(args.model, compile=False)
    pairs = dataset_pairs(load_dataset(args.data))[: args.max_pairs]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = _load_results(results_path)
    results["model"], results["data"] = str(args.model), str(args.data)
    results["xla"] = bool(args.xla)
    runner = PairRunner(model, run_config, args.xla)
    for index, source in enumerate(pairs):
        pair_id = f"{Path(source.moving).name}->{Path(source.fixed).name}"
        todo = [n for n in names if pair_id not in results["settings"].get(n, {}).get("pairs", {})]
        if not todo:
            continue
        runner.load(source)
        for name in todo:
            options = _options(name, objective)
            entry = results["settings"].setdefault(name, {"options": options, "pairs": {}})
            displacement, seconds, start_loss, final_loss, compile_s = runner.refine(options)
            dice_mean, folding, labels = runner.score(displacement)
            entry["pairs"][pair_id] = {
                "index": index,
                "dice": dice_mean,
                "folding": folding,
                "labels": labels,
                "seconds": seconds,
                "compile_seconds": compile_s,
                "loss_start": start_loss,
                "loss_final": final_loss,
            }
            print(
                f"pair {index} {name}: Dice {dice_mean:.4f} folding {100 * folding:.4f}% "
                f"{seconds:.1f} s (loss {start_loss:.4f} -> {final_loss:.4f})",
                flush=True,
            )
            _write_text(results_path, json.dumps(results, indent=1) + "\n")
    table = (
        f"Model {args.model}, data {args.data}, XLA {args.xla}.\n\n"
        "First 3 validation pairs (each setting's mean over the ones it ran):\n\n"
        f"{results_table(results, first=3)}\nAll pairs run:\n\n{results_table(results)}"
    )
    _write_text(out / "results.md", table)
    plot_results(results, out / "dice_vs_seconds.png")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
