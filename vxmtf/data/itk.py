"""Affine transforms as ITK transform files, readable by ANTs, SimpleITK and 3D Slicer.

Conventions, stated once:

- vxmtf's world frame is the NIfTI one, RAS+ (x to the Right, y Anterior, z Superior, mm); ITK's
  physical frame is LPS+ (x to the Left, y Posterior). A point changes frame by negating x and y:
  `p_lps = F p_ras` with `F = diag(-1, -1, 1)` (in 2D, `diag(-1, -1)`), and a map `M` between
  RAS points becomes `F M F` between LPS points (`ras_to_lps`, its own inverse).
- The matrix handed to `write_itk_affine` and returned by `read_itk_affine` is the world map
  from the fixed image to the moving image, `moving_world = matrix @ fixed_world` (RAS, mm),
  `vxmtf.affine.AffineResult.matrix`. That is the direction ITK stores: a registration's
  transform maps points of the fixed image's physical space to the moving image's, the one
  `antsApplyTransforms -t file.txt` and `sitk.Resample(moving, fixed, transform)` use to pull
  the moving image onto the fixed grid.
- An ITK `AffineTransform` keeps a 3x3 matrix `A`, a translation `t` (the 12 `Parameters`: `A`
  row-major, then `t`) and a centre `c` (the `FixedParameters`), and maps
  `x -> A (x - c) + c + t`. `write_itk_affine` writes `c` (default 0) and the `t` that gives
  the same map.

Text files (`.txt`, `.tfm`) use ITK's format `#Insight Transform File V1.0`; `.mat` files are
ITK's MATLAB (version 4) format, the one `ants.registration` writes.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import scipy.io

from vxmtf.atomic import atomic_write_text

#: Header line of ITK's text transform format.
ITK_HEADER = "#Insight Transform File V1.0"

_AFFINE_TYPE = re.compile(
    r"^(AffineTransform|MatrixOffsetTransformBase)_(double|float)_([23])_([23])$"
)


def ras_to_lps(matrix) -> np.ndarray:
    """`F M F` for a homogeneous `(ndim + 1, ndim + 1)` map `M` (the same function maps back)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    ndim = matrix.shape[0] - 1
    flip = np.ones(ndim + 1)
    flip[:2] = -1.0
    return flip[:, None] * matrix * flip[None, :]


lps_to_ras = ras_to_lps


def write_itk_affine(path, matrix, center=None) -> Path:
    """Write a world map (fixed to moving, RAS) as an ITK affine transform file.

    Args:
        path: a `.txt` / `.tfm` (ITK text) or `.mat` (ITK MATLAB) file name.
        matrix: `(4, 4)` (3D) or `(3, 3)` (2D) homogeneous map, `moving_world = M fixed_world`.
        center: optional ITK centre of the transform, in RAS mm (default the origin); it changes
            the stored parameters, not the map.

    Returns:
        The path written.

    Raises:
        ValueError: for a matrix that is not a finite 3x3/4x4 homogeneous map, or an unknown
            file ending.
    """
    matrix = _check_matrix(matrix, "matrix")
    ndim = matrix.shape[0] - 1
    lps = ras_to_lps(matrix)
    linear, offset = lps[:ndim, :ndim], lps[:ndim, ndim]
    if center is None:
        center_lps = np.zeros(ndim)
    else:
        center = np.asarray(center, dtype=np.float64)
        if center.shape != (ndim,):
            raise ValueError(
                f"`center` must have {ndim} coordinates for a {ndim}D transform. "
                f"Received: center={center.tolist()}"
            )
        center_lps = center * np.where(np.arange(ndim) < 2, -1.0, 1.0)
    # x -> A (x - c) + c + t equals x -> A x + offset when t = offset - c + A c.
    translation = offset - center_lps + linear @ center_lps
    parameters = np.concatenate([linear.reshape(-1), translation])
    name = f"AffineTransform_double_{ndim}_{ndim}"
    path = Path(path)
    kind = _kind(path)
    if kind == "mat":
        scipy.io.savemat(
            path,
            {name: parameters[:, None], "fixed": center_lps[:, None]},
            format="4",
        )
        return path
    text = (
        f"{ITK_HEADER}\n#Transform 0\nTransform: {name}\n"
        f"Parameters: {_numbers(parameters)}\nFixedParameters: {_numbers(center_lps)}\n"
    )
    atomic_write_text(path, text)
    return path


def read_itk_affine(path) -> np.ndarray:
    """Read an ITK affine transform file as a world map, fixed to moving, in RAS.

    Accepts `AffineTransform` and `MatrixOffsetTransformBase` (double or float, 2D or 3D),
    as text (`.txt`, `.tfm`; a file with one transform, or a composite holding one) or as
    ITK's `.mat` files (e.g. `ants.registration`'s `0GenericAffine.mat`).

    Returns:
        `(4, 4)` or `(3, 3)` homogeneous matrix `M` with `moving_world = M fixed_world` (RAS).

    Raises:
        ValueError: for a file that does not hold exactly one affine transform of these types.
    """
    path = Path(path)
    if _kind(path) == "mat":
        name, parameters, fixed = _read_mat(path)
    else:
        name, parameters, fixed = _read_text(path)
    match = _AFFINE_TYPE.match(name)
    if match is None or match.group(3) != match.group(4):
        raise ValueError(
            f"{path}: expected an AffineTransform or MatrixOffsetTransformBase (double or float, "
            f"2D or 3D). Received: transform type {name!r}"
        )
    ndim = int(match.group(3))
    if parameters.size != ndim * ndim + ndim or fixed.size != ndim:
        raise ValueError(
            f"{path}: a {ndim}D affine needs {ndim * ndim + ndim} Parameters and {ndim} "
            f"FixedParameters. Received: {parameters.size} and {fixed.size}"
        )
    linear = parameters[: ndim * ndim].reshape(ndim, ndim)
    translation = parameters[ndim * ndim :]
    lps = np.eye(ndim + 1)
    lps[:ndim, :ndim] = linear
    lps[:ndim, ndim] = translation + fixed - linear @ fixed
    return lps_to_ras(lps)


