"""Tests for vxmtf.data.dataset: Learn2Reg JSON, folders, training split and validation."""

import json
import re

import numpy as np
import pytest

from vxmtf.data import io
from vxmtf.data.dataset import Dataset, Scan, check_label_values, find_label, load_dataset


def _write(path, shape=(4, 5, 6), value=0):
    return io.save_volume(path, np.full(shape, value, dtype=np.uint8))


def _folder(tmp_path, names=("a", "b", "c"), shape=(4, 5, 6), label_names=None):
    images, labels = tmp_path / "images", tmp_path / "labels"
    for name in names:
        _write(images / f"{name}.nii.gz", shape)
    for name in label_names or [f"{n}.nii.gz" for n in names]:
        _write(labels / name, shape)
    return images, labels


# LPBA40 (real data)


def test_lpba40_json(lpba40_dir):
    dataset = load_dataset(lpba40_dir / "LPBA40_dataset.json")
    assert dataset.name == "LPBA40"
    assert len(dataset.images) == 36 and len(dataset.labels) == 36
    subject = re.compile(r"LPBA40_(\d{4})_0000\.nii\.gz")

    def number(path):
        return int(subject.fullmatch(path.name).group(1))

    training = dataset.training_scans()
    assert sorted(number(s.image) for s in training) == list(range(11, 41))
    assert len(dataset.training_scans(exclude_val=False)) == 36
    assert number(dataset.atlas.image) == 1
    assert dataset.atlas.label.parent.name == "labelsTr"
    assert len(dataset.val_pairs) == 9
    moving, fixed = dataset.val_pairs[0]
    assert (number(moving.image), number(fixed.image)) == (6, 1)
    val_subjects = {number(s.image) for pair in dataset.val_pairs for s in pair}
    assert val_subjects == {1, 6, 7, 8, 9, 10}
    assert not val_subjects & {number(s.image) for s in training}
    for scan in dataset.all_scans():
        assert scan.image.is_file() and scan.label.is_file()
        assert scan.label.name == scan.image.name and scan.label.parent.name == "labelsTr"
    assert len(dataset.label_values) == 57
    assert dataset.label_values[:3] == [0, 21, 22] and dataset.label_values[-1] == 182
    assert dataset.training_images() == [s.image for s in training]


def test_lpba40_validate(lpba40_dir):
    dataset = load_dataset(lpba40_dir / "LPBA40_dataset.json")
    assert dataset.validate(3) == (160, 192, 160)
    with pytest.raises(ValueError, match=r"rank 3, expected a 2D volume"):
        dataset.validate(2)


# Learn2Reg JSON written here


def _json_dataset(tmp_path, **extra):
    images, labels = tmp_path / "imagesTr", tmp_path / "labelsTr"
    for name in ("s1", "s2", "s3", "s4"):
        _write(images / f"{name}.nii.gz")
        _write(labels / f"{name}.nii.gz")
    _write(images / "extra.nii.gz")  # named only by registration_val
    _write(labels / "extra.nii.gz")
    description = {
        "name": "toy",
        "labels": {"0": "background", "7": "b", "3": "a"},
        "training": [
            {"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"}
            for n in ("s1", "s2", "s3", "s4")
        ],
        "atlas": "./imagesTr/s1.nii.gz",
        "registration_val": [
            {"fixed": "./imagesTr/s1.nii.gz", "moving": "./imagesTr/s2.nii.gz"},
            {"fixed": "./imagesTr/s2.nii.gz", "moving": "./imagesTr/extra.nii.gz"},
        ],
        **extra,
    }
    path = tmp_path / "toy.json"
    path.write_text(json.dumps(description))
    return path


def test_json_relative_paths_atlas_string_and_label_lookup(tmp_path):
    dataset = load_dataset(_json_dataset(tmp_path))
    assert dataset.name == "toy"
    assert dataset.images[0] == tmp_path / "imagesTr" / "s1.nii.gz"
    # A bare atlas path gets its label from the training list.
    assert dataset.atlas == Scan(tmp_path / "imagesTr/s1.nii.gz", tmp_path / "labelsTr/s1.nii.gz")
    moving, fixed = dataset.val_pairs[1]
    # 'extra' is not in the training list: its label is found in the sibling labelsTr folder.
    assert moving.label == tmp_path / "labelsTr" / "extra.nii.gz"
    assert fixed.label == tmp_path / "labelsTr" / "s2.nii.gz"
    assert dataset.label_values == [0, 3, 7]
    assert [p.name for p in dataset.training_images()] == ["s3.nii.gz", "s4.nii.gz"]
    assert dataset.validate(3) == (4, 5, 6)


def test_json_atlas_argument_overrides(tmp_path):
    path = _json_dataset(tmp_path)
    atlas = (tmp_path / "imagesTr/s4.nii.gz", tmp_path / "labelsTr/s4.nii.gz")
    dataset = load_dataset(path, atlas=atlas)
    assert dataset.atlas == Scan(*atlas)
    assert [p.name for p in dataset.training_images()] == ["s3.nii.gz"]


