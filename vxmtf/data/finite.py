"""`check_finite`: one check, and one message, for images that must hold finite intensities.

A single NaN or infinite voxel is enough to spoil a min-max normalisation (an infinite maximum
scales every other voxel to 0) or to spread into the moved image, so the readers of images for
training, registration and evaluation refuse them with this message, naming the file or the
argument and how many voxels are affected.
"""

from __future__ import annotations

import numpy as np

__all__ = ["check_finite"]


def check_finite(array, name: str) -> None:
    """Raises `ValueError` unless every voxel of `array` is finite.

    Integer and boolean arrays are always finite and are not scanned.

    Args:
        array: the image, any shape.
        name: how the message names it: a file path or an argument (e.g. "`moving`").

    Raises:
        ValueError: "<name>: N of M voxels are not finite (NaN or Inf); expected finite
            intensities".
    """
    array = np.asarray(array)
    if not (
        np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.complexfloating)
    ):
        return
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise ValueError(
            f"{name}: {bad} of {array.size} voxels are not finite (NaN or Inf); expected finite "
            "intensities"
        )
