"""Voxel grids in the world: mapping one image's grid onto another's, and ITK's conventions.

A NIfTI affine `A` maps voxel indices `x` (homogeneous, `(x, 1)`) to world coordinates in mm in
NIfTI's RAS frame. Two volumes share a grid when their shapes agree and their affines agree
within `vxmtf.data.io.AFFINE_TOLERANCE` (or a file carries no affine: then voxel `x` is voxel
`x`); otherwise fixed voxel `x` lies at moving voxel `y = A_moving^-1 A_fixed x`
(`grid_mapping`), and `resample_to_grid` reads an array there.

ITK and ANTs place a voxel at the physical point `p = diag(-1, -1, 1) (A x)` (their frame is
LPS) and describe a transform by where each point `p` of the fixed image lands in the moving
one: a displacement field holds `d(p)` in mm in that LPS frame. `displacement_to_world` turns a
displacement in voxels into that field (`d = diag(-1, -1, 1) M u`, `M` the 3x3 block of `A`) and
`save_itk_displacement` writes it as ITK reads it: a 5-D NIfTI `(X, Y, Z, 1, 3)` with intent
code 1007 (NIFTI_INTENT_VECTOR), whose vectors ITK takes as stored (it converts RAS vectors only
for intent 1006; InsightSoftwareConsortium/ITK#3884), as in the `Warp.nii.gz` files ANTs writes.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from vxmtf.data.io import Volume, file_kind, same_affine, save_volume

__all__ = [
    "INTENT_VECTOR",
    "RAS_TO_LPS",
    "apply_homogeneous",
    "compose_displacement",
    "displacement_to_world",
    "identity_points",
    "sample_through",
    "grid_mapping",
    "resample_to_grid",
    "save_itk_displacement",
]

#: NIfTI's world frame (RAS) to ITK's physical frame (LPS): x and y change sign.
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
#: NIFTI_INTENT_VECTOR, the intent code of ITK/ANTs displacement field files.
INTENT_VECTOR = 1007


def grid_mapping(moving: Volume, fixed: Volume) -> np.ndarray | None:
    """The `(4, 4)` map from fixed voxel to moving voxel coordinates, `A_moving^-1 A_fixed`, or
    None when the two volumes share a grid (see the module docstring): the same shape, and the
    same affine or a file without one (`.npy`, `.npz` without `affine`).

    Raises:
        ValueError: the grids differ and cannot be mapped: a file without an affine, a 2D
            pair, or a singular affine.
    """
    same_shape = moving.shape == fixed.shape
    both = moving.has_affine and fixed.has_affine
    if same_shape and (not both or same_affine(moving.affine, fixed.affine)):
        return None
    received = (
        f"Received: moving={moving.path} (shape {moving.shape}), "
        f"fixed={fixed.path} (shape {fixed.shape})"
    )
    if not both:
        missing = [str(v.path) for v in (moving, fixed) if not v.has_affine]
        raise ValueError(
            "Cannot map the moving image onto the fixed grid: images of different shapes are "
            "resampled through their affines, but "
            f"{' and '.join(missing)} carries none (.npy, or .npz without 'affine'). Expected "
            f"the same shape, or NIfTI/.npz files with affines. {received}"
        )
    if len(fixed.shape) != 3:
        raise ValueError(
            "Cannot map the moving image onto the fixed grid: 2D pairs must share one grid "
            f"(the same shape and affine). {received}"
        )
    try:
        return np.linalg.inv(moving.affine) @ fixed.affine
    except np.linalg.LinAlgError as error:
        raise ValueError(
            f"Cannot map the moving image onto the fixed grid: expected invertible affines. "
            f"Received: moving affine of {moving.path}=\n{moving.affine}"
        ) from error


def resample_to_grid(array, mapping, shape, order: int, fill: float = 0.0) -> np.ndarray:
    """`out[x] = array[mapping @ (x, 1)]` on a grid of `shape`.

    Args:
        array: `(*in_spatial)` volume.
        mapping: `(4, 4)` map from output voxel to input voxel coordinates.
        shape: output spatial shape.
        order: 1 for linear interpolation (images), 0 for nearest (label maps).
        fill: the value outside the input, which also enters interpolation at its edge.

    Returns:
        `(*shape)` of the input's dtype.
    """
    mapping = np.asarray(mapping, np.float64)
    return ndimage.affine_transform(
        np.asarray(array),
        mapping[:3, :3],
        offset=mapping[:3, 3],
        output_shape=tuple(shape),
        order=order,
        mode="grid-constant",
        cval=fill,
    )


def displacement_to_world(displacement, affine, lps: bool = True) -> np.ndarray:
    """A displacement in voxels as a displacement in mm in the world frame.

    `d[x] = F M u[x]`, with `M` the 3x3 block of `affine` (voxel to world, RAS) and `F` the
    identity, or `diag(-1, -1, 1)` for ITK's LPS frame when `lps`.

    Args:
        displacement: `(X, Y, Z, 3)` in voxels, component `k` along voxel axis `k`.
        affine: `(4, 4)` voxel-to-world matrix of the grid the displacement lives on.
        lps: return ITK/ANTs (LPS) components rather than NIfTI (RAS) ones.

    Returns:
        `(X, Y, Z, 3)` float32 in mm.
    """
    displacement = np.asarray(displacement, np.float64)
    if displacement.ndim != 4 or displacement.shape[-1] != 3:
        raise ValueError(
            "Expected a 3D displacement of shape (X, Y, Z, 3). "
            f"Received: displacement.shape={displacement.shape}"
        )
    matrix = np.asarray(affine, np.float64)[:3, :3]
    if lps:
        matrix = RAS_TO_LPS @ matrix
    return np.einsum("kl,...l->...k", matrix, displacement).astype(np.float32)


def save_itk_displacement(path, displacement_mm, affine, header=None) -> Path:
    """Writes an ITK/ANTs displacement field: NIfTI `(X, Y, Z, 1, 3)` float32, intent 1007.

    Args:
        path: a `.nii` or `.nii.gz` destination.
        displacement_mm: `(X, Y, Z, 3)` LPS vectors in mm (`displacement_to_world`).
        affine: the grid's `(4, 4)` affine; `header`: a NIfTI header to keep (e.g. the fixed
            image's), or None.
    """
    if file_kind(path) != "nifti":
        raise ValueError(
            f"An ITK displacement field is a NIfTI file: expected a name ending in .nii or "
            f".nii.gz. Received: path={path}"
        )
    header = nib.Nifti1Header() if header is None else header.copy()
    header.set_intent(INTENT_VECTOR)
    field = np.asarray(displacement_mm, np.float32)[..., None, :]  # (X, Y, Z, 1, 3)
    return save_volume(path, field, affine, header)


def apply_homogeneous(matrix, points) -> np.ndarray:
    """`matrix @ (p, 1)` for points `(..., ndim)` and an `(ndim + 1, ndim + 1)` matrix, in the
    points' floating dtype (float64 for other inputs)."""
    points = np.asarray(points)
    dtype = points.dtype if points.dtype in (np.float32, np.float64) else np.float64
    matrix = np.asarray(matrix, dtype)
    return points.astype(dtype, copy=False) @ matrix[:-1, :-1].T + matrix[:-1, -1]