def test_json_without_labels_or_atlas(tmp_path):
    _write(tmp_path / "a.npy")
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"training": [{"image": "a.npy"}]}))
    dataset = load_dataset(path)
    assert dataset.labels is None and dataset.atlas is None and dataset.label_values is None
    assert dataset.name == "d"
    assert dataset.training_images() == [tmp_path / "a.npy"]


def test_json_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        load_dataset(bad)
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="'training' list"):
        load_dataset(bad)
    with pytest.raises(FileNotFoundError, match="absent.json"):
        load_dataset(tmp_path / "absent.json")


# Folders


def test_folder_with_labels_matched_by_name(tmp_path):
    images, labels = _folder(tmp_path)
    dataset = load_dataset(images, labels=labels)
    assert [p.name for p in dataset.images] == ["a.nii.gz", "b.nii.gz", "c.nii.gz"]
    assert dataset.labels == [labels / "a.nii.gz", labels / "b.nii.gz", labels / "c.nii.gz"]
    assert dataset.name == "images"
    assert dataset.val_pairs == [] and dataset.atlas is None
    assert dataset.validate(3) == (4, 5, 6)


def test_folder_label_suffixes_in_same_folder(tmp_path):
    folder = tmp_path / "data"
    for name in ("a", "b"):
        _write(folder / f"{name}.nii.gz")
    _write(folder / "a_seg.nii.gz")
    _write(folder / "b_label.npz")
    dataset = load_dataset(folder, labels=folder)
    assert [p.name for p in dataset.images] == ["a.nii.gz", "b.nii.gz"]
    assert [p.name for p in dataset.labels] == ["a_seg.nii.gz", "b_label.npz"]


def test_glob_pattern_and_atlas(tmp_path):
    images, labels = _folder(tmp_path, names=("a", "b", "c", "atlas"))
    (images / "notes.txt").write_text("ignored")
    dataset = load_dataset(
        str(images / "[abc].nii.gz"), labels=labels, atlas=images / "atlas.nii.gz"
    )
    assert [p.name for p in dataset.images] == ["a.nii.gz", "b.nii.gz", "c.nii.gz"]
    assert dataset.atlas == Scan(images / "atlas.nii.gz", labels / "atlas.nii.gz")


def test_folder_missing_label(tmp_path):
    images, labels = _folder(tmp_path, label_names=["a.nii.gz", "c.nii.gz"])
    with pytest.raises(FileNotFoundError, match=r"b\.nii\.gz.*b_seg"):
        load_dataset(images, labels=labels)


def test_nothing_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="No volume files"):
        load_dataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="absent"):
        load_dataset(tmp_path / "absent")


def test_find_label_prefers_same_name(tmp_path):
    _write(tmp_path / "l" / "x.nii.gz")
    _write(tmp_path / "l" / "x_seg.nii.gz")
    assert find_label(tmp_path / "i" / "x.nii.gz", tmp_path / "l") == tmp_path / "l" / "x.nii.gz"
    assert find_label(tmp_path / "i" / "y.nii.gz", tmp_path / "l") is None


def test_with_validation(tmp_path):
    images, labels = _folder(tmp_path, names=("a", "b", "c", "d", "e"))
    dataset = load_dataset(images, labels=labels)
    split = dataset.with_validation(2, seed=3)
    held = {s.image for pair in split.val_pairs for s in pair}
    assert len(split.val_pairs) == 1 and len(held) == 2
    assert len(split.training_scans()) == 3
    assert not held & set(split.training_images())
    with pytest.raises(ValueError, match="num_val"):
        dataset.with_validation(5)


# validate() errors


