"""Dataset descriptions: which image and label files to train and validate on.

A :class:`Dataset` lists file paths only; nothing is read until :meth:`Dataset.validate` (file
headers) or the tf.data pipeline (voxels). Two ways to build one, both through
:func:`load_dataset`:

- a Learn2Reg-style JSON file (e.g. ``LPBA40_dataset.json``)::

      {"name": ..., "labels": {"0": "background", "21": ...},
       "training": [{"image": "./imagesTr/A.nii.gz", "label": "./labelsTr/A.nii.gz"}, ...],
       "atlas": {"image": ..., "label": ...}        (or a single image path; optional),
       "registration_val": [{"fixed": "./imagesTr/B.nii.gz", "moving": ...}, ...]}

  Paths are relative to the JSON file's folder. ``registration_val`` names images; the label of
  each is the one the ``training`` list (or the atlas) gives that image, else the file of the
  same name in the labels folder (the ``labels`` argument, or the sibling of the image folder
  with ``images`` replaced by ``labels``: ``imagesTr -> labelsTr``).
- a folder (or a glob pattern) of images, with an optional folder of label maps. The label of
  ``NAME.EXT`` is the first file found among ``NAME.EXT``, ``NAME_seg.*``, ``NAME_label.*`` and
  ``NAME_labels.*`` (see :data:`LABEL_SUFFIXES`). If the labels folder is the image folder
  itself, files ending in one of those suffixes are label maps and not images.

Training split: the JSON ``training`` list of Learn2Reg datasets holds every subject, including
the atlas and the validation subjects. :meth:`Dataset.training_scans` (default
``exclude_val=True``) drops every image that appears in ``registration_val`` or is the atlas,
so that validation measures registration of unseen subjects. For LPBA40 this leaves the 30
subjects 11-40 (atlas: subject 1; validation: subjects 6-10).

Checks: :meth:`Dataset.validate` reads file headers only (existence, rank, shapes);
:meth:`Dataset.check_voxels` reads every file once: images must be finite
(:func:`vxmtf.data.finite.check_finite`), label maps must hold integers on their image's grid
(:func:`vxmtf.data.io.load_label_map`, as registration and evaluation require) and, when the
dataset lists its ``label_values`` (a JSON ``labels``), only listed values
(:func:`check_label_values`): an unlisted value would otherwise become background. Without
listed values, the values found in the label maps are the dataset's labels.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from vxmtf.data.io import SUFFIXES, load_label_map, load_volume, read_shape

logger = logging.getLogger(__name__)

#: Suffixes tried, in order, after an image's name to find its label map in a labels folder.
LABEL_SUFFIXES = ("", "_seg", "_label", "_labels")


class Scan(NamedTuple):
    """One subject: an image file and its label map file (or ``None``)."""

    image: Path
    label: Path | None = None


def _strip_suffix(name: str) -> tuple[str, str]:
    """Splits ``A.nii.gz`` into ``("A", ".nii.gz")``; names with an unknown ending keep it."""
    lower = name.lower()
    for suffix in SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)], name[-len(suffix) :]
    return name, ""


def _is_volume_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and _strip_suffix(path.name)[1] != ""


def _key(path: Path) -> str:
    """A comparable form of a path (absolute, symlinks resolved)."""
    return str(Path(path).resolve())


def sibling_labels_dir(image: str | os.PathLike) -> Path | None:
    """The labels folder beside an image's ``images*`` folder (``imagesTr -> labelsTr``, the
    Learn2Reg layout), or ``None`` when the image's folder is not so named or has no sibling."""
    folder = Path(image).parent
    if "images" not in folder.name:
        return None
    sibling = folder.parent / folder.name.replace("images", "labels")
    return sibling if sibling.is_dir() else None


