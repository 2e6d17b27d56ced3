"""Training curves of one or more runs (their `history.csv`) in one figure.

    python -m benchmarks.plot_history --run "plain=runs/lpba40_plain" \\
        --run "diffeomorphic=runs/lpba40_diffeo" --out curves.png

Each run folder holds the `history.csv` (one row per epoch) and `config.json` that `python -m
train` writes; the x axis is the optimizer step at the end of each epoch (epoch x
steps_per_epoch), offset by `--offset NAME=STEPS` for a run that started from another's weights
(`--init-weights`). Left: training and validation loss (NCC + lambda * smoothness, negative is
better); right: the smoothness term alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def read_history(run) -> tuple[list[int], dict[str, list[float]]]:
    """`(steps, columns)` of a run folder (`vxmtf.training.run_folder.RunFolder.read_history`):
    the step after each epoch and each logged column.

    Raises:
        FileNotFoundError: the folder has no history.csv or config.json.
        ValueError: history.csv has no `epoch` column or no rows.
    """
    from vxmtf.training.run_folder import RunFolder

    return RunFolder(run).read_history()


def plot_histories(runs: dict, path, offsets: dict | None = None) -> Path:
    """Saves the loss curves of `{name: run folder}` to `path` (PNG); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    offsets = offsets or {}
    fig, (total, smooth) = plt.subplots(1, 2, figsize=(11, 4))
    for index, (name, folder) in enumerate(runs.items()):
        steps, columns = read_history(folder)
        steps = [s + offsets.get(name, 0) for s in steps]
        color = f"C{index}"
        total.plot(steps, columns["loss"], color=color, label=f"{name} train")
        if "val_loss" in columns:
            total.plot(steps, columns["val_loss"], color=color, ls="--", label=f"{name} val")
        for key, style in (("preint_flow_loss", "-"), ("val_preint_flow_loss", "--")):
            if key in columns:
                smooth.plot(steps, columns[key], color=color, ls=style)
    total.set(xlabel="optimizer step", ylabel="loss (-NCC + lambda * Grad)", title="loss")
    smooth.set(xlabel="optimizer step", ylabel="Grad l2 term (before lambda)", title="smoothness")
    total.legend(fontsize=8)
    for axis in (total, smooth):
        axis.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _pairs(items, what):
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise ValueError(f"{what} expects NAME=VALUE. Received: {item!r}")
        out[name] = value
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.plot_history", description=__doc__)
    p.add_argument("--run", action="append", required=True, metavar="NAME=DIR")
    p.add_argument("--offset", action="append", default=[], metavar="NAME=STEPS")
    p.add_argument("--out", default="training_curves.png")
    args = p.parse_args(argv)
    try:
        runs = _pairs(args.run, "--run")
        offsets = {k: int(v) for k, v in _pairs(args.offset, "--offset").items()}
        path = plot_histories(runs, args.out, offsets)
    except (OSError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
