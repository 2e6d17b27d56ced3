"""Data: reading/writing volumes, dataset descriptions, preprocessing, synthetic pairs, tf.data.

``io`` reads NIfTI/npy/npz with their geometry and writes atomically; ``dataset`` describes
which files to use (Learn2Reg JSON or folders) and checks them before training; ``preprocess``
normalises, downsamples and pads single volumes; ``synthetic`` generates labelled pairs when no
files are given; ``pipeline`` turns either into batched ``tf.data`` pairs.
"""

from vxmtf.data.dataset import LABEL_SUFFIXES, Dataset, Scan, find_label, load_dataset
from vxmtf.data.io import SUFFIXES, Volume, load_volume, read_shape, save_volume
from vxmtf.data.pipeline import (
    make_pair_dataset,
    make_validation_dataset,
    pipeline_shape,
    source_shape,
)
from vxmtf.data.preprocess import (
    Padding,
    PreprocessConfig,
    downsample_image,
    downsample_labels,
    normalize_intensity,
    pad_to_multiple,
    preprocess_image,
    preprocess_labels,
    remap_labels,
    unmap_labels,
)
from vxmtf.data.synthetic import SyntheticPairs, smooth_noise

__all__ = [
    "LABEL_SUFFIXES",
    "SUFFIXES",
    "Dataset",
    "Padding",
    "PreprocessConfig",
    "Scan",
    "SyntheticPairs",
    "Volume",
    "downsample_image",
    "downsample_labels",
    "find_label",
    "load_dataset",
    "load_volume",
    "make_pair_dataset",
    "make_validation_dataset",
    "normalize_intensity",
    "pad_to_multiple",
    "pipeline_shape",
    "preprocess_image",
    "preprocess_labels",
    "read_shape",
    "remap_labels",
    "save_volume",
    "smooth_noise",
    "source_shape",
    "unmap_labels",
]