def find_label(
    image: str | os.PathLike, labels_dir: str | os.PathLike | None = None
) -> Path | None:
    """The label map of ``image`` in ``labels_dir`` by the naming rule, or ``None``.

    Tries ``NAME + suffix + ending`` for ``suffix`` in :data:`LABEL_SUFFIXES` (the image's own
    ending first, then every other known ending). The image itself never counts as its label.
    Without ``labels_dir``, looks in :func:`sibling_labels_dir` of the image.
    """
    if labels_dir is None:
        labels_dir = sibling_labels_dir(image)
        if labels_dir is None:
            return None
    image, labels_dir = Path(image), Path(labels_dir)
    if not labels_dir.is_dir():
        return None
    stem, ending = _strip_suffix(image.name)
    endings = [ending] + [s for s in SUFFIXES if s != ending]
    for suffix in LABEL_SUFFIXES:
        for candidate_ending in endings:
            candidate = labels_dir / f"{stem}{suffix}{candidate_ending}"
            if candidate.is_file() and _key(candidate) != _key(image):
                return candidate
    return None


@dataclasses.dataclass
class Dataset:
    """File lists of a registration dataset.

    Attributes:
        images: every image (for JSON datasets: the whole ``training`` list, which may include
            the atlas and the validation subjects; see :meth:`training_scans`).
        labels: label map of each image (same order), or ``None`` when there are none.
        atlas: the atlas ``Scan(image, label)`` for scan-to-atlas training, or ``None``.
        val_pairs: validation pairs ``(moving, fixed)``, each a ``Scan``.
        label_values: the label values in use, sorted, ``0`` (background) first; ``None`` when
            unknown (label maps are then taken to hold contiguous indices already).
        name: a short name for logs.
        label_names: structure name of each label value (a dataset JSON's ``labels``), or
            ``None``.
    """

    images: list[Path]
    labels: list[Path] | None = None
    atlas: Scan | None = None
    val_pairs: list[tuple[Scan, Scan]] = dataclasses.field(default_factory=list)
    label_values: list[int] | None = None
    name: str = "dataset"
    label_names: dict[int, str] | None = None

    def __post_init__(self):
        self.images = [Path(p) for p in self.images]
        if self.labels is not None:
            self.labels = [Path(p) for p in self.labels]
            if len(self.labels) != len(self.images):
                raise ValueError(
                    f"Expected one label map per image. Received: "
                    f"len(images)={len(self.images)}, len(labels)={len(self.labels)}"
                )
        if self.atlas is not None:
            self.atlas = _as_scan(self.atlas)
        self.val_pairs = [(_as_scan(m), _as_scan(f)) for m, f in self.val_pairs]
        if self.label_values is not None:
            values = sorted({int(v) for v in self.label_values} | {0})
            self.label_values = values

    @property
    def scans(self) -> list[Scan]:
        """Every image with its label map, in file-list order."""
        labels = self.labels if self.labels is not None else [None] * len(self.images)
        return [Scan(i, lab) for i, lab in zip(self.images, labels, strict=True)]

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    def held_out(self) -> set[str]:
        """Resolved paths of the atlas and validation images (never trained on)."""
        keys = {_key(s.image) for pair in self.val_pairs for s in pair}
        if self.atlas is not None:
            keys.add(_key(self.atlas.image))
        return keys

    def training_scans(self, exclude_val: bool = True) -> list[Scan]:
        """Scans to train on: all of them, minus the atlas and validation images by default."""
        if not exclude_val:
            return self.scans
        held_out = self.held_out()
        return [s for s in self.scans if _key(s.image) not in held_out]

    def training_images(self, exclude_val: bool = True) -> list[Path]:
        """Image paths of :meth:`training_scans`."""
        return [s.image for s in self.training_scans(exclude_val)]

    def all_scans(self) -> list[Scan]:
        """Every distinct scan the dataset names (training, atlas, validation), in order."""
        seen, result = set(), []
        candidates = list(self.scans)
        if self.atlas is not None:
            candidates.append(self.atlas)
        candidates += [s for pair in self.val_pairs for s in pair]
        for scan in candidates:
            key = (_key(scan.image), None if scan.label is None else _key(scan.label))
            if key not in seen:
                seen.add(key)
                result.append(scan)
        return result

    def with_validation(self, num_val: int, seed: int = 0) -> Dataset:
        """A copy holding out ``num_val`` random scans for validation (folder datasets).

        With an atlas, the validation pairs register each held-out scan to the atlas; without
        one, consecutive held-out scans are paired (needs ``num_val >= 2``).
        """
        candidates = self.training_scans()
        minimum = 1 if self.atlas is not None else 2
        if not minimum <= num_val < len(candidates):
            raise ValueError(
                f"Expected {minimum} <= num_val < {len(candidates)} (the number of training "
                f"scans). Received: num_val={num_val}"
            )
        order = np.random.default_rng(seed).permutation(len(candidates))[:num_val]
        held = [candidates[i] for i in sorted(order)]
        if self.atlas is not None:
            pairs = [(s, self.atlas) for s in held]
        else:
            pairs = [(held[i + 1], held[i]) for i in range(num_val - 1)]
        return dataclasses.replace(self, val_pairs=list(self.val_pairs) + pairs)

    def validate(self, ndim: int) -> tuple[int, ...]:
        """Checks every file before training, reading headers only.

        Checks that each image and label map of :meth:`all_scans` exists and is readable, that
        every image has rank ``ndim``, that all images share one shape and that each label map
        has its image's shape.

        Args:
            ndim: 2 or 3, the number of spatial dimensions.

        Returns:
            The common image shape.

        Raises:
            FileNotFoundError: naming the first missing file.
            ValueError: naming the offending file, what was expected and what was received.
        """
        if ndim not in (2, 3):
            raise ValueError(f"Expected ndim to be 2 or 3. Received: ndim={ndim}")
        scans = self.all_scans()
        if not scans:
            raise ValueError(f"Dataset '{self.name}' names no images. Received: images=[]")
        shape, first = None, None
        for scan in scans:
            image_shape = read_shape(scan.image)
            if len(image_shape) != ndim:
                raise ValueError(
                    f"Image {scan.image} has rank {len(image_shape)}, expected a {ndim}D volume "
                    f"(rank {ndim}). Received: shape={image_shape}"
                )
            if shape is None:
                shape, first = image_shape, scan.image
            elif image_shape != shape:
                raise ValueError(
                    f"Image {scan.image} has shape {image_shape}, expected {shape} like "
                    f"{first}: all images must share one shape. Received: shape={image_shape}"
                )
            if scan.label is not None:
                label_shape = read_shape(scan.label)
                if label_shape != image_shape:
                    raise ValueError(
                        f"Label map {scan.label} has shape {label_shape}, expected its image's "
                        f"shape {image_shape} ({scan.image}). Received: label_shape="
                        f"{label_shape}, image_shape={image_shape}"
                    )
        logger.info("Dataset '%s': %d files checked, shape %s", self.name, len(scans), shape)
        return shape

    def check_voxels(
        self, labels: bool = True, scans: list[Scan] | None = None
    ) -> list[int] | None:
        """Reads every file (after :meth:`validate`) and checks its voxels.

        Each image must hold finite intensities; with ``labels``, each label map must hold
        integers (a file of floats may store whole numbers) on its image's grid, and when
        :attr:`label_values` is known, only values it lists.

        Args:
            labels: also read and check the label maps (of the scans that have one).
            scans: the scans to check; default :meth:`all_scans`.

        Returns:
            With ``labels``: the sorted label values found, ``0`` (background) first, or
            ``None`` when no scan has a label map. Without: ``None``.

        Raises:
            FileNotFoundError: naming a missing file.
            ValueError: naming the file: non-finite image voxels (and how many), non-integer
                or negative labels, a label map off its image's grid, or label values that
                :attr:`label_values` does not list (:func:`check_label_values`).
        """
        scans = self.all_scans() if scans is None else scans
        logger.info("Dataset '%s': reading %d scans to check their voxels", self.name, len(scans))

        def check(scan: Scan) -> np.ndarray | None:
            image = load_volume(scan.image)  # refuses non-finite voxels, naming the file
            if not labels or scan.label is None:
                return None
            values = np.unique(load_label_map(scan.label, image).volume.array)
            if self.label_values is not None:
                check_label_values(values, self.label_values, scan.label, self.name)
            elif values.size and values[0] < 0:
                raise ValueError(
                    f"The label map {scan.label} holds negative values: expected label values "
                    f">= 0 (0 is background). Received: min={int(values[0])}"
                )
            return values

        results = [v for v in map(check, scans) if v is not None]
        if not results:
            return None
        return sorted({0, *(int(v) for values in results for v in values)})


