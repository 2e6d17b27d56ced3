"""Evaluation of a registration model on labelled pairs: Dice per structure, regularity, speed.

For each pair `(moving, fixed)` with label maps, a `vxmtf.registration.Registrator` gives the
displacement `u` on the label maps' own grid (resized from the model's grid, vectors scaled,
when the run was downsampled), and:

- Dice per structure (`vxmtf.metrics.dice`; label 0, the background, excluded) between the fixed
  label map and the moving one before registration (the affinely aligned input) and after
  (moving labels warped by `u`, nearest neighbour). A label absent from both maps of a pair has
  no Dice (0/0): it is NaN in `dice.csv` and left out of every mean.
- folding fraction: share of voxels with `det(I + grad u) <= 0`; SDlogJ: standard deviation of
  `log det(I + grad u)` (clipped into (1e-9, 1e9)), both on that full-resolution `u`
  (Learn2Reg, Hering et al., IEEE TMI 42(3), 2022).
- seconds: wall time of the registration (preprocessing, network, resizing, image warp).

Summary statistics: each pair's Dice is the mean over its labels (NaN left out); the reported
mean and standard deviation (population, ddof=0) are over pairs. `seconds_per_pair` leaves out
the first pair, which includes tracing and warm-up, unless there is only one.

Pair sources (each a list of `PairSource`, loaded on demand): a dataset's `registration_val`
pairs or every scan to its atlas (`dataset_pairs`), a CSV of paths (`csv_pairs`), or held-back
synthetic pairs (`synthetic_pairs`). `select_pairs` chooses among them as `evaluate.dice` does.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from vxmtf.data.dataset import Scan, find_label, load_dataset
from vxmtf.data.io import load_volume
from vxmtf.data.synthetic import SyntheticPairs
from vxmtf.metrics import dice, folding_fraction, jacobian_determinant, sdlogj
from vxmtf.training.checkpoint import atomic_write_text

logger = logging.getLogger(__name__)

#: Columns of `dice.csv`, one row per (pair, label).
CSV_COLUMNS = ("pair", "moving", "fixed", "label", "dice_before", "dice_after")
#: Pairs evaluated on synthetic data when the run's configuration does not say.
DEFAULT_SYNTHETIC_PAIRS = 4


@dataclasses.dataclass(frozen=True)
class PairSource:
    """One pair to evaluate: names for the report, and a loader.

    `load()` returns `moving`, `fixed` (float arrays `(*spatial)`), `moving_labels` and
    `fixed_labels` (integer arrays of the same shape).
    """

    moving: str
    fixed: str
    load: Callable[[], dict[str, np.ndarray]]


# ----------------------------------------------------------------------------- pair sources


def _read_labels(path: Path, image_path: Path, image_shape) -> np.ndarray:
    labels = load_volume(path).array
    if labels.shape != tuple(image_shape):
        raise ValueError(
            f"Label map {path} has shape {labels.shape}, expected its image's shape "
            f"{tuple(image_shape)} ({image_path}). Received: label_shape={labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.array_equal(labels, np.round(labels)):
            raise ValueError(
                f"Label map {path} holds non-integer values; expected integer labels. "
                f"Received: dtype={labels.dtype}"
            )
    return labels.astype(np.int32)


def file_pair(moving: Scan, fixed: Scan) -> PairSource:
    """A pair of files, each an image with its label map (checked when loaded)."""
    for scan in (moving, fixed):
        if scan.label is None:
            raise FileNotFoundError(
                f"No label map for {scan.image}: Dice needs one for every image (give it in the "
                "dataset JSON, a labels folder or the pairs CSV)."
            )

    def load():
        out = {}
        for key, scan in (("moving", moving), ("fixed", fixed)):
            image = load_volume(scan.image).array
            out[key] = image
            out[f"{key}_labels"] = _read_labels(scan.label, scan.image, image.shape)
        return out

    return PairSource(str(moving.image), str(fixed.image), load)


def dataset_pairs(dataset, to_atlas: bool = False) -> list[PairSource]:
    """A dataset's `registration_val` pairs, or every other scan to its atlas (`to_atlas`)."""
    if to_atlas:
        if dataset.atlas is None:
            raise ValueError(f"Dataset '{dataset.name}' has no atlas. Received: atlas=None")
        atlas = Path(dataset.atlas.image).resolve()
        scans = [s for s in dataset.scans if Path(s.image).resolve() != atlas]
        return [file_pair(scan, dataset.atlas) for scan in scans]
    if not dataset.val_pairs:
        raise ValueError(
            f"Dataset '{dataset.name}' has no registration_val pairs: give a pairs CSV or an "
            "atlas. Received: val_pairs=[]"
        )
    return [file_pair(m, f) for m, f in dataset.val_pairs]


