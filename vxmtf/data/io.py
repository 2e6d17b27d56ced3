"""Reading and writing volumes: NIfTI (``.nii``, ``.nii.gz``), ``.npy`` and ``.npz``.

Files keep their geometry: :func:`load_volume` returns the voxel array together with its 4x4
voxel-to-world affine and (for NIfTI) the header, and :func:`save_volume` writes them back.
Writes are atomic (:func:`vxmtf.atomic.atomic_path`): a failed write never truncates an existing
file. :func:`load_label_map` reads a label map and checks it against its image. Files with NaN
or infinite voxels are refused when read (:func:`vxmtf.data.finite.check_finite`).

:func:`read_shape` reads only what is needed to know a file's array shape (the NIfTI header, the
``.npy`` header, or the header of the array inside a ``.npz`` archive), so that a dataset can be
checked before training without loading every volume.

Conventions: arrays are indexed like the file's voxel grid (NIfTI: ``i, j, k``); a NIfTI file of
rank 4 or more whose trailing axes are singletons (``(X, Y, Z, 1)``) is read as rank 3. Other
rank checks are the caller's (see :meth:`vxmtf.data.dataset.Dataset.validate`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

import nibabel as nib
import numpy as np

from vxmtf.atomic import atomic_path
from vxmtf.data.finite import check_finite

logger = logging.getLogger(__name__)

#: File name endings understood by :func:`load_volume` and :func:`save_volume`.
SUFFIXES = (".nii.gz", ".nii", ".npz", ".npy")

#: Key of the volume inside an ``.npz`` archive (an archive holding one array may use any key).
NPZ_KEY = "vol"
#: Optional key of the 4x4 affine inside an ``.npz`` archive.
NPZ_AFFINE_KEY = "affine"

# Errors that nibabel, gzip and numpy raise for truncated or malformed files.
_READ_ERRORS = (
    nib.filebasedimages.ImageFileError,
    nib.spatialimages.HeaderDataError,
    OSError,
    EOFError,
    zlib.error,
    zipfile.BadZipFile,
    ValueError,
    KeyError,
)


@dataclasses.dataclass
class Volume:
    """A voxel array with its geometry.

    Attributes:
        array: the voxel data, indexed like the file's voxel grid, e.g. shape ``(X, Y, Z)``.
        affine: ``(4, 4)`` float64 voxel-to-world matrix (identity when the file has none).
        header: the NIfTI header (a copy, safe to modify), or ``None`` for ``.npy``/``.npz``.
        path: the file the volume was read from, or ``None``.
        has_affine: whether the file carries a voxel-to-world affine (NIfTI, or ``.npz`` with
            an ``affine`` array); when False, ``affine`` is the identity by default and says
            nothing of the volume's place in the world.
    """

    array: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header | None = None
    path: Path | None = None
    has_affine: bool = True

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)


def file_kind(path: str | os.PathLike) -> str:
    """The format named by a file's ending: ``"nifti"``, ``"npz"`` or ``"npy"``.

    Raises:
        ValueError: for any other ending.
    """
    name = Path(path).name.lower()
    if name.endswith((".nii.gz", ".nii")):
        return "nifti"
    if name.endswith(".npz"):
        return "npz"
    if name.endswith(".npy"):
        return "npy"
    raise ValueError(
        f"Unknown volume file type for {path}: expected a name ending in one of "
        f"{', '.join(SUFFIXES)}. Received: path={path}"
    )


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"Volume file not found: {path}")


def _squeeze_trailing(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Drops singleton axes after the third one, e.g. ``(X, Y, Z, 1) -> (X, Y, Z)``."""
    shape = tuple(int(s) for s in shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _unreadable(path: Path, expected: str, error: BaseException) -> ValueError:
    return ValueError(
        f"Could not read {path}: expected {expected}. "
        f"Received: error={type(error).__name__}: {error}"
    )


def _npz_member(archive: zipfile.ZipFile | np.lib.npyio.NpzFile, path: Path) -> str:
    """The key of the volume inside an ``.npz`` archive: ``vol`` or the only array."""
    if isinstance(archive, zipfile.ZipFile):
        keys = [n[: -len(".npy")] for n in archive.namelist() if n.endswith(".npy")]
    else:
        keys = list(archive.files)
    if NPZ_KEY in keys:
        return NPZ_KEY
    arrays = [k for k in keys if k != NPZ_AFFINE_KEY]
    if len(arrays) == 1:
        return arrays[0]
    raise ValueError(
        f"Could not read {path}: expected an .npz archive with a '{NPZ_KEY}' array or a "
        f"single array. Received: keys={keys}"
    )


def read_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """The array shape of a volume file, without reading its voxels.

    NIfTI: from the header (trailing singleton axes past the third dropped, as in
    :func:`load_volume`); ``.npy``: from the memory-mapped header; ``.npz``: from the header of
    the stored array.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if the ending is unknown or the file cannot be read.
    """
    path = Path(path)
    kind = file_kind(path)
    _check_exists(path)
    try:
        if kind == "nifti":
            return _squeeze_trailing(nib.load(path).shape)
        if kind == "npy":
            return tuple(np.load(path, mmap_mode="r").shape)
        with zipfile.ZipFile(path) as archive:
            key = _npz_member(archive, path)
            with archive.open(key + ".npy") as member:
                version = np.lib.format.read_magic(member)
                if version == (1, 0):
                    return tuple(np.lib.format.read_array_header_1_0(member)[0])
                if version == (2, 0):
                    return tuple(np.lib.format.read_array_header_2_0(member)[0])
        with np.load(path, allow_pickle=False) as archive:
            return tuple(archive[key].shape)
    except _READ_ERRORS as error:
        if isinstance(error, ValueError) and str(error).startswith("Could not read"):
            raise
        raise _unreadable(path, _expected(kind), error) from error


def _expected(kind: str) -> str:
    return {
        "nifti": "a NIfTI-1/2 image (.nii or gzip-compressed .nii.gz)",
        "npy": "a NumPy .npy array",
        "npz": f"a NumPy .npz archive holding a '{NPZ_KEY}' array",
    }[kind]


def load_volume(path: str | os.PathLike, finite: bool = True) -> Volume:
    """Reads a volume file with its affine and header.

    NIfTI intensities are returned with the file's scaling applied (``scl_slope``/``scl_inter``)
    in the stored dtype when unscaled. ``.npz`` archives may carry a ``(4, 4)`` ``affine`` array
    next to ``vol``; otherwise the affine is the identity.

    Non-finite voxels (NaN, +-Inf) are refused by default: one of them is enough to spoil the
    min-max normalisation of registration and training (an infinite maximum scales every other
    voxel to 0) and NaNs would pass into the moved image. A file holding them needs fixing (e.g.
    NaN background set to 0) before it is registered, evaluated or trained on.

    Args:
        path: a ``.nii``, ``.nii.gz``, ``.npy`` or ``.npz`` file.
        finite: refuse a file with non-finite voxels (`vxmtf.data.finite.check_finite`); False
            reads the voxels as stored.

    Returns:
        A :class:`Volume`.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if the ending is unknown, the file is unreadable or corrupt, or (with
            `finite`) it holds NaN or infinite voxels ("<path>: N of M voxels are not finite").
    """
    path = Path(path)
    kind = file_kind(path)
    _check_exists(path)
    try:
        volume = _read_volume(path, kind)
    except _READ_ERRORS as error:
        if isinstance(error, ValueError) and str(error).startswith("Could not read"):
            raise
        raise _unreadable(path, _expected(kind), error) from error
    if finite:
        check_finite(volume.array, str(path))
    return volume


def _read_volume(path: Path, kind: str) -> Volume:
    if kind == "nifti":
        image = nib.load(path)
        array = np.asanyarray(image.dataobj)
        array = array.reshape(_squeeze_trailing(array.shape))
        return Volume(array, np.asarray(image.affine, np.float64), image.header.copy(), path)
    if kind == "npy":
        return Volume(np.load(path, allow_pickle=False), np.eye(4), None, path, False)
    with np.load(path, allow_pickle=False) as archive:
        array = archive[_npz_member(archive, path)]
        affine, has_affine = np.eye(4), False
        if NPZ_AFFINE_KEY in archive.files and archive[NPZ_AFFINE_KEY].shape == (4, 4):
            affine = np.asarray(archive[NPZ_AFFINE_KEY], np.float64)
            has_affine = True
    return Volume(array, affine, None, path, has_affine)


def _storage_dtype(array: np.ndarray) -> np.dtype:
    """float32 for real images; the smallest of uint8/int16/int32 holding integer labels."""
    if array.dtype == bool:
        return np.dtype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
        for candidate in (np.uint8, np.int16, np.int32):
            info = np.iinfo(candidate)
            if info.min <= low and high <= info.max:
                return np.dtype(candidate)
        raise ValueError(
            f"Integer volume values must fit in int32 to be saved as NIfTI. "
            f"Received: min={low}, max={high}"
        )
    if np.issubdtype(array.dtype, np.floating):
        return np.dtype(np.float32)
    raise TypeError(
        f"Expected a real (integer, boolean or floating) array. Received: dtype={array.dtype}"
    )


def _check_dtype(array: np.ndarray, dtype) -> np.dtype:
    """An explicitly requested NIfTI storage dtype, checked against the values it must hold."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.floating):
        return dtype
    if not np.issubdtype(dtype, np.integer):
        raise TypeError(f"Expected an integer or floating storage dtype. Received: dtype={dtype}")
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        raise TypeError(
            f"An integer storage dtype needs an integer array. Received: dtype={dtype}, "
            f"array.dtype={array.dtype}"
        )
    if array.size:
        info = np.iinfo(dtype)
        low, high = int(array.min()), int(array.max())
        if low < info.min or high > info.max:
            raise ValueError(
                f"Values do not fit the storage dtype {dtype} ({info.min}..{info.max}). "
                f"Received: min={low}, max={high}"
            )
    return dtype


def _nifti_image(array: np.ndarray, affine, header, dtype=None) -> nib.Nifti1Image:
    array = np.asarray(array)
    dtype = _storage_dtype(array) if dtype is None else _check_dtype(array, dtype)
    data = array.astype(dtype, copy=False)
    if header is None:
        affine = np.eye(4) if affine is None else np.asarray(affine, np.float64)
        image = nib.Nifti1Image(data, affine)
        image.header.set_data_dtype(dtype)
        return image
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    header = image_class.header_class.from_header(header)
    header.set_data_dtype(dtype)
    header.set_slope_inter(None, None)
    if affine is not None:
        affine = np.asarray(affine, np.float64)
        if not np.allclose(affine, header.get_best_affine()):
            # Keep the header's transform codes; nibabel would otherwise reset them.
            header.set_sform(affine, code=int(header["sform_code"]) or 2)
            if int(header["qform_code"]):
                header.set_qform(affine, code=int(header["qform_code"]))
    return image_class(data, affine, header)


def _write_nifti(target: Path, array: np.ndarray, affine, header, dtype=None) -> None:
    nib.save(_nifti_image(array, affine, header, dtype), target)


def _write_numpy(target: Path, kind: str, array: np.ndarray, affine) -> None:
    with open(target, "wb") as handle:
        if kind == "npy":
            np.save(handle, np.asarray(array))
        else:
            arrays = {NPZ_KEY: np.asarray(array)}
            if affine is not None:
                arrays[NPZ_AFFINE_KEY] = np.asarray(affine, np.float64)
            np.savez_compressed(handle, **arrays)


def save_volume(
    path: str | os.PathLike,
    array: np.ndarray,
    affine: np.ndarray | None = None,
    header: nib.Nifti1Header | None = None,
    dtype=None,
) -> Path:
    """Writes a volume atomically, keeping the given geometry.

    NIfTI: floating arrays are stored as float32, integer and boolean arrays (label maps) as the
    smallest of uint8/int16/int32 that holds their values, without intensity scaling; `dtype`
    chooses the storage type instead (e.g. the dtype of the label file a map derives from). A given
    header is kept (pixdim, units, qform/sform codes, description...); a given affine overrides
    the header's transform but keeps its codes. ``.npy`` stores the array as is; ``.npz``
    stores it under ``vol`` (and ``affine`` when given).

    Args:
        path: destination ending in ``.nii``, ``.nii.gz``, ``.npy`` or ``.npz``.
        array: the voxel data.
        affine: optional ``(4, 4)`` voxel-to-world matrix; defaults to the header's, else the
            identity.
        header: optional NIfTI header (e.g. ``Volume.header`` of the volume this one derives
            from).
        dtype: optional NIfTI storage dtype (ignored for ``.npy``/``.npz``); an integer dtype
            needs an integer or boolean array whose values fit it.

    Returns:
        The destination path.

    Raises:
        ValueError: if the ending is unknown, the affine is not 4x4, or integer values do not
            fit in int32 (or in `dtype`).
        TypeError: for non-numeric arrays, or an integer `dtype` for a floating array.
    """
    path = Path(path)
    kind = file_kind(path)
    if affine is not None and np.shape(affine) != (4, 4):
        raise ValueError(
            f"Expected a (4, 4) affine for {path}. Received: affine.shape={np.shape(affine)}"
        )
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix
    with atomic_path(path, suffix=suffix) as temporary:
        if kind == "nifti":
            _write_nifti(temporary, array, affine, header, dtype)
        else:
            _write_numpy(temporary, kind, array, affine)
    logger.debug("Wrote %s with shape %s", path, np.shape(array))
    return path


#: Two affines whose entries all differ by less than this (mm) describe the same grid.
AFFINE_TOLERANCE = 1e-3


def same_affine(a, b) -> bool:
    """Whether two `(4, 4)` affines agree entry by entry within `AFFINE_TOLERANCE`."""
    return bool(np.allclose(a, b, rtol=0.0, atol=AFFINE_TOLERANCE))


def load_label_map(path, image: Volume | None = None, role: str = "label map") -> LabelMap:
    """Reads an integer label map and checks it lies on its image's grid.

    Args:
        path: the label file.
        image: the volume it labels (checked: the same shape and, when both files carry one,
            the same affine), or None.
        role: how errors name the file (e.g. "moving label map").

    Returns:
        A `LabelMap`: the `Volume` with an int32 array (a file of floats must hold integers;
        booleans become 0/1), and the integer dtype the file stores (to write results in it).

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: unreadable, off its image's grid, or non-integer values.
    """
    try:
        labels = load_volume(path, finite=False)  # non-finite labels: refused below
    except FileNotFoundError as error:
        raise FileNotFoundError(f"The {role} file was not found: {path}") from error
    if image is not None:
        if labels.shape != image.shape:
            raise ValueError(
                f"The {role} {path} must lie on the grid of its image {image.path}: expected "
                f"shape {image.shape}. Received: shape={labels.shape}"
            )
        if labels.has_affine and image.has_affine and not same_affine(labels.affine, image.affine):
            raise ValueError(
                f"The {role} {path} must lie on the grid of its image {image.path}: expected its "
                f"affine\n{image.affine}\nReceived: affine=\n{labels.affine}"
            )
    array = labels.array
    storage = array.dtype if np.issubdtype(array.dtype, np.integer) else None
    if labels.header is not None and np.issubdtype(labels.header.get_data_dtype(), np.integer):
        storage = labels.header.get_data_dtype()  # scaled integer files read as floats
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        if not (np.all(np.isfinite(array)) and np.array_equal(array, np.round(array))):
            raise ValueError(
                f"The {role} {path} must hold integer labels. "
                f"Received: dtype={array.dtype} with non-integer values"
            )
    return LabelMap(dataclasses.replace(labels, array=array.astype(np.int32)), storage)


class LabelMap(NamedTuple):
    """A label map read by `load_label_map`: the volume (int32) and its file's integer dtype
    (None for a file of floats holding integers, or of booleans)."""

    volume: Volume
    storage: np.dtype | None
