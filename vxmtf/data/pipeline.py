"""tf.data pipelines of registration pairs from files (:class:`Dataset`) or synthetic data.

Elements are dicts of channels-last tensors with static shapes::

    {"moving": (B, *S, 1) float32, "fixed": (B, *S, 1) float32,
     "moving_labels": (B, *S, 1) int32, "fixed_labels": (B, *S, 1) int32}   # with_labels

where ``S = pipeline_shape(source, preprocess)`` and labels are contiguous indices ``0..K``
(``Dataset.label_values[k] -> k``; see :func:`vxmtf.data.preprocess.remap_labels`).

Modes:
- ``"atlas"`` (scan-to-atlas): moving is a training scan, fixed is the atlas.
- ``"pairs"`` (scan-to-scan): moving is a training scan, fixed another training scan
  (never the same one).

One epoch visits every training scan once as moving, in an order shuffled with ``seed``
(reshuffled every epoch, the same sequence for the same seed). In ``"pairs"`` mode the fixed
scan is drawn from a seeded random stream (with ``shuffle=False``: the next scan in the list).
Files are read and preprocessed in parallel tf.data workers, one :func:`tf.numpy_function` call
per file, each checked as it is read (finite image voxels; integer label maps holding only
``Dataset.label_values`` when known): a bad file stops the iteration with an error, so check
every file first with :meth:`Dataset.check_voxels`, as training does. ``cache=True`` keeps the
preprocessed single volumes in memory (never the pairs, so pairs stay random). The atlas is
read once. For a :class:`SyntheticPairs` source, each element is one generated pair: index
``i`` of a seeded shuffle of ``range(size)``, or of a seeded random stream when ``size`` is
``None``.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
import tensorflow as tf

from vxmtf.data.dataset import Dataset, Scan, check_label_values
from vxmtf.data.io import load_label_map, load_volume, read_shape
from vxmtf.data.preprocess import PreprocessConfig, preprocess_image, preprocess_labels
from vxmtf.data.synthetic import SyntheticPairs

logger = logging.getLogger(__name__)

MODES = ("atlas", "pairs")
_KEYS = ("moving", "fixed", "moving_labels", "fixed_labels")


def _check_source(source) -> None:
    if not isinstance(source, (Dataset, SyntheticPairs)):
        raise TypeError(
            f"Expected a vxmtf.data Dataset or SyntheticPairs source. "
            f"Received: source={type(source).__name__}"
        )


def source_shape(source: Dataset | SyntheticPairs) -> tuple[int, ...]:
    """The raw spatial shape of a source; for a :class:`Dataset`, after ``validate``."""
    _check_source(source)
    if isinstance(source, SyntheticPairs):
        return source.shape
    scans = source.all_scans()
    if not scans:
        raise ValueError(f"Dataset '{source.name}' names no images. Received: images=[]")
    ndim = len(read_shape(scans[0].image))
    if ndim not in (2, 3):
        raise ValueError(f"Expected 2D or 3D images, e.g. {scans[0].image}. Received: ndim={ndim}")
    return source.validate(ndim)


def pipeline_shape(
    source: Dataset | SyntheticPairs, preprocess: PreprocessConfig | None = None
) -> tuple[int, ...]:
    """Spatial shape ``S`` of the pipeline's volumes (build the model with ``(*S, 1)``)."""
    preprocess = preprocess or PreprocessConfig()
    return preprocess.output_shape(source_shape(source))


class _VolumeReader:
    """Reads and preprocesses single volumes by scan index, with an optional memory cache."""

    def __init__(self, scans, preprocess, label_values, shape, cache, pinned=(), name="dataset"):
        self.scans = list(scans)
        self.name = name
        self.preprocess = preprocess
        self.label_values = label_values
        self.shape = tuple(shape)
        self.cache_all = cache
        self.pinned = set(pinned)
        self._cache = {}
        self._lock = threading.Lock()

    def _load(self, kind: str, index: int) -> np.ndarray:
        scan = self.scans[index]
        path = scan.image if kind == "image" else scan.label
        if kind == "image":
            volume = load_volume(path).array  # refuses non-finite voxels
        else:  # integer values (as registration and evaluation require), all of them listed
            volume = load_label_map(path).volume.array
            if self.label_values is not None:
                check_label_values(volume, self.label_values, path, self.name)
        if volume.ndim != len(self.shape):
            raise ValueError(
                f"{path} has rank {volume.ndim}, expected {len(self.shape)}. "
                f"Received: shape={volume.shape}"
            )
        if kind == "image":
            array, _ = preprocess_image(volume, self.preprocess)
        else:
            array, _ = preprocess_labels(volume, self.preprocess, self.label_values)
            array = array.astype(np.uint8 if array.max(initial=0) < 256 else np.int32)
        if array.shape != self.shape:
            raise ValueError(
                f"{path} preprocesses to shape {array.shape}, expected {self.shape} like the "
                f"other volumes. Received: shape={volume.shape}"
            )
        return array

    def get(self, kind: str, index) -> np.ndarray:
        index = int(index)
        key = (kind, index)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._load(kind, index)
            if self.cache_all or index in self.pinned:
                with self._lock:
                    self._cache[key] = cached
        dtype = np.float32 if kind == "image" else np.int32
        return cached.astype(dtype, copy=kind == "image")[..., None]

    def tensor(self, kind: str, index: tf.Tensor) -> tf.Tensor:
        dtype = tf.float32 if kind == "image" else tf.int32
        out = tf.numpy_function(
            lambda i: self.get(kind, i), [index], dtype, stateful=False, name=f"read_{kind}"
        )
        return tf.ensure_shape(out, (*self.shape, 1))


