"""Figures of an evaluation: Dice per structure as box plots, and one pair on a slice.

Drawn with matplotlib's object API (no pyplot state), written atomically as PNG;
`pip install 'vxmtf[figures]'` installs matplotlib.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from vxmtf.atomic import atomic_path

__all__ = [
    "SERIES_COLOURS",
    "check_figures_available",
    "plot_dice_boxes",
    "plot_dice_series",
    "plot_example",
    "save_figures",
]


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "Figures need matplotlib: pip install 'vxmtf[figures]' (or pip install matplotlib)."
        ) from error
    return Figure, FigureCanvasAgg


def check_figures_available() -> None:
    """Raises ImportError with an installation hint when matplotlib is missing."""
    _matplotlib()


def _save(figure, path: Path) -> Path:
    _, canvas_class = _matplotlib()
    canvas_class(figure)
    with atomic_path(path, suffix=".png") as temporary:
        figure.savefig(temporary, dpi=110, bbox_inches="tight")
    return path


def plot_dice_boxes(records: list[dict], path) -> Path:
    """Box plot of Dice per structure, before (grey) and after (blue) registration, side by side
    (as in Balakrishnan et al., IEEE TMI 2019, Fig. 5). NaN values are left out."""
    series = {
        f"{when} registration": [{"label": r["label"], "dice": r[f"dice_{when}"]} for r in records]
        for when in ("before", "after")
    }
    return plot_dice_series(series, path)


#: Box colours of `plot_dice_series`, in the order of its series.
SERIES_COLOURS = ("#b0b0b0", "#3b75af", "#d9822b", "#5aa05a", "#9467bd")


def plot_dice_series(series: dict, path) -> Path:
    """Box plot of Dice per structure for several methods side by side.

    Args:
        series: `{name: [{"label": int, "dice": float}, ...]}`, in drawing order (at most
            `len(SERIES_COLOURS)` series); NaN values are left out.
        path: the PNG to write.
    """
    if not 1 <= len(series) <= len(SERIES_COLOURS):
        raise ValueError(
            f"Expected 1 to {len(SERIES_COLOURS)} series. Received: {len(series)} series"
        )
    figure_class, _ = _matplotlib()
    labels = sorted({r["label"] for rows in series.values() for r in rows})
    width = 0.8 / len(series)
    figure = figure_class(figsize=(max(6.0, 0.16 * len(series) * len(labels) + 1.5), 4.0))
    ax = figure.add_subplot()
    centres = np.arange(len(labels), dtype=float)
    handles = []
    for index, (name, rows) in enumerate(series.items()):
        per_label = [
            [r["dice"] for r in rows if r["label"] == label and not math.isnan(r["dice"])]
            for label in labels
        ]
        keep = [i for i, values in enumerate(per_label) if values]
        shift = (index - (len(series) - 1) / 2) * width
        boxes = ax.boxplot(
            [per_label[i] for i in keep],
            positions=centres[keep] + shift,
            widths=0.9 * width,
            patch_artist=True,
            manage_ticks=False,
            flierprops={"marker": ".", "markersize": 3},
            medianprops={"color": "black"},
        )
        for patch in boxes["boxes"]:
            patch.set_facecolor(SERIES_COLOURS[index])
        if boxes["boxes"]:
            handles.append((boxes["boxes"][0], name))
    ax.set_xticks(centres)
    ax.set_xticklabels([str(label) for label in labels], rotation=90 if len(labels) > 20 else 0)
    ax.set_xlim(-0.7, len(labels) - 0.3)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("structure (label)")
    ax.set_ylabel("Dice")
    ax.grid(axis="y", alpha=0.3)
    if handles:
        ax.legend(
            *zip(*handles, strict=True),
            loc="lower center",
            bbox_to_anchor=(0.5, 1.0),
            ncol=min(len(handles), 4),
            frameon=False,
        )
    return _save(figure, Path(path))


def plot_example(example: dict, path, title="") -> Path:
    """One pair on a slice: moving, fixed, moved, fixed-label contours over moved, and the
    deformed grid (grid lines through `x + u(x)`, where each fixed voxel samples `moving`).

    Images are drawn with voxel axis 0 to the right and axis 1 upwards."""
    from skimage.segmentation import find_boundaries

    figure_class, _ = _matplotlib()
    shape = example["fixed"].shape
    # Five panels of 3.2 in, as tall as the slice's aspect needs (axis 1 upwards), plus titles.
    aspect = min(max(shape[1] / shape[0], 0.5), 2.0)
    figure = figure_class(figsize=(16, 3.2 * aspect + 0.8), layout="constrained")
    axes = figure.subplots(1, 5)
    images = {"moving": example["moving"], "fixed": example["fixed"], "moved": example["moved"]}
    high = max(float(np.max(v)) for v in images.values()) or 1.0
    low = min(float(np.min(v)) for v in images.values())
    for ax, (name, image) in zip(axes[:3], images.items(), strict=True):
        ax.imshow(image.T, cmap="gray", origin="lower", vmin=low, vmax=high)
        ax.set_title(name)

    ax = axes[3]
    ax.imshow(example["moved"].T, cmap="gray", origin="lower", vmin=low, vmax=high)
    fixed_labels = example["fixed_labels"]
    edges = find_boundaries(fixed_labels, mode="inner") & (fixed_labels > 0)
    overlay = np.ma.masked_where(~edges, fixed_labels)
    ax.imshow(overlay.T, cmap="tab20", origin="lower", interpolation="nearest")
    ax.set_title("fixed labels over moved")

    ax = axes[4]
    u = example["displacement"]
    step = max(1, min(shape) // 16)
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1)
    points = grid + u  # (*shape, 2): where each fixed voxel samples the moving image
    for i in range(0, shape[0], step):
        ax.plot(points[i, :, 0], points[i, :, 1], color="#3b75af", linewidth=0.7)
    for j in range(0, shape[1], step):
        ax.plot(points[:, j, 0], points[:, j, 1], color="#3b75af", linewidth=0.7)
    ax.set_xlim(-0.5, shape[0] - 0.5)
    ax.set_ylim(-0.5, shape[1] - 0.5)
    ax.set_aspect("equal")
    ax.set_title("deformed grid")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        figure.suptitle(title, fontsize=9)
    return _save(figure, Path(path))


def save_figures(evaluation, out_dir) -> list[Path]:
    """`dice_boxplot.png` and `example_pair.png` in `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [plot_dice_boxes(evaluation.records, out_dir / "dice_boxplot.png")]
    if evaluation.example is not None:
        first = evaluation.pairs[0]
        title = (
            f"pair 0: {Path(first['moving']).name} -> {Path(first['fixed']).name} (middle slice)"
        )
        paths.append(plot_example(evaluation.example, out_dir / "example_pair.png", title))
    return paths
