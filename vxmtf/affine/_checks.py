"""Checks of `register_affine`'s and `apply_affine`'s inputs: each error names the argument
(or the file), what was expected and what was received."""

import math

import numpy as np


def check_names(names):
    if isinstance(names, str) or len(names) != 2:
        raise ValueError(f"`names` must be two strings (moving, fixed). Received: names={names!r}")
    return str(names[0]), str(names[1])


def check_volume(volume, name):
    array = np.asarray(volume)
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise TypeError(f"{name} must be a numeric array. Received: dtype={array.dtype}")
    if array.ndim not in (2, 3):
        raise ValueError(
            f"{name} must be a 2D or 3D volume (no batch or channel axes). "
            f"Received: shape={array.shape}"
        )
    if min(array.shape) < 2:
        raise ValueError(
            f"{name} must have at least 2 voxels along every axis. Received: shape={array.shape}"
        )
    array = array.astype(np.float32, copy=False)
    bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise ValueError(
            f"{name} must be finite everywhere. Received: {bad} NaN or infinite voxels of "
            f"{array.size}"
        )
    if float(array.max()) == float(array.min()):
        raise ValueError(
            f"{name} is constant, so nothing can be aligned. Received: every voxel = "
            f"{float(array.min())}"
        )
    return array


def check_affine(affine, ndim, name, allow_reduce=True):
    """A finite, invertible `(ndim + 1, ndim + 1)` float64 affine (a 2D one may come as 4x4)."""
    array = np.asarray(affine, dtype=np.float64)
    size = ndim + 1
    if ndim == 2 and allow_reduce and array.shape == (4, 4):
        coupled = np.abs(array[:2, 2]).max() > 0 or np.abs(array[2, :2]).max() > 0
        if coupled:
            raise ValueError(
                f"{name}: a 2D volume's (4, 4) affine must not mix the in-plane axes with the "
                f"third. Received: {name}=\n{array}"
            )
        array = array[np.ix_([0, 1, 3], [0, 1, 3])]
    if array.shape != (size, size):
        expected = "(3, 3) or (4, 4)" if ndim == 2 and allow_reduce else f"({size}, {size})"
        raise ValueError(
            f"{name} must be a {expected} homogeneous matrix for a {ndim}D volume. "
            f"Received: shape={array.shape}"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite. Received: {name}=\n{array}")
    if not np.allclose(array[ndim], np.eye(size)[ndim]):
        raise ValueError(
            f"{name} must end with the row {np.eye(size)[ndim].tolist()}. "
            f"Received: last row={array[ndim].tolist()}"
        )
    linear = array[:ndim, :ndim]
    norms = np.sqrt(np.sum(linear**2, axis=0))
    det = np.linalg.det(linear)
    if not np.all(norms > 0) or abs(det) <= 1e-6 * np.prod(norms):
        raise ValueError(
            f"{name} must be invertible. Received: determinant={det:.3g}, {name}=\n{array}"
        )
    return array


def check_positive(value, name):
    if not (isinstance(value, (int, float, np.number)) and math.isfinite(value) and value > 0):
        raise ValueError(f"`{name}` must be a positive number. Received: {name}={value!r}")


def check_schedule(levels, iterations):
    levels = tuple(levels)
    iterations = tuple(iterations)
    if not levels or len(levels) != len(iterations):
        raise ValueError(
            "`levels` and `iterations` must be non-empty and of the same length (one number of "
            f"iterations per level). Received: levels={levels}, iterations={iterations}"
        )
    for spacing in levels:
        check_positive(spacing, "levels entry")
    for n in iterations:
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"`iterations` must be positive integers. Received: {iterations}")
    return tuple(float(s) for s in levels), tuple(int(n) for n in iterations)
