"""`python -m benchmarks.first_run`: what each default of the first run adds (issue #14).

The README's first run is `python -m train && python -m evaluate.dice` on the built-in synthetic
data. This benchmark trains and evaluates named variants of it, one process after another, each
exactly as a user would run it (`python -m train --model-dir OUT/NAME --no-export ARGS`, then
`python -m evaluate.dice --model OUT/NAME/best.keras --out OUT/NAME/eval`), and tabulates Dice
before and after registration on the 4 held-back synthetic pairs with the training's wall time:

    python -m benchmarks.first_run --out /tmp/first_run                # every variant
    python -m benchmarks.first_run --out /tmp/first_run --settings default previous
    python -m benchmarks.first_run --oracle                            # no training

Variants (`SETTINGS`): the defaults before issue #14 (`previous`: rougher deformations, 1,500
constant-rate steps at lambda 1), the present defaults (`default`: no options) and the steps
between them, one change at a time, and the defaults with a learning-rate warm-up. A variant
whose `eval/summary.json` exists is not rerun, so an interrupted sweep resumes. Writes
`OUT/results.json` and `OUT/results.md`.

`--oracle` needs no model: it registers each held-back scan-to-atlas pair with the inverse of
its true deformation (`SyntheticPairs.atlas_displacement`, inverted by fixed-point iteration)
and scores it as `evaluate.dice` scores a model, which bounds the Dice any registration can
reach on these nearest-neighbour label maps (each resampling loses a little).

Training times are wall times of the whole `python -m train` process (start-up and validation
included) on whatever machine runs it; compare variants within one run.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

#: The defaults before issue #14 (smoothness 1/4 and deformation 0.056 of the smallest size).
_PREVIOUS_DATA = ["--synthetic-smoothness", "8", "--synthetic-deformation", "1.792"]
_PREVIOUS_RECIPE = ["--lr", "1e-3", "--lr-schedule", "constant", "--lambda", "1"]

#: name -> `python -m train` options (the synthetic data at 32x32x32 in every case).
SETTINGS = {
    "previous": [*_PREVIOUS_DATA, *_PREVIOUS_RECIPE, "--steps-per-epoch", "150"],
    "previous_data_new_recipe": _PREVIOUS_DATA,
    "new_data_previous_recipe_1500": [*_PREVIOUS_RECIPE, "--steps-per-epoch", "150"],
    "new_data_previous_recipe": _PREVIOUS_RECIPE,
    "default_lambda1": ["--lambda", "1"],
    "default": [],
    # `--warmup-steps`: a linear rise of the learning rate over the first steps to the peak
    # 2e-3 (measured in RESULTS.md: no gain beyond noise, and one run diverged).
    "default_warmup150": ["--warmup-steps", "150"],
    "default_warmup400": ["--warmup-steps", "400"],
    # ... and on another seed (other random anatomy, atlas and held-back pairs)
    "default_seed1": ["--seed", "1"],
    "default_seed1_warmup150": ["--seed", "1", "--warmup-steps", "150"],
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.first_run",
        description="Train and evaluate variants of the first run's defaults.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", default="runs/first_run", help="folder of the runs and results")
    p.add_argument(
        "--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS), metavar="NAME"
    )
    p.add_argument(
        "--oracle",
        action="store_true",
        help="only score the inverse of the true deformation (default and previous data)",
    )
    return p


def invert_displacement(u: np.ndarray, iterations: int = 30) -> np.ndarray:
    """``v`` with ``x + v(x) + u(x + v(x)) = x``: the inverse of ``x -> x + u(x)``, by the
    fixed-point iteration ``v <- -u(x + v)`` (converges for ``|grad u| < 1``), linear
    interpolation, edges clamped. ``u``: ``(ndim, *shape)`` in voxels."""
    from scipy import ndimage

    grid = np.indices(u.shape[1:], dtype=np.float32)
    v = -u
    for _ in range(iterations):
        coords = grid + v
        v = -np.stack([ndimage.map_coordinates(c, coords, order=1, mode="nearest") for c in u])
    return v


def oracle(deformation: float | None = None, smoothness: float | None = None) -> dict:
    """Dice before and with the true inverse on the run's 4 held-back synthetic pairs."""
    from scipy import ndimage

    from vxmtf.metrics import dice
    from vxmtf.training import DataConfig, RunConfig
    from vxmtf.training.data import synthetic_source

    data = DataConfig(synthetic_deformation=deformation, synthetic_smoothness=smoothness)
    source = synthetic_source(RunConfig(data=data))
    fixed = source.atlas()["labels"]
    grid = np.indices(fixed.shape, dtype=np.float32)
    before, after = [], []
    for index in range(source.num_val):
        moving = source.atlas_pair(index, "val")["moving_labels"]
        v = invert_displacement(source.atlas_displacement(index, "val"))
        moved = ndimage.map_coordinates(moving, grid + v, order=0, mode="nearest")
        before.append(np.nanmean(list(dice(moving, fixed).values())))
        after.append(np.nanmean(list(dice(moved, fixed).values())))
    return {
        "deformation": source.deformation,
        "smoothness": source.smoothness,
        "dice_before_mean": float(np.mean(before)),
        "dice_oracle_mean": float(np.mean(after)),
        "dice_oracle_std": float(np.std(after)),
    }


