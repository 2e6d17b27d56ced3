"""`python -m train` on label maps: folder + `--labels` with `--seg-weight`, and the training
data check (integer labels, labels listed in the dataset JSON, finite image voxels)."""

import json
import os

import numpy as np
import pytest

from train.__main__ import main
from vxmtf.data import io
from vxmtf.training import DataConfig, RunConfig, TrainConfig
from vxmtf.training.data import TrainingData

SHAPE = (16, 16, 16)
VALUES = (0, 5, 17, 40)  # not contiguous: training must remap them to indices 0..3
TINY = ["--enc", "4", "8", "--dec", "8", "8", "4", "--int-steps", "2"]


@pytest.fixture(autouse=True)
def _quiet_tensorflow(monkeypatch):
    # main() sets these only when unset; pin them so that the test leaves the environment as
    # it found it.
    for name, default in (("TF_ENABLE_ONEDNN_OPTS", "1"), ("TF_CPP_MIN_LOG_LEVEL", "1")):
        monkeypatch.setenv(name, os.environ.get(name, default))


def write_subjects(root, count=3, labels_dir="labels"):
    """`count` subjects: `root/images/sN.nii.gz` and `root/<labels_dir>/sN.nii.gz`, each label
    map holding every value of VALUES, the image a smooth function of it."""
    rng = np.random.default_rng(0)
    for n in range(count):
        labels = rng.choice(np.array(VALUES, np.uint8), [s // 4 for s in SHAPE])
        labels.flat[: len(VALUES)] = VALUES
        labels = labels.repeat(4, 0).repeat(4, 1).repeat(4, 2)
        image = labels.astype(np.float32) / 40 + rng.normal(0, 0.01, SHAPE).astype(np.float32)
        io.save_volume(root / "images" / f"s{n}.nii.gz", image)
        io.save_volume(root / labels_dir / f"s{n}.nii.gz", labels)
    return root / "images", root / labels_dir


def train_argv(data, run, *extra):
    argv = ["--data", str(data), "--mode", "pairs", "--seg-weight", "1", *TINY]
    argv += ["--epochs", "1", "--steps-per-epoch", "2", "--no-export", "--model-dir", str(run)]
    return argv + list(extra)


def test_folder_with_labels_trains_with_a_segmentation_weight(tmp_path, capsys):
    images, labels = write_subjects(tmp_path)
    run = tmp_path / "run"
    code = main(train_argv(images, run, "--labels", str(labels)))
    assert code == 0, capsys.readouterr().err
    assert (run / "last.keras").is_file()
    # One class per label value found in the label maps (0 included), remapped to 0..K.
    config = RunConfig(
        data=DataConfig(data=str(images), labels=str(labels), mode="pairs"),
        train=TrainConfig(model_dir=str(tmp_path / "unused"), seg_weight=1.0),
    )
    data = TrainingData(config)
    assert data.num_classes == len(VALUES)
    assert data.source.label_values == list(VALUES)
    element = next(iter(data.dataset(batch_size=1, seed=0)))[0]
    one_hot = element["moving_seg"].numpy()
    assert one_hot.shape == (1, *SHAPE, len(VALUES))
    assert np.all(one_hot.sum(-1) == 1) and np.all(one_hot.sum(axis=(0, 1, 2, 3)) > 0)


def test_float_label_map_with_non_integer_values_is_refused(tmp_path, capsys):
    images, labels = write_subjects(tmp_path)
    bad = labels / "s1.nii.gz"
    array = io.load_volume(bad).array.astype(np.float32)
    array[0, 0, 0] = 2.5
    io.save_volume(bad, array)
    run = tmp_path / "run"
    assert main(train_argv(images, run, "--labels", str(labels))) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "integer labels" in err
    assert not run.exists()


def write_json(root, labels):
    description = {
        "name": "toy",
        "labels": {str(v): f"structure {v}" for v in labels},
        "training": [
            {"image": f"./images/s{n}.nii.gz", "label": f"./labels/s{n}.nii.gz"} for n in range(3)
        ],
    }
    path = root / "toy.json"
    path.write_text(json.dumps(description))
    return path


def test_label_values_missing_from_the_dataset_json_are_refused(tmp_path, capsys):
    write_subjects(tmp_path)
    path = write_json(tmp_path, VALUES[:-1])  # 40 is not listed: it would become background
    run = tmp_path / "run"
    assert main(train_argv(path, run)) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "labels" / "s0.nii.gz") in err and "[40]" in err
    assert not run.exists()


def test_labels_listed_in_the_dataset_json_are_the_classes(tmp_path):
    write_subjects(tmp_path)
    listed = (*VALUES, 99)  # a listed value absent from the maps is still a class
    config = RunConfig(
        data=DataConfig(data=str(write_json(tmp_path, listed)), mode="pairs"),
        train=TrainConfig(model_dir=str(tmp_path / "run"), seg_weight=1.0),
    )
    data = TrainingData(config)
    assert data.source.label_values == list(listed) and data.num_classes == len(listed)


def test_segmentation_weight_without_label_maps_is_refused(tmp_path, capsys):
    images, _ = write_subjects(tmp_path)
    run = tmp_path / "run"
    assert main(train_argv(images, run)) == 2
    err = capsys.readouterr().err
    assert "needs a label map for every image" in err and str(images / "s0.nii.gz") in err
    assert not run.exists()


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_training_image_is_refused(tmp_path, capsys, value):
    images, _ = write_subjects(tmp_path)
    bad = images / "s2.nii.gz"
    array = io.load_volume(bad).array
    array[1, 2, 3] = value
    array[4, 5, 6] = -value
    io.save_volume(bad, array)
    run = tmp_path / "run"
    argv = train_argv(images, run)
    argv[argv.index("--seg-weight") + 1] = "0"  # the image check does not depend on labels
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and f"2 of {np.prod(SHAPE)} voxels are not finite" in err
    assert not run.exists()