def _training_indices(count: int, seed: int, shuffle: bool, repeat: bool) -> tf.data.Dataset:
    indices = tf.data.Dataset.range(count)
    if shuffle:
        indices = indices.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    return indices.repeat() if repeat else indices


def _pair_indices(count, mode, seed, shuffle, repeat) -> tf.data.Dataset:
    """``(moving, fixed)`` scan indices; in atlas mode the atlas has index ``count``."""
    moving = _training_indices(count, seed, shuffle, repeat)
    if mode == "atlas":
        return moving.map(lambda m: (m, tf.constant(count, tf.int64)))
    if not shuffle:
        return moving.map(lambda m: (m, (m + 1) % count))
    offsets = tf.data.Dataset.random(seed=seed + 1)
    # fixed = moving + 1 + (r mod (count - 1)), mod count: uniform over the other scans.
    return tf.data.Dataset.zip(moving, offsets).map(
        lambda m, r: (m, (m + 1 + tf.math.floormod(r, count - 1)) % count)
    )


def _finish(pairs: tf.data.Dataset, batch_size: int, drop_remainder: bool) -> tf.data.Dataset:
    return pairs.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def _file_pairs(
    reader: _VolumeReader, indices: tf.data.Dataset, with_labels: bool, deterministic: bool
) -> tf.data.Dataset:
    def load(moving, fixed):
        element = {"moving": reader.tensor("image", moving), "fixed": reader.tensor("image", fixed)}
        if with_labels:
            element["moving_labels"] = reader.tensor("label", moving)
            element["fixed_labels"] = reader.tensor("label", fixed)
        return element

    return indices.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)


def _synthetic_pairs(
    source: SyntheticPairs,
    indices: tf.data.Dataset,
    mode: str,
    split: str,
    preprocess: PreprocessConfig,
    with_labels: bool,
    deterministic: bool,
) -> tf.data.Dataset:
    shape = preprocess.output_shape(source.shape)
    keys = _KEYS if with_labels else _KEYS[:2]
    make = source.atlas_pair if mode == "atlas" else source.pair

    def generate(index):
        pair = make(int(index), split=split)
        out = []
        for key in keys:
            if key.endswith("labels"):
                array, _ = preprocess_labels(pair[key], preprocess)
                out.append(array.astype(np.int32)[..., None])
            else:
                out.append(preprocess_image(pair[key], preprocess)[0][..., None])
        return out

    def load(index):
        dtypes = [tf.int32 if k.endswith("labels") else tf.float32 for k in keys]
        arrays = tf.numpy_function(generate, [index], dtypes, stateful=False, name="synthetic")
        return {k: tf.ensure_shape(a, (*shape, 1)) for k, a in zip(keys, arrays, strict=True)}

    return indices.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)


def _check_common(mode: str, batch_size: int) -> None:
    if mode not in MODES:
        raise ValueError(f"Expected mode in {MODES}. Received: mode={mode!r}")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"Expected batch_size >= 1. Received: batch_size={batch_size}")


