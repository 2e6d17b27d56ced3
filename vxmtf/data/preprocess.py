"""Preprocessing of single volumes: intensity normalisation, downsampling, padding, label remapping.

All functions are pure NumPy on one volume whose leading axes are spatial, e.g. ``(X, Y, Z)``,
optionally followed by channel axes, except :func:`resize_displacement`, which undoes the
downsampling for a displacement field with `vxmtf.ops.rescale_field`. The pipeline applies, in
this order:

images:  float32 -> :func:`normalize_intensity` -> :func:`downsample_image` -> pad/crop
labels:  :func:`remap_labels` (values -> indices 0..K) -> :func:`downsample_labels` -> pad/crop

:func:`preprocess_image` refuses images with NaN or infinite voxels first
(:func:`vxmtf.data.finite.check_finite`).

Grids. Downsampling by an integer factor ``K`` keeps ``floor(n / K)`` voxels per axis (a trailing
incomplete block is dropped) with the voxel-centre convention: coarse voxel ``i`` covers fine
voxels ``K*i .. K*i + K - 1`` and its centre is the fine coordinate ``K*i + (K - 1) / 2``. Images
take the block mean (a box anti-aliasing filter sampled at the block centres). Label maps take,
by default, the most frequent label of each block (majority vote, ties to the smaller index),
which is centred like the image block mean; ``"nearest"`` instead takes the fine voxel
``K*i + (K - 1) // 2``, off-centre by half a fine voxel when ``K`` is even.

Padding to a multiple of ``2**levels`` (so that a U-Net with ``levels`` poolings sees whole
voxels) is centred: ``before = total // 2`` and ``after = total - before`` per axis; cropping
(``resize="crop"``) removes voxels the same way. The returned :class:`Padding` undoes it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from vxmtf.data.finite import check_finite
from vxmtf.ops import rescale_field

NORMALIZATIONS = ("minmax", "percentile", None)
RESIZES = ("pad", "crop")
LABEL_DOWNSAMPLING = ("majority", "nearest")


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """How volumes are prepared for the network.

    Attributes:
        normalize: ``"minmax"`` (``(x - min) / (max - min)``), ``"percentile"`` (the same with
            the ``percentiles`` of the volume, then clipped to [0, 1]) or ``None`` (float32 cast
            only).
        percentiles: lower and upper percentiles for ``"percentile"``.
        downsample: integer factor ``K >= 1`` applied to every spatial axis.
        multiple: the output spatial sizes are multiples of this (``2**levels`` of the U-Net).
        resize: ``"pad"`` (up to the next multiple, with zeros) or ``"crop"`` (down to it).
        label_downsample: ``"majority"`` or ``"nearest"`` (see the module docstring).
    """

    normalize: str | None = "minmax"
    percentiles: tuple[float, float] = (1.0, 99.0)
    downsample: int = 1
    multiple: int = 16
    resize: str = "pad"
    label_downsample: str = "majority"

    def __post_init__(self):
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(
                f"Expected normalize in {NORMALIZATIONS}. Received: normalize={self.normalize!r}"
            )
        low, high = (float(p) for p in self.percentiles)
        if not 0.0 <= low < high <= 100.0:
            raise ValueError(
                f"Expected percentiles (low, high) with 0 <= low < high <= 100. "
                f"Received: percentiles={self.percentiles}"
            )
        object.__setattr__(self, "percentiles", (low, high))
        for name in ("downsample", "multiple"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"Expected {name} to be an integer >= 1. Received: {name}={value}")
            object.__setattr__(self, name, int(value))
        if self.resize not in RESIZES:
            raise ValueError(f"Expected resize in {RESIZES}. Received: resize={self.resize!r}")
        if self.label_downsample not in LABEL_DOWNSAMPLING:
            raise ValueError(
                f"Expected label_downsample in {LABEL_DOWNSAMPLING}. "
                f"Received: label_downsample={self.label_downsample!r}"
            )

    def output_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """Spatial shape after downsampling and padding/cropping a volume of ``shape``."""
        coarse = [int(s) // self.downsample for s in shape]
        if min(coarse) < 1:
            raise ValueError(
                f"Volume too small for downsample={self.downsample}. Received: shape={tuple(shape)}"
            )
        m = self.multiple
        if self.resize == "pad":
            out = [math.ceil(c / m) * m for c in coarse]
        else:
            out = [(c // m) * m for c in coarse]
            if min(out) < 1:
                raise ValueError(
                    f"Cannot crop shape {tuple(coarse)} to a multiple of {m}. "
                    f"Received: shape={tuple(shape)}"
                )
        return tuple(out)


@dataclasses.dataclass(frozen=True)
class Padding:
    """A centred pad/crop of the leading spatial axes, and its inverse.

    Attributes:
        original_shape: spatial shape before.
        before, after: voxels added before/after each spatial axis (negative: removed).
    """

    original_shape: tuple[int, ...]
    before: tuple[int, ...]
    after: tuple[int, ...]

    @property
    def padded_shape(self) -> tuple[int, ...]:
        return tuple(
            n + b + a for n, b, a in zip(self.original_shape, self.before, self.after, strict=True)
        )

    def apply(self, array: np.ndarray, axis: int = 0, value=0) -> np.ndarray:
        """Pads/crops ``array`` whose spatial axes start at ``axis`` (more axes may follow)."""
        return _pad_crop(array, self.original_shape, self.before, self.after, axis, value)

    def undo(self, array: np.ndarray, axis: int = 0, value=0) -> np.ndarray:
        """Brings an array on the padded grid back to the original grid (inverse of apply)."""
        before = tuple(-b for b in self.before)
        after = tuple(-a for a in self.after)
        return _pad_crop(array, self.padded_shape, before, after, axis, value)


def _pad_crop(array, expected, before, after, axis, value):
    array = np.asarray(array)
    ndim = len(expected)
    spatial = tuple(array.shape[axis : axis + ndim])
    if spatial != tuple(expected):
        raise ValueError(
            f"Expected spatial shape {tuple(expected)} at axes {axis}..{axis + ndim - 1}. "
            f"Received: shape={array.shape}"
        )
    slices = [slice(None)] * array.ndim
    widths = [(0, 0)] * array.ndim
    for d, (n, b, a) in enumerate(zip(expected, before, after, strict=True)):
        slices[axis + d] = slice(max(-b, 0), n - max(-a, 0))
        widths[axis + d] = (max(b, 0), max(a, 0))
    array = array[tuple(slices)]
    if any(w != (0, 0) for w in widths):
        array = np.pad(array, widths, mode="constant", constant_values=value)
    return array


def pad_to_multiple(
    array: np.ndarray,
    multiple: int,
    ndim: int | None = None,
    resize: str = "pad",
    value=0,
) -> tuple[np.ndarray, Padding]:
    """Centred pad (or crop) of the first ``ndim`` axes to multiples of ``multiple``.

    Args:
        array: ``(*spatial, *channels)``.
        multiple: target divisor of each spatial size, e.g. ``2**levels``.
        ndim: number of leading spatial axes (default: all axes).
        resize: ``"pad"`` up to the next multiple or ``"crop"`` down to the previous one.
        value: the padding value.

    Returns:
        ``(array, padding)`` where ``padding.undo`` restores the original grid.
    """
    if resize not in RESIZES:
        raise ValueError(f"Expected resize in {RESIZES}. Received: resize={resize!r}")
    array = np.asarray(array)
    ndim = array.ndim if ndim is None else int(ndim)
    shape = tuple(array.shape[:ndim])
    config = PreprocessConfig(normalize=None, multiple=multiple, resize=resize)
    target = config.output_shape(shape)
    # Centred: before = total // 2 when padding, -(excess // 2) when cropping.
    before = tuple((t - n) // 2 if t >= n else -((n - t) // 2) for n, t in zip(shape, target))  # noqa: B905
    after = tuple(t - n - b for n, t, b in zip(shape, target, before))  # noqa: B905
    padding = Padding(shape, before, after)
    return padding.apply(array, value=value), padding


def normalize_intensity(
    array: np.ndarray, method: str | None = "minmax", percentiles=(1.0, 99.0)
) -> np.ndarray:
    """Rescales intensities to [0, 1] as float32 (NaNs become 0 first, infinities +-float32
    max, as the exported graph's `vxmtf.ops.normalize` does; `preprocess_image` refuses both).

    ``"minmax"``: ``(x - min x) / (max x - min x)``. ``"percentile"``: with ``lo, hi`` the
    given percentiles of ``x``, ``clip((x - lo) / (hi - lo), 0, 1)``, robust to outliers. A
    constant volume maps to zeros. ``None`` only casts.
    """
    if method not in NORMALIZATIONS:
        raise ValueError(f"Expected method in {NORMALIZATIONS}. Received: method={method!r}")
    x = np.nan_to_num(np.asarray(array, dtype=np.float32), nan=0.0)
    if method is None or x.size == 0:
        return x
    if method == "minmax":
        low, high = float(x.min()), float(x.max())
    else:
        low, high = (float(v) for v in np.percentile(x, percentiles))
    if high <= low:
        return np.zeros_like(x)
    out = (x - np.float32(low)) * np.float32(1.0 / (high - low))
    return np.clip(out, 0.0, 1.0, out=out)


def _blocks(array: np.ndarray, factor: int, ndim: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """``(*spatial, *rest)`` -> ``(*coarse, *rest, factor**ndim)`` views of each block."""
    coarse = tuple(s // factor for s in array.shape[:ndim])
    if min(coarse, default=1) < 1:
        raise ValueError(
            f"Volume too small to downsample by {factor}. Received: shape={array.shape}"
        )
    rest = array.shape[ndim:]
    cropped = array[tuple(slice(0, c * factor) for c in coarse)]
    # (c0, K, c1, K, ..., *rest): each spatial axis split into (coarse index, offset in block).
    split = cropped.reshape(sum(((c, factor) for c in coarse), ()) + rest)
    order = [2 * d for d in range(ndim)] + [2 * ndim + r for r in range(len(rest))]
    order += [2 * d + 1 for d in range(ndim)]
    # (c0, c1, ..., *rest, K, K, ...) -> (c0, c1, ..., *rest, K**ndim)
    blocks = split.transpose(order).reshape(coarse + rest + (factor**ndim,))
    return blocks, coarse


def downsample_image(array: np.ndarray, factor: int, ndim: int | None = None) -> np.ndarray:
    """Block mean over ``factor**ndim`` voxels (float32), keeping ``floor(n / factor)`` per axis.

    ``out[i] = mean(x[factor*i : factor*i + factor])`` on each of the first ``ndim`` axes.
    """
    array = np.asarray(array, dtype=np.float32)
    if factor == 1:
        return array
    ndim = array.ndim if ndim is None else int(ndim)
    blocks, _ = _blocks(array, factor, ndim)
    return blocks.mean(axis=-1, dtype=np.float64).astype(np.float32)


def downsample_labels(
    array: np.ndarray, factor: int, method: str = "majority", ndim: int | None = None
) -> np.ndarray:
    """Downsamples a label map by ``factor``, keeping ``floor(n / factor)`` voxels per axis.

    ``"majority"``: the most frequent value of each block (ties: the smallest value).
    ``"nearest"``: the value at fine voxel ``factor*i + (factor - 1) // 2``.
    """
    if method not in LABEL_DOWNSAMPLING:
        raise ValueError(f"Expected method in {LABEL_DOWNSAMPLING}. Received: method={method!r}")
    array = np.asarray(array)
    if factor == 1:
        return array
    ndim = array.ndim if ndim is None else int(ndim)
    if method == "nearest":
        coarse = [s // factor for s in array.shape[:ndim]]
        offset = (factor - 1) // 2
        return array[tuple(slice(offset, offset + c * factor, factor) for c in coarse)]
    values, codes = _codes(array)
    blocks, coarse = _blocks(codes, factor, ndim)
    rows = blocks.reshape(-1, blocks.shape[-1])  # (blocks, factor**ndim) value codes
    winners = _mode_by_counting(rows, len(values))
    return values[winners].reshape(blocks.shape[:-1])


def _mode_by_counting(rows: np.ndarray, num_values: int) -> np.ndarray:
    """Row-wise mode of codes in ``[0, num_values)`` (ties: smaller code) with bincount."""
    winners = np.empty(len(rows), dtype=np.intp)
    chunk = max(1, 2**22 // num_values)
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        # counts[b, v]: how often code v occurs in block b.
        keys = (np.arange(len(part))[:, None] * num_values + part).ravel()
        counts = np.bincount(keys, minlength=len(part) * num_values)
        winners[start : start + len(part)] = counts.reshape(len(part), num_values).argmax(axis=1)
    return winners


def _codes(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(values, codes)`` with ``values[codes] == array``, values sorted and distinct."""
    if np.issubdtype(array.dtype, np.integer) and array.size:
        low, high = int(array.min()), int(array.max())
        if low >= 0 and high < 2**20:
            # Small non-negative integers: a lookup table is much faster than a sort.
            values = np.flatnonzero(np.bincount(array.ravel(), minlength=high + 1))
            table = np.zeros(high + 1, dtype=np.int32)
            table[values] = np.arange(len(values))
            return values.astype(array.dtype), table[array]
    values, inverse = np.unique(array, return_inverse=True)
    return values, inverse.reshape(array.shape)


def remap_labels(
    array: np.ndarray, label_values: Sequence[int], unknown: str = "background"
) -> np.ndarray:
    """Maps label values to contiguous indices: ``label_values[k] -> k`` (int32).

    ``label_values`` is sorted and must hold 0 (background, index 0) so that indices run
    ``0..K``. Values not listed map to 0 (``unknown="background"``) or raise
    (``unknown="error"``). Inverse: :func:`unmap_labels`.
    """
    values = _check_label_values(label_values)
    if unknown not in ("background", "error"):
        raise ValueError(
            f"Expected unknown to be 'background' or 'error'. Received: unknown={unknown!r}"
        )
    array = np.asarray(array)
    present, codes = _codes(array)
    # Map each distinct value present, then broadcast through the codes.
    index = np.clip(np.searchsorted(values, present), 0, len(values) - 1)
    known_present = values[index] == present
    known = known_present[codes]
    if unknown == "error" and not known.all():
        strays = np.unique(array[~known])[:10]
        raise ValueError(
            f"Label map holds values not in label_values {values.tolist()[:10]}... "
            f"Received: unknown_values={strays.tolist()}"
        )
    return np.where(known_present, index, 0).astype(np.int32)[codes]


def unmap_labels(indices: np.ndarray, label_values: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`remap_labels`: ``k -> label_values[k]``."""
    values = _check_label_values(label_values)
    indices = np.asarray(indices)
    if indices.size and (indices.min() < 0 or indices.max() >= len(values)):
        raise ValueError(
            f"Expected indices in [0, {len(values) - 1}]. "
            f"Received: min={indices.min()}, max={indices.max()}"
        )
    return values[indices]


def _check_label_values(label_values) -> np.ndarray:
    values = np.asarray(label_values)
    if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
        raise TypeError(f"Expected a 1D list of integer label values. Received: {label_values!r}")
    if values.size == 0 or values[0] != 0 or np.any(np.diff(values) <= 0):
        raise ValueError(
            f"Expected sorted, distinct label values starting with 0 (background). "
            f"Received: label_values={values.tolist()[:10]}"
        )
    return values


def preprocess_image(
    array: np.ndarray, config: PreprocessConfig, name: str = "image"
) -> tuple[np.ndarray, Padding]:
    """Normalise, downsample and pad/crop one image ``(*spatial)`` -> float32.

    The image must be finite: one infinite voxel would set the min-max range and scale every
    other voxel to 0, and NaNs would spread into the moved image (`name` says which image the
    error is about, e.g. "`moving`").

    Raises:
        ValueError: the image holds NaN or infinite voxels.
    """
    check_finite(array, name)
    array = normalize_intensity(array, config.normalize, config.percentiles)
    array = downsample_image(array, config.downsample)
    return _to_multiple(array, config)


def preprocess_labels(
    array: np.ndarray, config: PreprocessConfig, label_values: Sequence[int] | None = None
) -> tuple[np.ndarray, Padding]:
    """Remap (when ``label_values`` is given), downsample and pad/crop one label map -> int32."""
    if label_values is not None:
        array = remap_labels(array, label_values)
    else:
        array = np.asarray(array).astype(np.int32)
    array = downsample_labels(array, config.downsample, config.label_downsample)
    return _to_multiple(array, config)


def _to_multiple(array: np.ndarray, config: PreprocessConfig) -> tuple[np.ndarray, Padding]:
    return pad_to_multiple(array, config.multiple, resize=config.resize)


def resize_displacement(displacement, shape, factor):
    """Brings a displacement from a grid downsampled by `factor` back to the full grid: the
    inverse, for fields, of the downsampling of `preprocess_image`.

    With `C_k = shape_k // factor`, the field `(*C, ndim)` is resized to `(*(factor * C), ndim)`
    by `vxmtf.ops.rescale_field` (fine voxel `y` reads coarse position `(y + 0.5) / K - 0.5`,
    N-linearly, border clamped; vectors times `K`), then the `shape_k - K C_k` voxels past the
    coarse grid repeat the last row (edge padding), matching the downsampling that dropped them.

    Args:
        displacement: `(*C, ndim)` in coarse voxels.
        shape: the full spatial shape `S`.
        factor: the integer downsampling factor `K >= 1`.

    Returns:
        `(*S, ndim)` float32 in full-grid voxels.
    """
    displacement = np.asarray(displacement, np.float32)
    shape = tuple(int(s) for s in shape)
    coarse = tuple(s // factor for s in shape)
    if displacement.shape != (*coarse, len(shape)):
        raise ValueError(
            f"Expected a displacement of shape {(*coarse, len(shape))} (the grid {shape} "
            f"downsampled by {factor}). Received: displacement.shape={displacement.shape}"
        )
    if factor == 1:
        return displacement
    covered = tuple(factor * c for c in coarse)
    fine = rescale_field(displacement[None], out_shape=covered).numpy()[0]
    widths = [(0, s - c) for s, c in zip(shape, covered, strict=True)] + [(0, 0)]
    return np.pad(fine, widths, mode="edge")
