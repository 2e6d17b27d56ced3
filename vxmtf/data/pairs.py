"""Pairs to evaluate, from a dataset, a CSV of paths or a synthetic source, loaded on demand.

Each is a `PairSource`: names for the report and a `load()` that reads the moving and fixed
images and their label maps (checked by `vxmtf.data.io.load_label_map`: on their image's grid,
integer values). Sources: a dataset's `registration_val` pairs or every scan to its atlas
(`dataset_pairs`), a CSV of paths (`csv_pairs`), held-back synthetic pairs (`synthetic_pairs`).
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vxmtf.data.dataset import Scan, find_label
from vxmtf.data.io import load_label_map, load_volume
from vxmtf.data.pipeline import MODES
from vxmtf.data.synthetic import SyntheticPairs

__all__ = [
    "PairSource",
    "csv_pairs",
    "dataset_pairs",
    "file_pair",
    "synthetic_pairs",
    "voxel_spacing",
]


@dataclasses.dataclass(frozen=True)
class PairSource:
    """One pair to evaluate: names for the report, and a loader.

    `load()` returns `moving`, `fixed` (float arrays `(*spatial)`), `moving_labels` and
    `fixed_labels` (integer arrays of the same shape), `spacing` (the voxel size in mm of the
    fixed grid, `(ndim,)`), `moving_affine` and `fixed_affine` (`(4, 4)` voxel-to-world
    matrices, or None for files without one).
    `label_names` maps label values to structure names when the dataset gives them.
    """

    moving: str
    fixed: str
    load: Callable[[], dict[str, np.ndarray]]
    label_names: dict[int, str] | None = None


def voxel_spacing(affine, ndim: int) -> np.ndarray:
    """Voxel sizes in mm along the first `ndim` axes of a `(4, 4)` voxel-to-world affine: the
    lengths of its first `ndim` columns."""
    return np.linalg.norm(np.asarray(affine, np.float64)[:3, :ndim], axis=0)


def file_pair(moving: Scan, fixed: Scan, label_names=None) -> PairSource:
    """A pair of files, each an image with its label map (checked when loaded).

    Raises:
        FileNotFoundError: an image file does not exist, or an image has no label map.
    """
    for role, scan in (("moving", moving), ("fixed", fixed)):
        if not Path(scan.image).is_file():
            raise FileNotFoundError(f"The {role} image file does not exist: {scan.image}")
        if scan.label is None:
            raise FileNotFoundError(
                f"No label map for {scan.image}: Dice needs one for every image (give it in the "
                "dataset JSON, a labels folder or the pairs CSV)."
            )

    def load():
        out = {}
        for key, scan in (("moving", moving), ("fixed", fixed)):
            image = load_volume(scan.image)
            out[key] = image.array
            labels = load_label_map(scan.label, image, f"{key} label map").volume
            out[f"{key}_labels"] = labels.array
            out[f"{key}_affine"] = image.affine if image.has_affine else None
            if key == "fixed":
                ndim = image.array.ndim
                out["spacing"] = voxel_spacing(image.affine, ndim) if image.has_affine else None
        return out

    return PairSource(str(moving.image), str(fixed.image), load, label_names)


def dataset_pairs(dataset, to_atlas: bool = False) -> list[PairSource]:
    """A dataset's `registration_val` pairs, or every other scan to its atlas (`to_atlas`)."""
    if to_atlas:
        if dataset.atlas is None:
            raise ValueError(f"Dataset '{dataset.name}' has no atlas. Received: atlas=None")
        if not Path(dataset.atlas.image).is_file():
            raise FileNotFoundError(f"The atlas file does not exist: {dataset.atlas.image}")
        atlas = Path(dataset.atlas.image).resolve()
        scans = [s for s in dataset.scans if Path(s.image).resolve() != atlas]
        return [file_pair(scan, dataset.atlas, dataset.label_names) for scan in scans]
    if not dataset.val_pairs:
        raise ValueError(
            f"Dataset '{dataset.name}' has no registration_val pairs: give a pairs CSV or an "
            "atlas. Received: val_pairs=[]"
        )
    return [file_pair(m, f, dataset.label_names) for m, f in dataset.val_pairs]


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
                label = find_label(files[key], label_dir)
            scans.append(Scan(files[key], label))
        pairs.append(file_pair(*scans, None if dataset is None else dataset.label_names))
    return pairs


def synthetic_pairs(source: SyntheticPairs, count: int, mode: str = "pairs") -> list[PairSource]:
    """The first `count` held-back pairs of a synthetic source (`source.pair(i, split="val")`;
    scan-to-atlas pairs with `mode="atlas"`), the validation pairs its training run never
    sees."""
    if mode not in MODES:
        raise ValueError(f"Expected mode in {MODES}. Received: mode={mode!r}")
    make = source.atlas_pair if mode == "atlas" else source.pair
    size = "x".join(str(s) for s in source.shape)
    name = f"synthetic:{size}:seed{source.seed}"
    return [
        PairSource(
            f"{name}:val{i}:moving",
            f"{name}:val{i}:" + ("atlas" if mode == "atlas" else "fixed"),
            lambda i=i: make(i, split="val"),
        )
        for i in range(count)
    ]