def make_pair_dataset(
    source: Dataset | SyntheticPairs,
    mode: str = "atlas",
    batch_size: int = 1,
    seed: int = 0,
    shuffle: bool = True,
    cache: bool = False,
    repeat: bool = True,
    preprocess: PreprocessConfig | None = None,
    with_labels: bool = False,
    deterministic: bool = True,
    exclude_val: bool = True,
) -> tf.data.Dataset:
    """Training pairs as a batched, prefetched ``tf.data.Dataset`` of dicts (module docstring).

    Args:
        source: a :class:`Dataset` (validated here, headers only) or a :class:`SyntheticPairs`.
        mode: ``"atlas"`` (fixed = the atlas) or ``"pairs"`` (fixed = another training scan).
        batch_size: pairs per batch. With ``repeat`` the last partial batch is dropped, so the
            batch size is static too.
        seed: seeds the shuffling and the random fixed scans; same seed, same sequence.
        shuffle: shuffle the scans every epoch.
        cache: keep preprocessed volumes in memory (files only; about ``4 * prod(S)`` bytes
            per image and ``prod(S)`` per label map).
        repeat: repeat forever (for ``model.fit(steps_per_epoch=...)``).
        preprocess: a :class:`PreprocessConfig`; default ``PreprocessConfig()``.
        with_labels: add ``moving_labels`` and ``fixed_labels``.
        deterministic: keep the element order fixed despite parallel reads.
        exclude_val: train without the atlas and validation subjects (files only; see
            :meth:`Dataset.training_scans`).

    Raises:
        ValueError: for a bad mode or batch size, a missing atlas, fewer than two scans in
            pairs mode, missing labels, or files failing :meth:`Dataset.validate`.
    """
    _check_common(mode, batch_size)
    _check_source(source)
    preprocess = preprocess or PreprocessConfig()
    batch_size = int(batch_size)
    if isinstance(source, SyntheticPairs):
        if source.size is None:
            if not repeat:
                raise ValueError(
                    "Expected repeat=True for an unbounded SyntheticPairs stream (size=None). "
                    "Received: repeat=False"
                )
            indices = (
                tf.data.Dataset.random(seed=seed).map(lambda r: tf.math.floormod(r, 2**31))
                if shuffle
                else tf.data.Dataset.counter()
            )
        else:
            indices = _training_indices(source.size, seed, shuffle, repeat)
        pairs = _synthetic_pairs(
            source, indices, mode, "train", preprocess, with_labels, deterministic
        )
        return _finish(pairs, batch_size, repeat)

    shape = pipeline_shape(source, preprocess)
    scans = source.training_scans(exclude_val)
    if with_labels and any(s.label is None for s in scans):
        raise ValueError(f"Dataset '{source.name}' has no label maps. Received: with_labels=True")
    pinned = ()
    if mode == "atlas":
        if source.atlas is None:
            raise ValueError(
                f"Expected an atlas for mode='atlas' in dataset '{source.name}'. "
                f"Received: atlas=None"
            )
        if with_labels and source.atlas.label is None:
            raise ValueError(f"The atlas {source.atlas.image} has no label map.")
        pinned = (len(scans),)
        scans = scans + [source.atlas]
    minimum = 1 if mode == "atlas" else 2
    count = len(scans) - (1 if mode == "atlas" else 0)
    if count < minimum:
        raise ValueError(
            f"Expected at least {minimum} training scan(s) for mode='{mode}'. "
            f"Received: {count} in dataset '{source.name}'"
        )
    reader = _VolumeReader(
        scans, preprocess, source.label_values, shape, cache, pinned, source.name
    )
    logger.info(
        "Pairs from '%s': %d training scans, mode=%s, shape %s", source.name, count, mode, shape
    )
    indices = _pair_indices(count, mode, seed, shuffle, repeat)
    pairs = _file_pairs(reader, indices, with_labels, deterministic)
    return _finish(pairs, batch_size, repeat)


def make_validation_dataset(
    source: Dataset | SyntheticPairs,
    preprocess: PreprocessConfig | None = None,
    mode: str = "atlas",
    with_labels: bool | None = None,
    cache: bool = False,
) -> tf.data.Dataset:
    """Validation pairs in a fixed order, batch size 1, no shuffling and no repetition.

    For a :class:`Dataset`: its ``val_pairs`` (``mode`` is ignored). For
    :class:`SyntheticPairs`: pairs ``0..num_val - 1`` of the ``"val"`` split, in ``mode``.
    ``with_labels`` defaults to whether label maps are available.
    """
    _check_common(mode, 1)
    _check_source(source)
    preprocess = preprocess or PreprocessConfig()
    if isinstance(source, SyntheticPairs):
        indices = tf.data.Dataset.range(source.num_val)
        with_labels = True if with_labels is None else with_labels
        pairs = _synthetic_pairs(source, indices, mode, "val", preprocess, with_labels, True)
        return _finish(pairs, 1, True)
    if not source.val_pairs:
        raise ValueError(f"Dataset '{source.name}' has no validation pairs. Received: []")
    shape = pipeline_shape(source, preprocess)
    scans: list[Scan] = []
    position: dict[Scan, int] = {}
    index_pairs = []
    for pair in source.val_pairs:
        for scan in pair:
            if scan not in position:
                position[scan] = len(scans)
                scans.append(scan)
        index_pairs.append((position[pair[0]], position[pair[1]]))
    labelled = all(s.label is not None for s in scans)
    if with_labels is None:
        with_labels = labelled
    elif with_labels and not labelled:
        missing = next(s.image for s in scans if s.label is None)
        raise ValueError(f"Validation image {missing} has no label map. Received: with_labels=True")
    reader = _VolumeReader(scans, preprocess, source.label_values, shape, cache, (), source.name)
    moving, fixed = (np.array(v, dtype=np.int64) for v in zip(*index_pairs, strict=True))
    indices = tf.data.Dataset.from_tensor_slices((moving, fixed))
    return _finish(_file_pairs(reader, indices, with_labels, True), 1, True)