def run_setting(name: str, out: Path) -> dict:
    """Trains and evaluates one variant in its own processes (resumes: a finished one is read)."""
    folder = out / name
    summary = folder / "eval" / "summary.json"
    if not summary.is_file():
        if folder.exists():  # an unfinished run: start it again from scratch
            import shutil

            shutil.rmtree(folder)
        train = [sys.executable, "-m", "train", "--model-dir", str(folder), "--no-export"]
        start = time.perf_counter()
        subprocess.run([*train, *SETTINGS[name]], check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        evaluate = [sys.executable, "-m", "evaluate.dice", "--model", str(folder / "best.keras")]
        subprocess.run(
            [*evaluate, "--out", str(folder / "eval")], check=True, stdout=subprocess.DEVNULL
        )
        (folder / "train_seconds.json").write_text(json.dumps({"train_seconds": seconds}))
    values = json.loads(summary.read_text())
    config = json.loads((folder / "config.json").read_text())
    seconds = json.loads((folder / "train_seconds.json").read_text())["train_seconds"]
    return {
        "name": name,
        "options": " ".join(SETTINGS[name]) or "(none)",
        "steps": config["train"]["epochs"] * config["train"]["steps_per_epoch"],
        "dice_before_mean": values["dice_before_mean"],
        "dice_after_mean": values["dice_after_mean"],
        "dice_after_std": values["dice_after_std"],
        "train_seconds": seconds,
    }


def results_table(rows: list[dict]) -> str:
    lines = [
        "| variant | `python -m train` options | steps | Dice before | Dice after | train s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | `{r['options']}` | {r['steps']:,} | {r['dice_before_mean']:.3f} | "
            f"{r['dice_after_mean']:.3f} ± {r['dice_after_std']:.3f} | {r['train_seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    import vxmtf_cli

    args = build_parser().parse_args(argv)
    if args.oracle:
        vxmtf_cli.start([])  # a quiet TensorFlow import (the scoring imports it)
        for label, values in (
            ("default", oracle()),
            ("previous", oracle(deformation=1.792, smoothness=8.0)),
        ):
            print(
                f"{label}: deformation {values['deformation']:.2f} vox, smoothness "
                f"{values['smoothness']:g} vox: Dice before {values['dice_before_mean']:.3f}, "
                f"with the true inverse {values['dice_oracle_mean']:.3f} ± "
                f"{values['dice_oracle_std']:.3f}"
            )
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.settings:
        print(f"{name}: python -m train {' '.join(SETTINGS[name])}", flush=True)
        rows.append(run_setting(name, out))
        print(f"  Dice {rows[-1]['dice_before_mean']:.3f} -> {rows[-1]['dice_after_mean']:.3f}")
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "results.md").write_text(results_table(rows))
    print(results_table(rows))
    return 0 if all(math.isfinite(r["dice_after_mean"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