def _csv_path(value: str, root: Path, csv_path: Path, line: int) -> Path:
    path = Path(value.strip())
    if not path.is_absolute() and (root / path).exists():
        path = root / path
    if not path.is_file():
        raise FileNotFoundError(f"{csv_path}, line {line}: file not found: {value.strip()}")
    return path


def csv_pairs(path, dataset=None, label_dir=None) -> list[PairSource]:
    """Pairs listed in a CSV file: `moving,fixed[,moving_labels,fixed_labels]` per row.

    An optional header row names the columns (in any order); blank lines and lines starting
    with `#` are skipped. Relative paths are looked up next to the CSV first, then in the
    working directory. Without label columns, each image's label map is the one `dataset`
    gives it, else the file of the same name in `label_dir` (or in the `labels*` sibling of an
    `images*` folder).

    Raises:
        FileNotFoundError: the CSV or a file it names does not exist.
        ValueError: a row does not have 2 or 4 columns, or the header is not understood.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Pairs CSV not found: {path}")
    try:
        rows = list(csv.reader(io.StringIO(path.read_text())))
    except (UnicodeDecodeError, csv.Error) as error:
        raise ValueError(f"Could not read the pairs CSV {path}: {error}") from error
    rows = [(n, r) for n, r in enumerate(rows, 1) if any(c.strip() for c in r)]
    rows = [(n, r) for n, r in rows if not r[0].lstrip().startswith("#")]
    columns = ["moving", "fixed", "moving_labels", "fixed_labels"]
    widths = (2, 4)
    if rows and rows[0][1][0].strip().lower() in columns:
        header = [c.strip().lower() for c in rows.pop(0)[1]]
        if not {"moving", "fixed"} <= set(header) or not set(header) <= set(columns):
            raise ValueError(
                f"Bad header in the pairs CSV {path}: expected columns moving,fixed and "
                f"optionally moving_labels,fixed_labels. Received: header={header}"
            )
        columns, widths = header, (len(header),)
    if not rows:
        raise ValueError(f"The pairs CSV {path} lists no pairs. Received: rows=0")
    known = {}
    if dataset is not None:
        known = {str(s.image.resolve()): s.label for s in dataset.all_scans() if s.label}
    root = path.parent
    pairs = []
    for line, row in rows:
        if len(row) not in widths:
            raise ValueError(
                f"Bad row in the pairs CSV {path}, line {line}: expected "
                f"{' or '.join(map(str, widths))} columns ({','.join(columns)}). Received: {row}"
            )
        files = {
            name: _csv_path(value, root, path, line)
            for name, value in zip(columns, row, strict=False)
        }
        scans = []
        for key in ("moving", "fixed"):
            label = files.get(f"{key}_labels") or known.get(str(files[key].resolve()))
            if label is None:
                label = _find_label(files[key], label_dir)
            scans.append(Scan(files[key], label))
        pairs.append(file_pair(*scans))
    return pairs


def _find_label(image: Path, label_dir) -> Path | None:
    if label_dir is not None:
        return find_label(image, label_dir)
    if "images" in image.parent.name:
        sibling = image.parent.parent / image.parent.name.replace("images", "labels")
        if sibling.is_dir():
            return find_label(image, sibling)
    return None


def synthetic_pairs(
    shape: Sequence[int], count: int, num_labels: int = 12, seed: int = 0, mode: str = "pairs"
) -> list[PairSource]:
    """Held-back synthetic pairs (`SyntheticPairs(...).pair(i, split="val")`; scan-to-atlas
    pairs with `mode="atlas"`), the validation pairs a synthetic training run never sees."""
    source = SyntheticPairs(shape, num_labels=num_labels, seed=seed, num_val=count)
    make = source.atlas_pair if mode == "atlas" else source.pair
    size = "x".join(str(s) for s in source.shape)
    return [
        PairSource(
            f"synthetic:{size}:seed{seed}:val{i}:moving",
            f"synthetic:{size}:seed{seed}:val{i}:" + ("atlas" if mode == "atlas" else "fixed"),
            lambda i=i: make(i, split="val"),
        )
        for i in range(count)
    ]


def select_pairs(
    registrator,
    data=None,
    pairs_csv=None,
    atlas=None,
    label_dir=None,
    max_pairs=None,
    synthetic_shape=None,
) -> tuple[list[PairSource], str]:
    """The pairs `evaluate.dice` evaluates, and a description of where they come from.

    - `pairs_csv`: the pairs it lists (labels from `data` when given, see `csv_pairs`);
    - `data` with `atlas`: every scan of `data` to that atlas;
    - `data`: its `registration_val` pairs (every scan to its atlas when it has none);
    - neither: the run's own data set when its `config.json` names one, else held-back
      synthetic pairs of the run's shape (`config.data.synthetic_shape`; without a
      configuration, the Keras model's input shape), or of `synthetic_shape` when given.

    `max_pairs` keeps the first pairs only.
    """
    if atlas is not None and data is None:
        raise ValueError(f"An atlas needs a data set to register to it. Received: atlas={atlas}")
    config = registrator.config
    if data is None and pairs_csv is None and config is not None and config.data.data:
        data, label_dir = config.data.data, label_dir or config.data.labels
        atlas = atlas or config.data.atlas
        logger.info("No data given: evaluating on the run's data set %s", data)
    dataset = None
    if data is not None:
        dataset = load_dataset(data, labels=label_dir, atlas=atlas)
    if pairs_csv is not None:
        pairs, description = csv_pairs(pairs_csv, dataset, label_dir), str(pairs_csv)
    elif dataset is not None:
        to_atlas = atlas is not None or (not dataset.val_pairs and dataset.atlas is not None)
        pairs = dataset_pairs(dataset, to_atlas=to_atlas)
        description = f"{data}" + (" (every scan to the atlas)" if to_atlas else "")
    else:
        shape, num_labels, seed, mode, count = _synthetic_setup(registrator, synthetic_shape)
        count = count if max_pairs is None else max_pairs
        pairs = synthetic_pairs(shape, count, num_labels, seed, mode)
        description = f"synthetic val pairs, shape {tuple(shape)}, seed {seed}, mode {mode}"
    if max_pairs is not None:
        if max_pairs < 1:
            raise ValueError(f"Expected max_pairs >= 1. Received: max_pairs={max_pairs}")
        pairs = pairs[:max_pairs]
    return pairs, description


def _synthetic_setup(registrator, shape):
    config = registrator.config
    num_labels, seed, mode, count = 12, 0, "pairs", DEFAULT_SYNTHETIC_PAIRS
    if config is not None:
        data = config.data
        num_labels, seed, mode = data.synthetic_labels, config.train.seed, data.mode
        count = data.val_pairs or count
        shape = shape or data.synthetic_shape
    elif shape is None and registrator.inshape and None not in registrator.inshape:
        shape = registrator.inshape
    if shape is None:
        raise ValueError(
            "Cannot tell which synthetic volumes the model was trained on: no config.json beside "
            "it and no fixed input shape. Give a data set or a synthetic shape. Received: "
            f"model={registrator.model_path}"
        )
    return tuple(int(s) for s in shape), num_labels, seed, mode, count


# ----------------------------------------------------------------------------- evaluation


def _nanmean(values) -> float:
    values = np.asarray(values, np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan


def _nanstd(values) -> float:
    values = np.asarray(values, np.float64)
    values = values[~np.isnan(values)]
    return float(values.std()) if values.size else math.nan


@dataclasses.dataclass
class Evaluation:
    """Results of `evaluate`.

    Attributes:
        records: one dict per (pair, label) with the `CSV_COLUMNS` keys.
        pairs: one dict per pair: `pair`, `moving`, `fixed`, `dice_before`, `dice_after`
            (means over its labels, NaN left out), `folding_fraction`, `sdlogj`, `seconds`.
        example: middle slices of the first pair for `save_figures` (or None).
    """

    records: list[dict]
    pairs: list[dict]
    example: dict | None = None

    def summary(self, model=None, data=None) -> dict:
        """The numbers `summary.json` holds (see the module docstring for the statistics)."""
        before = [p["dice_before"] for p in self.pairs]
        after = [p["dice_after"] for p in self.pairs]
        seconds = [p["seconds"] for p in self.pairs]
        labels = sorted({r["label"] for r in self.records})
        per_label = {
            key: {
                str(label): _nanmean([r[key] for r in self.records if r["label"] == label])
                for label in labels
            }
            for key in ("dice_after", "dice_before")
        }
        timed = seconds[1:] if len(seconds) > 1 else seconds
        summary = {
            "model": None if model is None else str(model),
            "data": None if data is None else str(data),
            "pairs": len(self.pairs),
            "labels": labels,
            "dice_before_mean": _nanmean(before),
            "dice_before_std": _nanstd(before),
            "dice_after_mean": _nanmean(after),
            "dice_after_std": _nanstd(after),
            "dice_per_label": per_label["dice_after"],
            "dice_per_label_before": per_label["dice_before"],
            "folding_fraction_mean": _nanmean([p["folding_fraction"] for p in self.pairs]),
            "sdlogj_mean": _nanmean([p["sdlogj"] for p in self.pairs]),
            "seconds_per_pair": _nanmean(timed),
            "seconds_first_pair": seconds[0] if seconds else math.nan,
            "timing_excludes_first_pair": len(seconds) > 1,
            "per_pair": self.pairs,
        }
        return _json_safe(summary)


def _json_safe(value):
    """NaN -> None (JSON has no NaN), recursively."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def evaluate_pair(registrator, pair: dict, labels=None) -> tuple[dict, dict, dict]:
    """Registers one loaded pair and measures it.

    Returns:
        `(dice_before, dice_after, metrics)`: two `{label: dice}` dicts over the same labels
        (`labels`, or every non-zero label of either map), and `folding_fraction`, `sdlogj`,
        `seconds`, plus the arrays `moved`, `moved_labels`, `displacement`.
    """
    moving_labels, fixed_labels = pair["moving_labels"], pair["fixed_labels"]
    if labels is None:
        present = np.union1d(np.unique(moving_labels), np.unique(fixed_labels))
        labels = [int(v) for v in present if v != 0]
    result = registrator.register(pair["moving"], pair["fixed"])
    moved_labels = registrator.warp_labels(moving_labels, result.displacement)
    jacdet = jacobian_determinant(result.displacement)
    metrics = {
        "folding_fraction": folding_fraction(jacdet),
        "sdlogj": sdlogj(jacdet),
        "seconds": result.seconds,
        "moved": result.moved,
        "moved_labels": moved_labels,
        "displacement": result.displacement,
    }
    before = dice(moving_labels, fixed_labels, labels)
    after = dice(moved_labels, fixed_labels, labels)
    return before, after, metrics