def itk_geometry(affine):
    """ITK image geometry (LPS) of a NIfTI voxel-to-world affine (RAS).

    ITK indexes a NumPy array `a[i, j, k]` (as nibabel returns it) with index `(i, j, k)` only
    after `sitk.GetImageFromArray(a.transpose())`, since SimpleITK reverses the axes.

    Args:
        affine: `(4, 4)` or `(3, 3)` voxel-to-world matrix without shear.

    Returns:
        `(origin, spacing, direction)`: tuples of floats, the direction flattened row-major, as
        `SetOrigin`, `SetSpacing` and `SetDirection` take them.

    Raises:
        ValueError: for a sheared or singular affine (ITK directions are orthonormal).
    """
    affine = _check_matrix(affine, "affine")
    ndim = affine.shape[0] - 1
    flip = np.ones(ndim + 1)
    flip[:2] = -1.0
    lps = flip[:, None] * affine  # voxel -> LPS: F @ A (the voxel side does not change)
    linear = lps[:ndim, :ndim]
    spacing = np.sqrt(np.sum(linear**2, axis=0))
    if np.any(spacing <= 0):
        raise ValueError(f"`affine` is singular. Received: affine=\n{affine}")
    direction = linear / spacing[None, :]
    if not np.allclose(direction.T @ direction, np.eye(ndim), atol=1e-5):
        raise ValueError(
            "`affine` has shear, which an ITK image geometry cannot represent (its direction "
            f"must be orthonormal). Received: affine=\n{affine}"
        )
    return (
        tuple(float(v) for v in lps[:ndim, ndim]),
        tuple(float(v) for v in spacing),
        tuple(float(v) for v in direction.reshape(-1)),
    )


def _check_matrix(matrix, name):
    array = np.asarray(matrix, dtype=np.float64)
    if array.shape not in ((3, 3), (4, 4)):
        raise ValueError(
            f"`{name}` must be a (4, 4) (3D) or (3, 3) (2D) homogeneous matrix. "
            f"Received: shape={array.shape}"
        )
    ndim = array.shape[0] - 1
    if not np.all(np.isfinite(array)) or not np.allclose(array[ndim], np.eye(ndim + 1)[ndim]):
        raise ValueError(
            f"`{name}` must be finite and end with the row {np.eye(ndim + 1)[ndim].tolist()}. "
            f"Received: {name}=\n{array}"
        )
    return array


def _kind(path):
    name = path.name.lower()
    if name.endswith(".mat"):
        return "mat"
    if name.endswith((".txt", ".tfm")):
        return "text"
    raise ValueError(
        f"An ITK transform file must end with .txt, .tfm (text) or .mat (MATLAB). Received: {path}"
    )


def _numbers(values):
    return " ".join(format(float(v), ".17g") for v in values)


def _read_text(path):
    text = path.read_text()
    if not text.startswith("#Insight Transform File"):
        raise ValueError(
            f"{path}: expected an ITK text transform file starting with {ITK_HEADER!r}. "
            f"Received: first line {text.splitlines()[0] if text else ''!r}"
        )
    transforms = []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "Transform":
            transforms.append({"name": value.strip()})
        elif key in ("Parameters", "FixedParameters") and transforms:
            transforms[-1][key] = np.array([float(v) for v in value.split()], dtype=np.float64)
    transforms = [t for t in transforms if not t["name"].startswith("CompositeTransform")]
    if len(transforms) != 1:
        raise ValueError(
            f"{path}: expected exactly one transform. Received: {[t['name'] for t in transforms]}"
        )
    transform = transforms[0]
    if "Parameters" not in transform or "FixedParameters" not in transform:
        raise ValueError(
            f"{path}: the transform lacks its Parameters or FixedParameters line. "
            f"Received: {sorted(transform)}"
        )
    return transform["name"], transform["Parameters"], transform["FixedParameters"]


def _read_mat(path):
    contents = scipy.io.loadmat(path)
    names = [k for k in contents if not k.startswith("__") and k != "fixed"]
    if len(names) != 1 or "fixed" not in contents:
        raise ValueError(
            f"{path}: expected an ITK MATLAB transform (one transform array and 'fixed'). "
            f"Received: variables {sorted(k for k in contents if not k.startswith('__'))}"
        )
    name = names[0]
    parameters = np.asarray(contents[name], dtype=np.float64).reshape(-1)
    fixed = np.asarray(contents["fixed"], dtype=np.float64).reshape(-1)
    return name, parameters, fixed