def check_label_values(values, label_values, path, dataset: str = "dataset") -> None:
    """Raises unless every value in ``values`` (those of the label map at ``path``) is one of
    ``label_values`` (a dataset JSON's ``labels``).

    Training maps ``label_values[k]`` to class ``k``; an unlisted value would silently become
    background, so it is refused here, as registration and evaluation never drop a label.

    Raises:
        ValueError: naming the file and the unlisted values.
    """
    unknown = np.setdiff1d(np.asarray(values, np.int64), np.asarray(label_values, np.int64))
    if unknown.size:
        shown = unknown.tolist()[:10]
        more = f" (and {unknown.size - len(shown)} more)" if unknown.size > len(shown) else ""
        raise ValueError(
            f"The label map {path} holds label values {shown}{more} that the `labels` of "
            f"dataset '{dataset}' do not list: expected only the listed values "
            f"{list(label_values)[:10]}{'...' if len(label_values) > 10 else ''} (add the "
            f"missing values to the dataset JSON's `labels`, or remove them from the label "
            f"map). Received: unknown_values={shown}"
        )


def _as_scan(value) -> Scan:
    if isinstance(value, Scan):
        return Scan(Path(value.image), None if value.label is None else Path(value.label))
    if isinstance(value, dict):
        label = value.get("label")
        return Scan(Path(value["image"]), None if label is None else Path(label))
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return Scan(Path(value[0]), None if value[1] is None else Path(value[1]))
    if isinstance(value, (str, os.PathLike)):
        return Scan(Path(value), None)
    raise TypeError(
        f"Expected a scan as a path, an (image, label) pair or a dict with 'image' and "
        f"'label'. Received: {value!r}"
    )