def test_validate_missing_file(tmp_path):
    images, labels = _folder(tmp_path)
    dataset = load_dataset(images, labels=labels)
    (images / "b.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"images/b\.nii\.gz"):
        dataset.validate(3)


def test_validate_wrong_rank(tmp_path):
    images, labels = _folder(tmp_path)
    _write(images / "b.nii.gz", shape=(4, 5))
    dataset = load_dataset(images, labels=labels)
    with pytest.raises(ValueError, match=r"b\.nii\.gz has rank 2, expected a 3D.*\(4, 5\)"):
        dataset.validate(3)


def test_validate_label_shape_mismatch(tmp_path):
    images, labels = _folder(tmp_path)
    _write(labels / "c.nii.gz", shape=(4, 5, 7))
    dataset = load_dataset(images, labels=labels)
    pattern = r"labels/c\.nii\.gz has shape \(4, 5, 7\), expected .*\(4, 5, 6\)"
    with pytest.raises(ValueError, match=pattern):
        dataset.validate(3)


def test_validate_image_shapes_differ(tmp_path):
    images, labels = _folder(tmp_path)
    _write(images / "c.nii.gz", shape=(4, 5, 8))
    _write(labels / "c.nii.gz", shape=(4, 5, 8))
    dataset = load_dataset(images, labels=labels)
    with pytest.raises(ValueError, match=r"c\.nii\.gz has shape \(4, 5, 8\), expected \(4, 5, 6\)"):
        dataset.validate(3)


def test_validate_unreadable_file(tmp_path):
    images, labels = _folder(tmp_path)
    (labels / "a.nii.gz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"labels/a\.nii\.gz"):
        load_dataset(images, labels=labels).validate(3)


def test_validate_checks_atlas_and_val_pairs(tmp_path):
    images, labels = _folder(tmp_path)
    dataset = Dataset(
        images=[images / "a.nii.gz"],
        atlas=(tmp_path / "gone.nii.gz", None),
        val_pairs=[((images / "b.nii.gz", None), (images / "c.nii.gz", None))],
    )
    with pytest.raises(FileNotFoundError, match="gone.nii.gz"):
        dataset.validate(3)


def test_dataset_arguments_checked(tmp_path):
    with pytest.raises(ValueError, match=r"one label map per image.*len\(labels\)=1"):
        Dataset(images=["a", "b"], labels=["a"])
    with pytest.raises(ValueError, match="ndim"):
        Dataset(images=["a"]).validate(4)
    with pytest.raises(TypeError, match="scan"):
        Dataset(images=["a"], atlas=3)
    assert Dataset(images=["a"], label_values=[5, 2]).label_values == [0, 2, 5]


# Voxel checks (Dataset.check_voxels, check_label_values)


def _labelled_folder(tmp_path, values=(0, 4, 9)):
    images, labels = tmp_path / "images", tmp_path / "labels"
    for n, name in enumerate(("a", "b", "c")):
        array = np.zeros((4, 5, 6), np.int16)
        array[: len(values)] = np.array(values).reshape(-1, 1, 1)
        io.save_volume(images / f"{name}.nii.gz", array.astype(np.float32) + n)
        io.save_volume(labels / f"{name}.nii.gz", array)
    return images, labels


def test_check_voxels_finds_the_label_values_of_a_folder(tmp_path):
    images, labels = _labelled_folder(tmp_path, values=(3, 4, 9))
    dataset = load_dataset(images, labels=labels)
    assert dataset.label_values is None
    assert dataset.check_voxels() == [0, 3, 4, 9]  # background always included
    assert dataset.check_voxels(labels=False) is None
    assert load_dataset(images).check_voxels() is None  # no label maps at all


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_check_voxels_refuses_non_finite_images(tmp_path, value):
    images, labels = _labelled_folder(tmp_path)
    array = io.load_volume(images / "b.nii.gz").array
    array[0, 0, :3] = value
    io.save_volume(images / "b.nii.gz", array)
    dataset = load_dataset(images, labels=labels)
    message = f"{images / 'b.nii.gz'}: 3 of 120 voxels are not finite"
    with pytest.raises(ValueError, match=re.escape(message)):
        dataset.check_voxels(labels=False)


def test_check_voxels_refuses_non_integer_and_negative_labels(tmp_path):
    images, labels = _labelled_folder(tmp_path)
    array = io.load_volume(labels / "c.nii.gz").array.astype(np.float32)
    array[1, 1, 1] = 0.5
    io.save_volume(labels / "c.nii.gz", array)
    dataset = load_dataset(images, labels=labels)
    dataset.check_voxels(labels=False)  # labels not read
    with pytest.raises(
        ValueError, match=rf"{re.escape(str(labels / 'c.nii.gz'))} must hold integer"
    ):
        dataset.check_voxels()
    array[1, 1, 1] = -2
    io.save_volume(labels / "c.nii.gz", array)
    with pytest.raises(ValueError, match=r"c\.nii\.gz holds negative values.*min=-2"):
        dataset.check_voxels()


def test_check_voxels_refuses_a_label_map_off_its_image_grid(tmp_path):
    images, labels = _labelled_folder(tmp_path)
    label_map = io.load_volume(labels / "a.nii.gz")
    io.save_volume(labels / "a.nii.gz", label_map.array, affine=np.diag([2.0, 1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"a\.nii\.gz must lie on the grid of its image"):
        load_dataset(images, labels=labels).check_voxels()


def test_check_voxels_refuses_values_the_json_labels_do_not_list(tmp_path):
    _labelled_folder(tmp_path, values=(0, 4, 9))
    description = {
        "name": "toy",
        "labels": {"0": "background", "4": "four"},
        "training": [
            {"image": f"./images/{n}.nii.gz", "label": f"./labels/{n}.nii.gz"} for n in "abc"
        ],
    }
    (tmp_path / "toy.json").write_text(json.dumps(description))
    dataset = load_dataset(tmp_path / "toy.json")
    label = re.escape(str(tmp_path / "labels" / "a.nii.gz"))
    with pytest.raises(ValueError, match=rf"{label} holds label values \[9\] .* dataset 'toy'"):
        dataset.check_voxels()
    description["labels"]["9"] = "nine"
    (tmp_path / "toy.json").write_text(json.dumps(description))
    assert load_dataset(tmp_path / "toy.json").check_voxels() == [0, 4, 9]


def test_check_label_values_lists_at_most_ten_unknown_values():
    check_label_values([0, 2, 2], [0, 1, 2], "x.nii.gz")
    with pytest.raises(
        ValueError, match=r"x\.nii\.gz holds label values \[3, 4.*12\] \(and 2 more"
    ):
        check_label_values(np.arange(15), [0, 1, 2], "x.nii.gz")
