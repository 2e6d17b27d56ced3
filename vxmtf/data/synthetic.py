"""Synthetic registration pairs: random smooth anatomy, deformed twice, rendered as two images.

The embedded default data set when no files are given (nothing is downloaded). For each pair:

1. Anatomy. ``num_labels`` structures fill a smooth random "head": the label of a voxel inside
   the mask is ``1 + argmax_k n_k(x)`` over ``num_labels`` independent smooth Gaussian random
   fields ``n_k``; outside it is 0. The mask is an ellipsoid centred in the volume, radii 35-42%
   of each size, its boundary perturbed by another smooth field.
2. Template image. The labels get the intensities ``0.15, ..., 1`` (evenly spaced, one each,
   in random order; background 0), so every structure differs from the others in contrast,
   lightly blurred (Gaussian, sigma 0.5 voxel) to mimic partial volumes.
3. Deformations. Images are the template warped by smooth random displacements ``u`` (each
   component a smooth field): ``I(x) = T(x + u(x))``, images with linear and label maps with
   nearest interpolation (:func:`scipy.ndimage.map_coordinates`, edges clamped). A scan-to-scan
   pair warps the template twice, independently, each component with standard deviation
   ``deformation / sqrt(2)``; a scan-to-atlas pair warps it once (the moving image) with
   ``deformation``, the fixed image being the undeformed atlas. Either way the displacement
   between moving and fixed has about ``deformation`` voxels of standard deviation.
4. Contrast. Each warped image gets its own gamma (``I**g``, ``log g ~ U(-0.2, 0.2)``), a smooth
   multiplicative bias field ``exp(0.2 n(x))``, Gaussian noise (std ``noise``) and is min-max
   normalised to [0, 1].

Smooth random fields are sums of separable Gaussian bumps on a coarse lattice (spacing
``scale`` voxels) with standard normal weights: ``n(x) = sum_j w_j prod_d exp(-(x_d - g_jd)**2
/ (2 (0.6 scale)**2))``, rescaled to unit standard deviation. Being separable they cost a few
small matrix products, not a large convolution.

Every output is a deterministic function of ``(seed, split, index)``. Labels are contiguous
indices ``0..num_labels`` (int32), so Dice can be measured on the pairs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

# Default displacement between moving and fixed, relative to the smallest size: standard
# deviation of each component, and correlation length (see `SyntheticPairs`).
DEFORMATION_FRACTION = 0.044
SMOOTHNESS_FRACTION = 0.5

_SPLITS = {"train": 0, "val": 1}
_ATLAS_STREAM = 2


def smooth_noise(
    rng: np.random.Generator, shape: Sequence[int], channels: int, scale: float
) -> np.ndarray:
    """Smooth Gaussian random fields with unit standard deviation, ``(channels, *shape)``.

    ``scale`` is the lattice spacing of the Gaussian bumps (roughly the correlation length).
    """
    scale = float(max(scale, 1.0))
    width = 0.6 * scale
    bases = []
    for n in shape:
        count = int(math.ceil((n - 1) / scale)) + 3
        # Lattice from -scale to past n - 1, so the field is stationary inside the volume.
        centres = (np.arange(count) - 1.0) * scale
        positions = np.arange(n, dtype=np.float64)[:, None]
        basis = np.exp(-0.5 * ((positions - centres[None, :]) / width) ** 2)
        bases.append(basis.astype(np.float32))
    field = rng.standard_normal((channels, *(b.shape[1] for b in bases)), dtype=np.float32)
    for basis in bases:
        # Contract the next lattice axis (always axis 1) with basis (n, count); the new fine
        # axis goes last, so after all axes the layout is (channels, n_0, ..., n_{d-1}).
        field = np.tensordot(field, basis, axes=([1], [1]))
    std = field.std(dtype=np.float64)
    return field * np.float32(1.0 / std) if std > 0 else field


def _balancing_offsets(fields: np.ndarray, mask: np.ndarray, steps: int = 6) -> np.ndarray:
    """Per-channel offsets so that ``argmax`` gives every channel about the same volume.

    Plain ``argmax`` over a few independent fields leaves some structures tiny or absent;
    each step raises the offset of under-represented channels by ``0.5 log(target / share)``,
    measured on every other voxel of the mask.
    """
    channels = fields.shape[0]
    sample = fields[(slice(None),) + (slice(None, None, 2),) * mask.ndim]
    inside = mask[(slice(None, None, 2),) * mask.ndim]
    values = sample[:, inside]  # (channels, voxels inside the mask)
    offsets = np.zeros(channels, dtype=np.float32)
    if values.shape[1] == 0:
        return offsets
    for _ in range(steps):
        winners = np.argmax(values + offsets[:, None], axis=0)
        share = np.bincount(winners, minlength=channels) / values.shape[1]
        offsets += 0.5 * np.log((1.0 / channels) / np.maximum(share, 0.2 / channels))
    return offsets


def _warp(array: np.ndarray, displacement: np.ndarray, order: int) -> np.ndarray:
    """``out(x) = array(x + u(x))`` with ``displacement`` ``(ndim, *shape)`` in voxels."""
    grid = np.indices(array.shape, dtype=np.float32)
    coords = grid + displacement
    return ndimage.map_coordinates(array, coords, order=order, mode="nearest")


class SyntheticPairs:
    """Seeded generator of synthetic 2D/3D registration pairs with label maps.

    Args:
        shape: spatial shape, 2 or 3 sizes.
        num_labels: number of structures (labels ``1..num_labels``; 0 is background).
        seed: global seed; outputs are deterministic per ``(seed, split, index)``.
        size: number of distinct training pairs (indices ``0..size-1``), or ``None`` for an
            unbounded stream (a fresh pair for every index).
        num_val: number of validation pairs (``split="val"``).
        deformation: standard deviation of each component of the displacement between moving
            and fixed, in voxels; default ``0.044 * min(shape)`` (1.4 voxels at 32; each of a
            scan-to-scan pair's two warps: ``0.031 * min(shape)``).
        smoothness: correlation length of the displacements, in voxels; default
            ``min(shape) / 2``.

    The default deformation is smooth and moderate: at 32x32x32 the moving and fixed label maps
    of a scan-to-atlas pair overlap with a Dice of about 0.46 before registration, and the
    default network learns to undo most of it in the first run's 3,000 steps (about 0.75 after;
    0.95 with the true inverse). A rougher deformation of about the same overlap (smoothness
    ``min(shape) / 4``, 1.8 voxels, the default before) is harder to learn in that time: 0.686
    after the same training (benchmarks/RESULTS.md, "The first run").
        noise: standard deviation of the additive image noise.

    Example:
        >>> pairs = SyntheticPairs((32, 32, 32), num_labels=8, seed=0)
        >>> sorted(pairs.pair(0))
        ['fixed', 'fixed_labels', 'moving', 'moving_labels']
    """

    def __init__(
        self,
        shape: Sequence[int],
        num_labels: int = 12,
        seed: int = 0,
        size: int | None = None,
        num_val: int = 8,
        deformation: float | None = None,
        smoothness: float | None = None,
        noise: float = 0.03,
    ):
        shape = tuple(int(s) for s in shape)
        if len(shape) not in (2, 3) or min(shape) < 4:
            raise ValueError(f"Expected a 2D or 3D shape with sizes >= 4. Received: shape={shape}")
        if int(num_labels) < 1:
            raise ValueError(f"Expected num_labels >= 1. Received: num_labels={num_labels}")
        if size is not None and int(size) < 1:
            raise ValueError(f"Expected size >= 1 or None. Received: size={size}")
        if int(num_val) < 0:
            raise ValueError(f"Expected num_val >= 0. Received: num_val={num_val}")
        self.shape = shape
        self.num_labels = int(num_labels)
        self.seed = int(seed)
        self.size = None if size is None else int(size)
        self.num_val = int(num_val)
        size = min(shape)
        self.deformation = (
            DEFORMATION_FRACTION * size if deformation is None else float(deformation)
        )
        self.smoothness = SMOOTHNESS_FRACTION * size if smoothness is None else float(smoothness)
        self.noise = float(noise)
        if self.deformation < 0 or self.smoothness <= 0 or self.noise < 0:
            raise ValueError(
                f"Expected deformation >= 0, smoothness > 0 and noise >= 0. Received: "
                f"deformation={deformation}, smoothness={smoothness}, noise={noise}"
            )

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def label_values(self) -> list[int]:
        return list(range(self.num_labels + 1))

    def _rng(self, *stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *stream])

    def label_map(self, rng: np.random.Generator) -> np.ndarray:
        """A random anatomy: int32 labels ``0..num_labels`` of shape ``self.shape``."""
        coords = np.ogrid[tuple(slice(0, n) for n in self.shape)]
        radii = [n * rng.uniform(0.40, 0.46) for n in self.shape]
        centred = zip(coords, self.shape, radii, strict=True)
        radius2 = sum(((c - (n - 1) / 2) / r) ** 2 for c, n, r in centred)
        wobble = smooth_noise(rng, self.shape, 1, min(self.shape) / 3)[0]
        mask = radius2 < 1.0 + 0.15 * wobble
        fields = smooth_noise(rng, self.shape, self.num_labels, min(self.shape) / 5)
        fields += _balancing_offsets(fields, mask)[(...,) + (None,) * self.ndim]
        labels = (np.argmax(fields, axis=0) + 1).astype(np.int32)
        labels[~mask] = 0
        return labels

    def _template(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        labels = self.label_map(rng)
        levels = np.linspace(0.15, 1.0, self.num_labels, dtype=np.float64)
        intensities = np.concatenate([[0.0], rng.permutation(levels)])
        image = ndimage.gaussian_filter(intensities[labels].astype(np.float32), 0.5)
        return labels, image

    def _displacement(self, rng: np.random.Generator, std: float) -> np.ndarray:
        field = smooth_noise(rng, self.shape, self.ndim, self.smoothness)
        return field * np.float32(std)

    def _contrast(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        gamma = np.float32(np.exp(rng.uniform(-0.2, 0.2)))
        bias = np.exp(np.float32(0.2) * smooth_noise(rng, self.shape, 1, min(self.shape) / 2)[0])
        out = np.clip(image, 0.0, None) ** gamma * bias
        out += np.float32(self.noise) * rng.standard_normal(self.shape, dtype=np.float32)
        low, high = out.min(), out.max()
        out = (out - low) / (high - low) if high > low else np.zeros_like(out)
        return out.astype(np.float32)

    def _deformed(self, labels, image, rng, std) -> tuple[np.ndarray, np.ndarray]:
        displacement = self._displacement(rng, std)
        warped_labels = _warp(labels, displacement, order=0).astype(np.int32)
        warped_image = self._contrast(_warp(image, displacement, order=1), rng)
        return warped_image, warped_labels

    def _check_index(self, index: int, split: str) -> None:
        if split not in _SPLITS:
            raise ValueError(f"Expected split in {tuple(_SPLITS)}. Received: split={split!r}")
        limit = self.size if split == "train" else self.num_val
        if index < 0 or (limit is not None and index >= limit):
            raise IndexError(
                f"Expected 0 <= index < {limit} for split '{split}'. Received: index={index}"
            )

    def pair(self, index: int, split: str = "train") -> dict[str, np.ndarray]:
        """Scan-to-scan pair ``index``: one anatomy under two deformations.

        Returns:
            ``moving``, ``fixed``: float32 images in [0, 1] of shape ``self.shape``;
            ``moving_labels``, ``fixed_labels``: int32 labels ``0..num_labels``.
        """
        index = int(index)
        self._check_index(index, split)
        rng = self._rng(_SPLITS[split], index)
        labels, image = self._template(rng)
        std = self.deformation / math.sqrt(2.0)  # two independent warps
        moving, moving_labels = self._deformed(labels, image, rng, std)
        fixed, fixed_labels = self._deformed(labels, image, rng, std)
        return {
            "moving": moving,
            "fixed": fixed,
            "moving_labels": moving_labels,
            "fixed_labels": fixed_labels,
        }

    @functools.cached_property
    def _atlas(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = self._rng(_ATLAS_STREAM)
        labels, template = self._template(rng)
        return labels, template, self._contrast(template, rng)

    def atlas(self) -> dict[str, np.ndarray]:
        """The atlas: ``image`` (float32 in [0, 1]) and ``labels`` (int32), undeformed."""
        labels, _, image = self._atlas
        return {"image": image.copy(), "labels": labels.copy()}

    def atlas_displacement(self, index: int, split: str = "train") -> np.ndarray:
        """The true deformation of scan-to-atlas pair ``index``: ``u`` of shape
        ``(ndim, *shape)`` in voxels with ``moving(x) = atlas(x + u(x))`` (before the contrast
        changes), for oracles and tests of a registration's accuracy."""
        index = int(index)
        self._check_index(index, split)
        rng = self._rng(_SPLITS[split], index, _ATLAS_STREAM)
        return self._displacement(rng, self.deformation)  # the first draw of `atlas_pair`

    def atlas_pair(self, index: int, split: str = "train") -> dict[str, np.ndarray]:
        """Scan-to-atlas pair ``index``: fixed is the atlas, moving a deformed atlas anatomy.

        Same keys as :meth:`pair`.
        """
        index = int(index)
        self._check_index(index, split)
        labels, template, atlas_image = self._atlas
        rng = self._rng(_SPLITS[split], index, _ATLAS_STREAM)
        moving, moving_labels = self._deformed(labels, template, rng, self.deformation)
        return {
            "moving": moving,
            "fixed": atlas_image.copy(),
            "moving_labels": moving_labels,
            "fixed_labels": labels.copy(),
        }
