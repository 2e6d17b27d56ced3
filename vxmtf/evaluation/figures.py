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
    "group_structures",
    "plot_dice_boxes",
    "plot_dice_series",
    "plot_example",
    "save_figures",
    "structure_of",
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


def plot_dice_boxes(records: list[dict], path, label_names=None) -> Path:
    """Box plot of Dice per structure, before (grey) and after (blue) registration, side by side
    (as in Balakrishnan et al., IEEE TMI 2019, Fig. 5). NaN values are left out; with
    `label_names`, structures are named, left and right merged (`plot_dice_series`)."""
    series = {
        f"{when} registration": [{"label": r["label"], "dice": r[f"dice_{when}"]} for r in records]
        for when in ("before", "after")
    }
    return plot_dice_series(series, path, label_names)


#: Box colours of `plot_dice_series`, in the order of its series.
SERIES_COLOURS = ("#b0b0b0", "#3b75af", "#d9822b", "#5aa05a", "#9467bd")
#: Name prefixes of a hemisphere (LPBA40 writes "L superior frontal gyrus").
_SIDES = ("l ", "r ", "left ", "right ", "lh ", "rh ", "left-", "right-", "lh-", "rh-")


def structure_of(name: str) -> str:
    """A structure's name without its hemisphere prefix ("L superior frontal gyrus" ->
    "superior frontal gyrus"), so that the left and right labels of one structure merge."""
    lowered = name.lower()
    for prefix in _SIDES:
        if lowered.startswith(prefix) and len(name) > len(prefix):
            return name[len(prefix) :].strip()
    return name


def group_structures(labels, label_names=None) -> dict[str, list[int]]:
    """`{structure: [label, ...]}`: with names, labels whose names differ only by a hemisphere
    prefix share a structure; without, one group per label, named by its value."""
    groups: dict[str, list[int]] = {}
    for label in sorted(labels):
        name = (label_names or {}).get(label)
        key = structure_of(name) if name else str(label)
        groups.setdefault(key, []).append(label)
    return groups


def plot_dice_series(series: dict, path, label_names=None) -> Path:
    """Box plot of Dice per structure for several methods side by side.

    One row per structure, sorted by the median Dice of the last series (best at the top),
    boxes drawn horizontally so that names stay readable. With `label_names` (label value ->
    name, e.g. a dataset JSON's `labels`), the left and right labels of a structure are merged
    into one row (`group_structures`) and rows are named; without, one row per label value.

    Args:
        series: `{name: [{"label": int, "dice": float}, ...]}`, in drawing order (at most
            `len(SERIES_COLOURS)` series); NaN values are left out.
        path: the PNG to write.
        label_names: `{label: name}` or None.
    """
    if not 1 <= len(series) <= len(SERIES_COLOURS):
        raise ValueError(
            f"Expected 1 to {len(SERIES_COLOURS)} series. Received: {len(series)} series"
        )
    figure_class, _ = _matplotlib()
    labels = {r["label"] for rows in series.values() for r in rows}
    groups = group_structures(labels, label_names)

    def values(rows, members):
        return [r["dice"] for r in rows if r["label"] in members and not math.isnan(r["dice"])]

    last = list(series.values())[-1]
    order = sorted(
        groups, key=lambda g: -np.median(values(last, groups[g]) or [-1.0])
    )  # best first
    height = 0.8 / len(series)
    figure = figure_class(figsize=(8.0, max(3.0, 0.11 * len(series) * len(order) + 1.6)))
    ax = figure.add_subplot()
    # Row r (0 = the best structure) is drawn at the top: y = len(order) - 1 - r.
    centres = np.arange(len(order), dtype=float)[::-1]
    handles = []
    for index, (name, rows) in enumerate(series.items()):
        per_group = [values(rows, groups[g]) for g in order]
        keep = [i for i, v in enumerate(per_group) if v]
        shift = ((len(series) - 1) / 2 - index) * height  # the first series on top in a row
        boxes = ax.boxplot(
            [per_group[i] for i in keep],
            positions=centres[keep] + shift,
            widths=0.9 * height,
            **_horizontal(),
            patch_artist=True,
            manage_ticks=False,
            flierprops={"marker": ".", "markersize": 3},
            medianprops={"color": "black"},
        )
        for patch in boxes["boxes"]:
            patch.set_facecolor(SERIES_COLOURS[index])
        if boxes["boxes"]:
            handles.append((boxes["boxes"][0], name))
    ax.set_yticks(centres)
    merged = any(len(members) > 1 for members in groups.values())
    ax.set_yticklabels(order, fontsize=7 if len(order) > 20 else 9)
    ax.set_ylim(-0.7, len(order) - 0.3)
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("Dice")
    ax.set_ylabel("structure" + (" (left and right merged)" if merged else " (label)"))
    ax.grid(axis="x", alpha=0.3)
    if handles:
        ax.legend(
            *zip(*handles, strict=True),
            loc="lower center",
            bbox_to_anchor=(0.5, 1.0),
            ncol=min(len(handles), 4),
            frameon=False,
        )
    return _save(figure, Path(path))


def _horizontal() -> dict:
    # matplotlib 3.10 replaced boxplot's `vert` with `orientation` (and 3.11 deprecated `vert`).
    import matplotlib

    major, minor = (int(part) for part in matplotlib.__version__.split(".")[:2])
    return {"orientation": "horizontal"} if (major, minor) >= (3, 10) else {"vert": False}


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
    names = evaluation.label_names
    paths = [plot_dice_boxes(evaluation.records, out_dir / "dice_boxplot.png", names)]
    if evaluation.example is not None:
        first = evaluation.pairs[0]
        title = (
            f"pair 0: {Path(first['moving']).name} -> {Path(first['fixed']).name} (middle slice)"
        )
        paths.append(plot_example(evaluation.example, out_dir / "example_pair.png", title))
    return paths