def evaluate(registrator, pairs: Sequence[PairSource], labels=None, progress=True) -> Evaluation:
    """Registers and measures every pair (see the module docstring).

    Args:
        registrator: a `vxmtf.registration.Registrator`.
        pairs: `PairSource`s, loaded one at a time.
        labels: the labels to score; None scores, per pair, every non-zero label of either map.
        progress: show a tqdm progress bar across pairs (on stderr).
    """
    from tqdm.auto import tqdm

    records, per_pair, example = [], [], None
    for index, source in enumerate(tqdm(pairs, desc="pairs", unit="pair", disable=not progress)):
        pair = source.load()
        before, after, metrics = evaluate_pair(registrator, pair, labels)
        for label in before:
            records.append(
                {
                    "pair": index,
                    "moving": source.moving,
                    "fixed": source.fixed,
                    "label": label,
                    "dice_before": before[label],
                    "dice_after": after[label],
                }
            )
        per_pair.append(
            {
                "pair": index,
                "moving": source.moving,
                "fixed": source.fixed,
                "dice_before": _nanmean(list(before.values())),
                "dice_after": _nanmean(list(after.values())),
                "folding_fraction": metrics["folding_fraction"],
                "sdlogj": metrics["sdlogj"],
                "seconds": metrics["seconds"],
            }
        )
        logger.info(
            "pair %d: Dice %.3f -> %.3f",
            index,
            per_pair[-1]["dice_before"],
            per_pair[-1]["dice_after"],
        )
        if example is None:
            example = _middle_slices({**pair, **metrics})
    return Evaluation(records, per_pair, example)