def _resolve_atlas(atlas, labels_dir: Path | None) -> Scan | None:
    if atlas is None:
        return None
    scan = _as_scan(atlas)
    if scan.label is None and labels_dir is not None:
        scan = Scan(scan.image, find_label(scan.image, labels_dir))
    return scan


def load_dataset(
    path: str | os.PathLike,
    labels: str | os.PathLike | None = None,
    atlas=None,
    name: str | None = None,
) -> Dataset:
    """Builds a :class:`Dataset` from a Learn2Reg JSON file, a folder or a glob pattern.

    Args:
        path: a ``.json`` dataset description, a folder of images, or a glob pattern such as
            ``"data/*.nii.gz"``.
        labels: folder of label maps matched to images by name (see the module docstring).
            For JSON datasets, used only for images the JSON gives no label.
        atlas: overrides the atlas: an image path, an ``(image, label)`` pair or a dict with
            ``image`` and ``label``. A bare image path gets its label from ``labels``.
        name: dataset name; defaults to the JSON ``name`` or the folder name.

    Raises:
        FileNotFoundError: if ``path`` matches nothing, or an image has no label map in
            ``labels``.
        ValueError: if the JSON is malformed.
    """
    text = str(path)
    path = Path(path)
    labels_dir = None if labels is None else Path(labels)
    if path.suffix.lower() == ".json":
        if not path.is_file():
            raise FileNotFoundError(f"Dataset description not found: {path}")
        return _from_json(path, labels_dir, atlas, name)
    if any(c in text for c in "*?["):
        images = sorted(Path(p) for p in glob.glob(text) if _is_volume_file(Path(p)))
        default_name = path.parent.name
    elif path.is_dir():
        images = sorted(p for p in path.iterdir() if _is_volume_file(p))
        default_name = path.name
    else:
        raise FileNotFoundError(f"No dataset JSON, folder or glob pattern at {path}")
    if labels_dir is not None:
        if not labels_dir.is_dir():
            raise FileNotFoundError(f"Labels folder not found: {labels_dir}")
        # Label maps sharing the image folder are not images.
        label_like = tuple(s for s in LABEL_SUFFIXES if s)
        images = [
            p
            for p in images
            if _key(p.parent) != _key(labels_dir)
            or not _strip_suffix(p.name)[0].endswith(label_like)
        ]
    if not images:
        raise FileNotFoundError(f"No volume files ({', '.join(SUFFIXES)}) found at {text}")
    label_files = None
    if labels_dir is not None:
        label_files = []
        for image in images:
            found = find_label(image, labels_dir)
            if found is None:
                tried = ", ".join(f"{_strip_suffix(image.name)[0]}{s}.*" for s in LABEL_SUFFIXES)
                raise FileNotFoundError(
                    f"No label map for image {image} in {labels_dir} (tried {tried})"
                )
            label_files.append(found)
    return Dataset(
        images=images,
        labels=label_files,
        atlas=_resolve_atlas(atlas, labels_dir),
        name=name or default_name,
    )