def identity_points(shape, dtype=np.float64) -> np.ndarray:
    """Voxel coordinates of a grid: `(*shape, ndim)`, component k the index along k."""
    axes = [np.arange(n, dtype=dtype) for n in shape]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)


def compose_displacement(displacement, matrix) -> np.ndarray:
    """The displacement of `x -> P (x + u(x))` on `u`'s grid: `w(x) = P (x + u(x)) - x`.

    With `P = A_fixed^-1 T A_fixed` (`T` an affine world map, fixed to moving) and `u` the
    deformable field on the fixed grid, `w` is the composed transform (first `u`, then the
    affine) in fixed-grid voxels: the moving image placed in the world by its own affine is read
    at fixed voxel `x + w(x)`.

    Args:
        displacement: `(*spatial, ndim)` in voxels.
        matrix: `(ndim + 1, ndim + 1)` map of voxel coordinates of the same grid.

    Returns:
        `(*spatial, ndim)` float32.
    """
    # float32: voxel coordinates of a few hundred are exact, and the sums err by ~1e-5 voxel.
    displacement = np.asarray(displacement, np.float32)
    points = identity_points(displacement.shape[:-1], np.float32)
    return apply_homogeneous(matrix, points + displacement) - points


def sample_through(array, displacement, mapping, order: int, fill=None) -> np.ndarray:
    """`out[x] = array[M (x + d(x))]`: an array on its own grid read at points of another.

    Args:
        array: `(*in_spatial)` volume (e.g. the moving image on its own grid).
        displacement: `(*out_spatial, ndim)` in voxels of the output grid.
        mapping: `(ndim + 1, ndim + 1)` map from output voxel to `array` voxel coordinates
            (`A_moving^-1 A_fixed`).
        order: 1 for N-linear interpolation (images), 0 for nearest (label maps).
        fill: None clamps to the border (as `vxmtf.ops.warp`), else the value outside.

    Returns:
        `(*out_spatial)`, float32 for `order` 1, the array's dtype for `order` 0.
    """
    array = np.asarray(array)
    points = identity_points(np.shape(displacement)[:-1]) + np.asarray(displacement, np.float64)
    coords = np.moveaxis(apply_homogeneous(mapping, points), -1, 0)  # (ndim, *out_spatial)
    source = array.astype(np.float32) if order == 1 else array
    mode = "nearest" if fill is None else "grid-constant"
    out = ndimage.map_coordinates(
        source, coords, order=order, mode=mode, cval=0.0 if fill is None else fill
    )
    return out.astype(np.float32) if order == 1 else out.astype(array.dtype)