def _middle_slices(arrays: dict) -> dict:
    """2D views of one pair for the figures: the middle slice along the last axis in 3D."""
    keys = ("moving", "fixed", "moved", "fixed_labels", "moved_labels", "displacement")
    ndim = np.ndim(arrays["fixed"])
    out = {}
    for key in keys:
        array = np.asarray(arrays[key])
        if ndim == 3:
            array = array[:, :, array.shape[2] // 2]
        out[key] = array
    # In-plane components of the displacement: axes 0 and 1.
    out["displacement"] = out["displacement"][..., :2]
    return out


# ----------------------------------------------------------------------------- outputs


def _format(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6f}"
    return str(value)


def write_results(evaluation: Evaluation, out_dir, model=None, data=None) -> dict:
    """Writes `dice.csv` and `summary.json` into `out_dir` (atomically); returns the summary."""
    out_dir = Path(out_dir)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for record in evaluation.records:
        writer.writerow([_format(record[c]) for c in CSV_COLUMNS])
    atomic_write_text(out_dir / "dice.csv", buffer.getvalue())
    summary = evaluation.summary(model=model, data=data)
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def format_summary(summary: dict) -> str:
    """A plain-text table: Dice per label (before, after), then the summary numbers."""

    def num(value, digits=3):
        return "  nan" if value is None else f"{value:.{digits}f}"

    lines = [f"{'label':>8}  {'before':>7}  {'after':>7}"]
    for label, after in summary["dice_per_label"].items():
        before = summary["dice_per_label_before"][label]
        lines.append(f"{label:>8}  {num(before):>7}  {num(after):>7}")
    timing = "first pair excluded" if summary["timing_excludes_first_pair"] else "with warm-up"
    folding = summary["folding_fraction_mean"]
    lines += [
        "",
        f"pairs                      {summary['pairs']}",
        f"Dice before (mean ± std)   {num(summary['dice_before_mean'])} ± "
        f"{num(summary['dice_before_std'])}",
        f"Dice after  (mean ± std)   {num(summary['dice_after_mean'])} ± "
        f"{num(summary['dice_after_std'])}",
        f"folding fraction (mean)    {num(folding, 5)}"
        + ("" if folding is None else f" ({100 * folding:.3f} % of voxels)"),
        f"SDlogJ (mean)              {num(summary['sdlogj_mean'])}",
        f"seconds per pair           {num(summary['seconds_per_pair'])} ({timing})",
        "Dice: per pair the mean over labels (NaN, a label absent from both maps, left out), "
        "then mean ± std over pairs.",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- figures


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
    temporary = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(temporary, dpi=110, bbox_inches="tight")
    os.replace(temporary, path)
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


def save_figures(evaluation: Evaluation, out_dir) -> list[Path]:
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