def _from_json(path: Path, labels_dir: Path | None, atlas, name: str | None) -> Dataset:
    try:
        description = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"Could not parse dataset description {path}: {error}") from error
    if not isinstance(description, dict) or not isinstance(description.get("training"), list):
        raise ValueError(
            f"Expected a JSON object with a 'training' list in {path}. "
            f"Received: keys={sorted(description) if isinstance(description, dict) else None}"
        )
    root = path.parent

    def resolve(entry) -> Path:
        return Path(os.path.normpath(root / entry))

    def scan_of(entry) -> Scan:
        scan = _as_scan(entry)
        return Scan(resolve(scan.image), None if scan.label is None else resolve(scan.label))

    training = [scan_of(e) for e in description["training"]]
    json_atlas = description.get("atlas")
    atlas_scan = _resolve_atlas(atlas, labels_dir) if atlas is not None else None
    if atlas_scan is None and json_atlas is not None:
        atlas_scan = scan_of(json_atlas)

    known = {_key(s.image): s.label for s in training if s.label is not None}
    if atlas_scan is not None and atlas_scan.label is not None:
        known.setdefault(_key(atlas_scan.image), atlas_scan.label)

    def with_label(scan: Scan) -> Scan:
        if scan.label is not None:
            return scan
        label = known.get(_key(scan.image))
        if label is None:
            label = find_label(scan.image, labels_dir)
        return Scan(scan.image, label)

    training = [with_label(s) for s in training]
    if atlas_scan is not None:
        atlas_scan = with_label(atlas_scan)
    with_labels = [s.label is not None for s in training]
    if any(with_labels) and not all(with_labels):
        missing = [str(s.image) for s in training if s.label is None]
        raise FileNotFoundError(
            f"Some training images of {path} have no label map: {', '.join(missing[:5])}"
        )
    val_pairs = []
    for entry in description.get("registration_val") or []:
        if not isinstance(entry, dict) or not {"fixed", "moving"} <= set(entry):
            raise ValueError(
                f"Expected 'registration_val' entries with 'fixed' and 'moving' in {path}. "
                f"Received: {entry!r}"
            )
        val_pairs.append(
            (with_label(scan_of(entry["moving"])), with_label(scan_of(entry["fixed"])))
        )
    label_names = description.get("labels")
    label_values, names = None, None
    if isinstance(label_names, dict) and label_names:
        try:
            names = {int(k): str(v) for k, v in label_names.items()}
        except ValueError as error:
            raise ValueError(
                f"Expected integer keys in the 'labels' of {path}. Received: "
                f"keys={list(label_names)[:5]}"
            ) from error
        label_values = sorted(names)
    return Dataset(
        images=[s.image for s in training],
        labels=[s.label for s in training] if all(with_labels) and training else None,
        atlas=atlas_scan,
        val_pairs=val_pairs,
        label_values=label_values,
        name=name or description.get("name") or path.stem,
        label_names=names,
    )
