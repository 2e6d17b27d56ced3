"""`select_pairs`: which pairs `evaluate.dice` evaluates, from a run's configuration and the
options given."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from vxmtf.data.dataset import load_dataset
from vxmtf.data.pairs import PairSource, csv_pairs, dataset_pairs, synthetic_pairs
from vxmtf.training.config import DataConfig, RunConfig
from vxmtf.training.data import synthetic_source

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_SYNTHETIC_VAL_PAIRS", "select_pairs"]

#: Synthetic pairs evaluated when the run's configuration holds back none.
DEFAULT_SYNTHETIC_VAL_PAIRS = 4


def select_pairs(
    config: RunConfig | None,
    data=None,
    pairs_csv=None,
    atlas=None,
    label_dir=None,
    max_pairs=None,
    synthetic_shape=None,
    inshape=None,
) -> tuple[list[PairSource], str]:
    """The pairs `evaluate.dice` evaluates, and a description of where they come from.

    `config` is the run's configuration (None when the model came without one); `inshape` the
    model's input shape, used for synthetic pairs when there is no configuration.

    - `pairs_csv`: the pairs it lists (labels from `data` when given, see `csv_pairs`);
    - `data` with `atlas`: every scan of `data` to that atlas;
    - `data`: its `registration_val` pairs (every scan to its atlas when it has none);
    - neither: the run's own data set when its `config.json` names one, else held-back
      synthetic pairs of the run's shape (`config.data.synthetic_shape`; without a
      configuration, `inshape`), or of `synthetic_shape` when given.

    `max_pairs` keeps the first pairs only.

    Raises:
        FileNotFoundError: `atlas` (or the run's atlas) is not a file, or a pair's file is missing.
        ValueError: an atlas without data, no pairs to evaluate, or `max_pairs < 1`.
    """
    if atlas is not None and data is None:
        raise ValueError(f"An atlas needs a data set to register to it. Received: atlas={atlas}")
    if data is None and pairs_csv is None and config is not None and config.data.data:
        data, label_dir = config.data.data, label_dir or config.data.labels
        atlas = atlas or config.data.atlas
        logger.info("No data given: evaluating on the run's data set %s", data)
    if isinstance(atlas, (str, os.PathLike)) and not Path(atlas).is_file():
        raise FileNotFoundError(f"The atlas file does not exist: {atlas}")
    dataset = None
    if data is not None:
        dataset = load_dataset(data, labels=label_dir, atlas=atlas)
    if pairs_csv is not None:
        pairs, description = csv_pairs(pairs_csv, dataset, label_dir), str(pairs_csv)
    elif dataset is not None:
        to_atlas = atlas is not None or (not dataset.val_pairs and dataset.atlas is not None)
        pairs = dataset_pairs(dataset, to_atlas=to_atlas)
        description = f"{data}" + (" (every scan to the atlas)" if to_atlas else "")
    else:
        source, mode = _synthetic_source(config, synthetic_shape, inshape, max_pairs)
        pairs = synthetic_pairs(source, source.num_val, mode)
        description = (
            f"synthetic val pairs, shape {tuple(source.shape)}, seed {source.seed}, mode {mode}"
        )
    if max_pairs is not None:
        if max_pairs < 1:
            raise ValueError(f"Expected max_pairs >= 1. Received: max_pairs={max_pairs}")
        pairs = pairs[:max_pairs]
    return pairs, description


def _synthetic_source(config, shape, inshape, max_pairs):
    """The synthetic source a run trained on (or the default one of a model's input shape),
    holding back `max_pairs` validation pairs (default: the run's, else
    `DEFAULT_SYNTHETIC_VAL_PAIRS`), and the pairing mode."""
    if config is None:
        if shape is None and inshape and None not in inshape:
            shape = inshape
        if shape is None:
            raise ValueError(
                "Cannot tell which synthetic volumes the model was trained on: no config.json "
                "beside it and no fixed input shape. Give a data set or a synthetic shape. "
                "Received: config=None"
            )
        config = RunConfig(data=DataConfig(synthetic_shape=tuple(shape)))
    count = max_pairs if max_pairs is not None else config.data.val_pairs
    count = count or DEFAULT_SYNTHETIC_VAL_PAIRS
    source = synthetic_source(config, shape=shape, num_val=max(count, 0))
    return source, config.data.mode
