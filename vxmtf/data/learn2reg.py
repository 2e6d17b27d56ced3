"""Displacement fields in the Learn2Reg (2020/2021) submission format, and back.

Format (https://learn2reg.grand-challenge.org/Submission/): one ``.npz`` file per validation
or test pair, named ``disp_<fixed>_<moving>.npz`` with the zero-padded 4-digit case ids of the
fixed and the moving image (``disp_0001_0002.npz``), holding a single array (key ``arr_0``):

- layout ``(3, X, Y, Z)``, channels first, component ``k`` along voxel axis ``k`` of the image
  as nibabel reads it (the format ``[[x, y, z], X, Y, Z]`` of ``scipy.ndimage.map_coordinates``);
- dtype ``float16``;
- half resolution ``(3, X/2, Y/2, Z/2)`` for the tasks that ask for it (2021: abdomen CT-MR,
  lung CT, OASIS brain MR), full resolution for the others (2021: hippocampus MR);
- values in voxels of the *full-resolution* grid (upsampling does not rescale them);
- displacements only, fixed-to-moving: the evaluation upsamples each channel with
  ``scipy.ndimage.zoom(disp[k], 2, order=2)`` and warps the moving labels with
  ``map_coordinates(moving, identity + disp, order=0)``, i.e.
  ``warped[x] = moving[x + disp(x)]`` on the fixed grid.

This is exactly the convention of vxmtf's dense displacement ``u`` of shape ``(X, Y, Z, 3)``
(``moved[x] = moving[x + u(x)]``, component ``k`` along axis ``k``, in voxels), so writing a
field only moves the channel axis first, downsamples and casts. The field must live on the grid
of the fixed image *file* (undo any padding, cropping or resampling done for the network first).

Downsampling: ``zoom(u_k, 0.5, order=3)`` samples ``u_k`` with cubic splines at the half-grid
points ``i (X - 1) / (X/2 - 1)``, the points that the evaluation's ``zoom(., 2)`` (corner-aligned,
``grid_mode=False``) maps back onto the full grid. Round trip through
:func:`load_l2r_displacement` (the evaluation's upsampling): for a smooth field the error is a few
thousandths of a voxel on average and below a few hundredths away from the border. Within the
outer four voxels (two half-resolution cells) it can reach a few tenths of a voxel where the
field slopes across the border: the evaluation's spline (``mode="constant"``, prefiltered as
``"mirror"``) is mirror-symmetric there, i.e. flat at the edge. Measured on 160x192x160 with
Gaussian-smoothed noise up to 16 voxels (sigma 10 voxels): mean 0.001, largest 0.07. float16
rounding adds at most 2**-8 voxel (0.004) to displacements below 16 voxels.

Later Learn2Reg editions (2022 on, ``MDL-UzL/L2R`` ``evaluation/evaluation.py``) instead read
full-resolution, channels-last fields ``(X, Y, Z, 3)`` from ``.nii.gz`` or ``.npz`` files; this
module writes the 2020/2021 format only.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from scipy import ndimage

from vxmtf.atomic import atomic_path

__all__ = [
    "l2r_case_id",
    "l2r_displacement_name",
    "load_l2r_displacement",
    "save_l2r_displacement",
    "to_l2r_displacement",
]

#: Learn2Reg file names: ``<TASK>_<4-digit case id>_<4-digit modality>`` plus a file ending.
_L2R_STEM = re.compile(r"^.+_(?P<case>\d{4})_\d{4}$")
#: Endings stripped from a file name before it is matched.
_ENDINGS = (".nii.gz", ".nii", ".npz", ".npy", ".csv", ".mha", ".nrrd")
#: Largest finite float16.
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def l2r_case_id(name) -> str:
    """The Learn2Reg case id of an image, from its file name (or a case id given directly).

    Rules, in order:

    1. an ``int`` ``n`` gives ``f"{n:04d}"`` (``6 -> "0006"``);
    2. the file name (folders dropped) loses its ending (``.nii.gz``, ``.nii``, ``.npz``,
       ``.npy``, ``.csv``, ``.mha``, ``.nrrd``);
    3. a stem ``<task>_<dddd>_<dddd>`` (Learn2Reg's ``<TASK>_<case>_<modality>``) gives its
       first group of four digits: ``LPBA40_0006_0000.nii.gz -> "0006"``;
    4. a stem of digits only is zero-padded to four: ``"6" -> "0006"``, ``"0395"`` stays;
    5. otherwise the stem itself: ``sub-07_T1w.nii.gz -> "sub-07_T1w"``.

    Raises:
        TypeError: if `name` is neither a string, a path nor an integer.
        ValueError: for a negative integer or an empty name.
    """
    if isinstance(name, bool) or not isinstance(name, str | os.PathLike | int | np.integer):
        raise TypeError(
            "Expected `name` to be a file name, a path or an integer case id. "
            f"Received: name={name!r} of type {type(name).__name__}"
        )
    if isinstance(name, int | np.integer):
        if name < 0:
            raise ValueError(f"Expected a non-negative case id. Received: name={int(name)}")
        return f"{int(name):04d}"
    stem = Path(name).name
    for ending in _ENDINGS:
        if stem.lower().endswith(ending) and len(stem) > len(ending):
            stem = stem[: -len(ending)]
            break
    if not stem:
        raise ValueError(f"Expected a non-empty file name or case id. Received: name={name!r}")
    match = _L2R_STEM.match(stem)
    if match:
        return match["case"]
    if stem.isdigit():
        return stem.zfill(4)
    return stem


def l2r_displacement_name(fixed, moving) -> str:
    """``disp_<fixed>_<moving>.npz`` for two images (file names, paths or case ids).

    Each is turned into its case id by :func:`l2r_case_id`:
    ``l2r_displacement_name("LPBA40_0006_0000.nii.gz", 7) == "disp_0006_0007.npz"``.
    """
    return f"disp_{l2r_case_id(fixed)}_{l2r_case_id(moving)}.npz"


def to_l2r_displacement(displacement, half_resolution: bool = True) -> np.ndarray:
    """Converts a displacement ``(X, Y, Z, 3)`` to the Learn2Reg array ``(3, X/2, Y/2, Z/2)``.

    Args:
        displacement: array of shape ``(X, Y, Z, 3)`` in voxels of the fixed image's grid,
            component ``k`` along axis ``k``, ``moved[x] = moving[x + u(x)]``. One sample, no
            batch axis. Any real dtype; computed in float64.
        half_resolution: downsample by 2 along each axis (cubic splines at the corner-aligned
            half grid, see the module docstring); the sizes must then be even. ``False`` keeps
            the full resolution (tasks that ask for it).

    Returns:
        float16 array of shape ``(3, X/2, Y/2, Z/2)`` (or ``(3, X, Y, Z)``), channels first, in
        voxels of the full-resolution grid.

    Raises:
        ValueError: if the shape is not ``(X, Y, Z, 3)``, a size is odd with
            ``half_resolution``, or a value is not finite or too large for float16.
        TypeError: if the field is not real-valued.
    """
    u = np.asarray(displacement)
    if u.dtype == np.bool_ or not (
        np.issubdtype(u.dtype, np.integer) or np.issubdtype(u.dtype, np.floating)
    ):
        raise TypeError(
            "Expected `displacement` to be a real-valued array. "
            f"Received: displacement.dtype={u.dtype}"
        )
    if u.ndim != 4 or u.shape[-1] != 3 or min(u.shape[:3]) < 1:
        hint = " (one sample: drop the batch axis)" if u.ndim == 5 and u.shape[0] == 1 else ""
        raise ValueError(
            "Expected `displacement` of shape (X, Y, Z, 3), channels last, for one pair"
            f"{hint}. Received: displacement.shape={u.shape}"
        )
    if half_resolution and any(size % 2 for size in u.shape[:3]):
        raise ValueError(
            "Expected even spatial sizes for a half-resolution Learn2Reg field (the evaluation "
            "upsamples by exactly 2). Received: displacement.shape="
            f"{u.shape}"
        )
    u = u.astype(np.float64, copy=False)
    if not np.all(np.isfinite(u)):
        raise ValueError("Expected `displacement` to be finite. Received: non-finite values")
    # (X, Y, Z, 3) -> (3, X, Y, Z): channels first.
    channels = np.moveaxis(u, -1, 0)
    if half_resolution:
        # (3, X, Y, Z) -> (3, X/2, Y/2, Z/2); values stay in full-resolution voxels.
        channels = np.stack([ndimage.zoom(c, 0.5, order=3, mode="nearest") for c in channels])
    largest = float(np.abs(channels).max())
    if largest > _FLOAT16_MAX:
        raise ValueError(
            f"Expected displacements below {_FLOAT16_MAX:g} voxels (float16). "
            f"Received: max |displacement|={largest:g}"
        )
    return channels.astype(np.float16)


def save_l2r_displacement(
    displacement, directory, fixed, moving, half_resolution: bool = True
) -> Path:
    """Writes one pair's field as ``<directory>/disp_<fixed>_<moving>.npz`` (atomically).

    Args:
        displacement: ``(X, Y, Z, 3)`` field of the pair in voxels of the fixed grid
            (see :func:`to_l2r_displacement`).
        directory: folder of the submission (e.g. ``submission/task_03``); created if missing.
        fixed: the fixed image's file name, path or case id (see :func:`l2r_case_id`).
        moving: the moving image's file name, path or case id.
        half_resolution: see :func:`to_l2r_displacement`.

    Returns:
        The path written. The archive holds one float16 array under ``arr_0``
        (``np.savez_compressed``), read back by ``np.load(path)["arr_0"]``.

    Raises:
        ValueError, TypeError: as :func:`to_l2r_displacement` and :func:`l2r_case_id`.
    """
    array = to_l2r_displacement(displacement, half_resolution=half_resolution)
    path = Path(directory) / l2r_displacement_name(fixed, moving)
    with atomic_path(path, suffix=".npz") as temporary:
        with open(temporary, "wb") as handle:
            np.savez_compressed(handle, array)
    return path


def load_l2r_displacement(path, shape) -> np.ndarray:
    """Reads a Learn2Reg field and upsamples it as the challenge evaluation does.

    Each channel of a half-resolution field is upsampled with
    ``scipy.ndimage.zoom(disp[k].astype(float32), 2, order=2)`` (the 2021 evaluation code); a
    full-resolution field is only cast.

    Args:
        path: a ``disp_*.npz`` file holding one float16 array ``(3, X/2, Y/2, Z/2)`` or
            ``(3, X, Y, Z)`` (key ``arr_0``, or the archive's only array).
        shape: ``(X, Y, Z)``, the fixed image's shape.

    Returns:
        float32 array of shape ``(X, Y, Z, 3)``, channels last, in voxels, in vxmtf's
        convention (``moved[x] = moving[x + u(x)]``).

    Raises:
        FileNotFoundError: if there is no file at `path`.
        ValueError: if the archive does not hold exactly one array (or an ``arr_0``), the array
            is not float16, or its shape is neither ``(3, *shape)`` nor ``(3, *shape / 2)``.
    """
    shape = _check_shape(shape)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No Learn2Reg displacement file at {path}")
    with np.load(path, allow_pickle=False) as archive:
        keys = list(archive.keys())
        if "arr_0" in keys:
            key = "arr_0"
        elif len(keys) == 1:
            key = keys[0]
        else:
            raise ValueError(
                f"Expected {path} to hold one array (key 'arr_0'). Received: keys={keys}"
            )
        disp = archive[key]
    if disp.dtype != np.float16:
        raise ValueError(
            f"Expected a float16 displacement in {path} (Learn2Reg format). "
            f"Received: dtype={disp.dtype}"
        )
    half = tuple(size // 2 for size in shape)
    full_resolution = disp.shape == (3, *shape)
    half_resolution = all(size % 2 == 0 for size in shape) and disp.shape == (3, *half)
    if not (full_resolution or half_resolution):
        raise ValueError(
            f"Expected the field in {path} to have shape (3, *shape) = {(3, *shape)} or, at half "
            f"resolution, {(3, *half)}. Received: shape={disp.shape} for image shape={shape}"
        )
    channels = disp.astype(np.float32)
    if half_resolution and not full_resolution:
        # (3, X/2, Y/2, Z/2) -> (3, X, Y, Z), exactly as the evaluation upsamples.
        channels = np.stack([ndimage.zoom(c, 2, order=2) for c in channels])
    # (3, X, Y, Z) -> (X, Y, Z, 3): channels last.
    return np.ascontiguousarray(np.moveaxis(channels, 0, -1))


def _check_shape(shape):
    """Returns `shape` as a tuple of three positive ints."""
    try:
        values = tuple(int(s) for s in shape)
        ok = (
            len(values) == 3
            and all(v >= 1 for v in values)
            and all(float(s) == int(s) for s in shape)
        )
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            "Expected `shape` to be the fixed image's shape (X, Y, Z), three positive integers. "
            f"Received: shape={shape!r}"
        )
    return values
