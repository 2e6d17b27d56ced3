"""`TrainingData`: the run's data source, its shape, and the (x, y) datasets `fit` consumes."""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from vxmtf.data import (
    SyntheticPairs,
    load_dataset,
    make_pair_dataset,
    make_validation_dataset,
    pipeline_shape,
)


def synthetic_source(config, shape=None, num_val=None) -> SyntheticPairs:
    """The synthetic data of a run (`config.data.data is None`): `SyntheticPairs` of
    `config.data.synthetic_shape` (or `shape`) with its label count, seeded with the run's seed,
    holding back `num_val` validation pairs (default: the run's `val_pairs`). Training draws its
    pairs from it, evaluation its held-back validation pairs (`split="val"`), so both see the
    same data.
    """
    data = config.data
    return SyntheticPairs(
        tuple(shape or data.synthetic_shape),
        num_labels=data.synthetic_labels,
        seed=config.train.seed,
        num_val=data.val_pairs if num_val is None else num_val,
        deformation=data.synthetic_deformation,
        smoothness=data.synthetic_smoothness,
    )


class TrainingData:
    """Data of a training run, validated when constructed (before any model is built).

    `config.data.data is None` selects `SyntheticPairs` with `synthetic_shape`; otherwise a
    dataset JSON or a folder/glob of images (see `vxmtf.data.load_dataset`), whose files are all
    checked here: headers first (existence, readability, rank, shapes, label/image agreement),
    then every voxel (`Dataset.check_voxels`: finite images; with a segmentation weight, integer
    label maps on their image's grid whose values the dataset JSON's `labels` all list).

    Label classes: the dataset JSON's `labels`; without them (a folder with a labels folder, or
    a JSON without `labels`), every value found in the label maps. Class `k` is the `k`-th
    smallest value, 0 (background) first.
    """

    def __init__(self, config):
        self.config = config
        dcfg, mcfg, tcfg = config.data, config.model, config.train
        multiple = mcfg.size_multiple
        self.preprocess = config.preprocess()
        if dcfg.data is None:
            shape = tuple(dcfg.synthetic_shape)
            if any(s % multiple for s in shape):
                raise ValueError(
                    f"The synthetic shape's sizes must be multiples of the network's size "
                    f"multiple, {multiple}. Received: synthetic_shape={shape}"
                )
            self.source = synthetic_source(config)
            self.num_classes = dcfg.synthetic_labels + 1
            self.shape = tuple(pipeline_shape(self.source, self.preprocess))
        else:
            source = load_dataset(dcfg.data, labels=dcfg.labels, atlas=dcfg.atlas)
            self.shape = tuple(pipeline_shape(source, self.preprocess))  # headers only
            if tcfg.seg_weight > 0:
                _check_labelled(source, _used_scans(source, dcfg.mode))
            found = source.check_voxels(labels=tcfg.seg_weight > 0)
            if source.label_values is None and found is not None:
                source = dataclasses.replace(source, label_values=found)
            self.source = source
            values = source.label_values
            self.num_classes = len(values) if values else 0
        if tcfg.seg_weight > 0 and self.num_classes < 2:
            raise ValueError(
                "A segmentation weight needs label maps with at least one label besides "
                "background (0), given by a dataset JSON or `labels` (a folder of label maps). "
                f"Received: label_values={getattr(self.source, 'label_values', None)}"
            )

    @property
    def with_labels(self) -> bool:
        return self.config.train.seg_weight > 0

    def dataset(self, batch_size: int, seed: int) -> tf.data.Dataset:
        """Endless training batches of `(x, y)` for `fit`."""
        pairs = make_pair_dataset(
            self.source,
            mode=self.config.data.mode,
            batch_size=batch_size,
            seed=seed,
            cache=self.config.data.cache,
            preprocess=self.preprocess,
            with_labels=self.with_labels,
        )
        return pairs.map(self._to_xy, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
            tf.data.AUTOTUNE
        )

    def validation_dataset(self, replicas: int = 1) -> tf.data.Dataset | None:
        """Fixed validation pairs (None when the source has none)."""
        if isinstance(self.source, SyntheticPairs):
            if self.source.num_val == 0:
                return None
        elif not self.source.val_pairs:
            return None
        pairs = make_validation_dataset(
            self.source,
            preprocess=self.preprocess,
            mode=self.config.data.mode,
            with_labels=self.with_labels,
        )
        if replicas > 1:  # each replica needs a sample: re-batch the batch-1 stream
            pairs = pairs.unbatch().batch(replicas, drop_remainder=True)
        return pairs.map(self._to_xy)

    def _to_xy(self, element):
        """Pipeline dict -> (inputs, targets) of the training model (see `trainer`)."""
        moving, fixed = element["moving"], element["fixed"]
        x = {"moving": moving, "fixed": fixed}
        batch = tf.shape(fixed)[0]
        y = {"moved": fixed, "preint_flow": tf.zeros([batch, 1])}  # Grad ignores its target
        if self.config.model.bidir:
            y["inverse_moved"] = moving
        if self.with_labels:
            x["moving_seg"] = _one_hot(element["moving_labels"], self.num_classes)
            y["moved_seg"] = _one_hot(element["fixed_labels"], self.num_classes)
        return x, y


def _used_scans(source, mode: str) -> list:
    """The scans a run reads: its training scans, the atlas in atlas mode, validation pairs."""
    scans = list(source.training_scans())
    if mode == "atlas" and source.atlas is not None:
        scans.append(source.atlas)
    return scans + [s for pair in source.val_pairs for s in pair]


def _check_labelled(source, scans) -> None:
    missing = [s.image for s in scans if s.label is None]
    if missing:
        raise ValueError(
            f"A segmentation weight needs a label map for every image the run reads: give "
            f"`labels` (a folder of label maps matched by file name) or a dataset JSON whose "
            f"entries name their `label`. Received: no label map for {missing[0]}"
            + (f" and {len(missing) - 1} more image(s)" if len(missing) > 1 else "")
            + f" of dataset '{source.name}'"
        )


def _one_hot(labels, num_classes):
    # (batch, *spatial, 1) int32 indices -> (batch, *spatial, num_classes) float32
    return tf.one_hot(labels[..., 0], num_classes, dtype=tf.float32)
