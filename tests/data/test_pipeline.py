"""Tests for vxmtf.data.pipeline on tiny files written here, synthetic pairs and LPBA40."""

import json
import time

import numpy as np
import pytest
import tensorflow as tf

from vxmtf.data import io
from vxmtf.data.dataset import Dataset, load_dataset
from vxmtf.data.pipeline import make_pair_dataset, make_validation_dataset, pipeline_shape
from vxmtf.data.preprocess import PreprocessConfig
from vxmtf.data.synthetic import SyntheticPairs

SHAPE = (16, 12, 8)
VALUES = (0, 3, 7, 12)
CONFIG = PreprocessConfig(multiple=4)  # SHAPE is already a multiple of 4: no padding


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """Seven subjects; subject 0 is the atlas, 1-2 validation, 3-6 training.

    Each label map is constant on 2x2x2 blocks and holds every value; the image is
    ``label_value / 12``, so after min-max normalisation ``image == VALUES[index] / 12``.
    """
    root = tmp_path_factory.mktemp("toy")
    rng = np.random.default_rng(0)
    images = []
    for subject in range(7):
        coarse = rng.choice(np.array(VALUES), [s // 2 for s in SHAPE]).astype(np.uint8)
        coarse.flat[: len(VALUES)] = VALUES
        labels = coarse.repeat(2, 0).repeat(2, 1).repeat(2, 2)
        image = labels.astype(np.float32) / 12.0
        io.save_volume(root / "imagesTr" / f"s{subject}.nii.gz", image)
        io.save_volume(root / "labelsTr" / f"s{subject}.nii.gz", labels)
        images.append(image)
    description = {
        "name": "toy",
        "labels": {str(v): f"structure {v}" for v in VALUES},
        "training": [
            {"image": f"./imagesTr/s{i}.nii.gz", "label": f"./labelsTr/s{i}.nii.gz"}
            for i in range(7)
        ],
        "atlas": {"image": "./imagesTr/s0.nii.gz", "label": "./labelsTr/s0.nii.gz"},
        "registration_val": [
            {"fixed": "./imagesTr/s0.nii.gz", "moving": "./imagesTr/s1.nii.gz"},
            {"fixed": "./imagesTr/s1.nii.gz", "moving": "./imagesTr/s2.nii.gz"},
        ],
    }
    (root / "toy.json").write_text(json.dumps(description))
    return load_dataset(root / "toy.json"), np.stack(images)


def _subject(volume, images):
    """Index of the subject whose image equals ``volume`` (spatial, channel axis dropped)."""
    matches = [i for i, image in enumerate(images) if np.array_equal(volume, image)]
    assert len(matches) == 1
    return matches[0]


def _take(dataset, count):
    return [{k: v.numpy() for k, v in batch.items()} for batch in dataset.take(count)]


def test_element_spec_and_batches(toy):
    dataset, _ = toy
    pipeline = make_pair_dataset(dataset, batch_size=2, preprocess=CONFIG, with_labels=True)
    spec = pipeline.element_spec
    assert sorted(spec) == ["fixed", "fixed_labels", "moving", "moving_labels"]
    for key, dtype in [("moving", tf.float32), ("moving_labels", tf.int32)]:
        assert spec[key].shape == (2, *SHAPE, 1) and spec[key].dtype == dtype
    batch = _take(pipeline, 1)[0]
    assert batch["fixed"].shape == (2, *SHAPE, 1)
    assert pipeline_shape(dataset, CONFIG) == SHAPE
    assert sorted(make_pair_dataset(dataset, preprocess=CONFIG).element_spec) == ["fixed", "moving"]


def test_padding_to_the_default_multiple(toy):
    dataset, _ = toy
    pipeline = make_pair_dataset(dataset)  # multiple=16
    assert pipeline_shape(dataset) == (16, 16, 16)
    assert pipeline.element_spec["moving"].shape == (1, 16, 16, 16, 1)


def test_atlas_mode_fixes_the_atlas(toy):
    dataset, images = toy
    batches = _take(make_pair_dataset(dataset, mode="atlas", preprocess=CONFIG), 8)
    moving = [_subject(b["moving"][0, ..., 0], images) for b in batches]
    assert all(_subject(b["fixed"][0, ..., 0], images) == 0 for b in batches)
    # Training excludes the atlas (0) and the validation subjects (1, 2); an epoch sees each once.
    assert sorted(moving[:4]) == sorted(moving[4:]) == [3, 4, 5, 6]


def test_pairs_mode_draws_distinct_training_scans(toy):
    dataset, images = toy
    batches = _take(make_pair_dataset(dataset, mode="pairs", preprocess=CONFIG, seed=2), 24)
    pairs = [
        (_subject(b["moving"][0, ..., 0], images), _subject(b["fixed"][0, ..., 0], images))
        for b in batches
    ]
    assert all(m != f for m, f in pairs)
    assert {m for m, _ in pairs} == {f for _, f in pairs} == {3, 4, 5, 6}
    assert len(set(pairs)) > 6  # many different pairs, not a fixed pairing
    ordered = _take(make_pair_dataset(dataset, mode="pairs", preprocess=CONFIG, shuffle=False), 4)
    order = [
        (_subject(b["moving"][0, ..., 0], images), _subject(b["fixed"][0, ..., 0], images))
        for b in ordered
    ]
    assert order == [(3, 4), (4, 5), (5, 6), (6, 3)]


@pytest.mark.parametrize("mode", ["atlas", "pairs"])
def test_seeded_determinism(toy, mode):
    dataset, images = toy

    def sequence(seed):
        batches = _take(make_pair_dataset(dataset, mode, seed=seed, preprocess=CONFIG), 12)
        return [
            (_subject(b["moving"][0, ..., 0], images), _subject(b["fixed"][0, ..., 0], images))
            for b in batches
        ]

    first = sequence(0)
    assert sequence(0) == first
    assert sequence(1) != first


@pytest.mark.parametrize("downsample", [1, 2])
def test_labels_aligned_with_images(toy, downsample):
    dataset, _ = toy
    config = PreprocessConfig(downsample=downsample, multiple=2)
    pipeline = make_pair_dataset(dataset, "pairs", 2, preprocess=config, with_labels=True)
    expected_shape = tuple(s // downsample for s in SHAPE)
    values = np.array(VALUES, np.float32) / 12.0
    for batch in _take(pipeline, 3):
        for side in ("moving", "fixed"):
            labels = batch[f"{side}_labels"]
            assert labels.shape == (2, *expected_shape, 1) and labels.dtype == np.int32
            assert set(np.unique(labels)) == {0, 1, 2, 3}  # contiguous indices of VALUES
            np.testing.assert_allclose(batch[side], values[labels], atol=1e-6)


def test_cache_gives_the_same_pairs(toy):
    dataset, _ = toy
    plain = _take(make_pair_dataset(dataset, "pairs", preprocess=CONFIG, with_labels=True), 10)
    cached_pipeline = make_pair_dataset(
        dataset, "pairs", preprocess=CONFIG, with_labels=True, cache=True
    )
    cached = _take(cached_pipeline, 10)
    for a, b in zip(plain, cached, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_finite_pipeline(toy):
    dataset, _ = toy
    batches = _take(make_pair_dataset(dataset, batch_size=3, repeat=False, preprocess=CONFIG), 10)
    assert [len(b["moving"]) for b in batches] == [3, 1]


def test_validation_pairs_in_order_with_labels(toy):
    dataset, images = toy
    pipeline = make_validation_dataset(dataset, CONFIG)
    assert pipeline.element_spec["moving_labels"].shape == (1, *SHAPE, 1)
    batches = _take(pipeline, 10)
    order = [
        (_subject(b["moving"][0, ..., 0], images), _subject(b["fixed"][0, ..., 0], images))
        for b in batches
    ]
    assert order == [(1, 0), (2, 1)]
    values = np.array(VALUES, np.float32) / 12.0
    for batch in batches:
        np.testing.assert_allclose(batch["fixed"], values[batch["fixed_labels"]], atol=1e-6)


def test_errors(toy, tmp_path):
    dataset, _ = toy
    with pytest.raises(ValueError, match="mode"):
        make_pair_dataset(dataset, mode="scan")
    with pytest.raises(ValueError, match="batch_size"):
        make_pair_dataset(dataset, batch_size=0)
    with pytest.raises(TypeError, match="source"):
        make_pair_dataset([1, 2])
    no_atlas = Dataset(images=dataset.images, labels=dataset.labels)
    with pytest.raises(ValueError, match="atlas"):
        make_pair_dataset(no_atlas, mode="atlas")
    one = Dataset(images=dataset.images[:1])
    with pytest.raises(ValueError, match="at least 2"):
        make_pair_dataset(one, mode="pairs")
    with pytest.raises(ValueError, match="no label maps"):
        make_pair_dataset(Dataset(images=dataset.images[:2]), "pairs", with_labels=True)
    with pytest.raises(ValueError, match="no validation pairs"):
        make_validation_dataset(no_atlas)
    with pytest.raises(ValueError, match="repeat"):
        make_pair_dataset(SyntheticPairs((8, 8)), repeat=False)
    io.save_volume(tmp_path / "flat.nii.gz", np.zeros(SHAPE[:2]))
    mixed = Dataset(images=[*dataset.images[:2], tmp_path / "flat.nii.gz"])
    with pytest.raises(ValueError, match=r"flat\.nii\.gz has rank 2"):
        make_pair_dataset(mixed, "pairs")


def _bad_label_dataset(toy, tmp_path, change):
    """The toy dataset with the label map of training subject 3 replaced by `change(map)`."""
    dataset, _ = toy
    labels = list(dataset.labels)
    array = change(io.load_volume(labels[3]).array)
    labels[3] = io.save_volume(tmp_path / "s3_bad.nii.gz", array)
    scans = [3, 4]  # training subjects only
    return Dataset(
        images=[dataset.images[i] for i in scans],
        labels=[labels[i] for i in scans],
        label_values=dataset.label_values,
        name="toy",
    )


def _with_value(value, dtype):
    def change(array):
        array = array.astype(dtype)
        array[0, 0, 0] = value
        return array

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_with_value(5, np.uint8), r"s3_bad\.nii\.gz holds label values \[5\]"),
        (_with_value(2.5, np.float32), r"s3_bad\.nii\.gz must hold integer labels"),
    ],
)
def test_label_maps_checked_as_read(toy, tmp_path, change, message):
    # An unlisted value would become background, a float label would be truncated: both are
    # refused by the reader (training checks every file first, `Dataset.check_voxels`).
    dataset = _bad_label_dataset(toy, tmp_path, change)
    pipeline = make_pair_dataset(dataset, "pairs", preprocess=CONFIG, with_labels=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        _take(pipeline, 2)
    with pytest.raises(ValueError, match=message):
        dataset.check_voxels()
    # Without labels the label maps are not read.
    assert len(_take(make_pair_dataset(dataset, "pairs", preprocess=CONFIG), 2)) == 2


# Synthetic source


@pytest.mark.parametrize("shape", [(16, 16, 16), (32, 24)])
@pytest.mark.parametrize("mode", ["atlas", "pairs"])
def test_synthetic_spec_and_content(shape, mode):
    source = SyntheticPairs(shape, num_labels=5, seed=1, size=4)
    config = PreprocessConfig(multiple=8)
    pipeline = make_pair_dataset(
        source, mode, batch_size=2, shuffle=False, with_labels=True, preprocess=config
    )
    for key, dtype in [("fixed", tf.float32), ("fixed_labels", tf.int32)]:
        assert pipeline.element_spec[key].shape == (2, *shape, 1)
        assert pipeline.element_spec[key].dtype == dtype
    batch = _take(pipeline, 1)[0]
    expected = source.atlas_pair(1) if mode == "atlas" else source.pair(1)
    for key, value in expected.items():
        np.testing.assert_allclose(batch[key][1, ..., 0], value, atol=1e-6)


def test_synthetic_seeded_and_atlas_fixed():
    source = SyntheticPairs((16, 16), num_labels=4, seed=0)

    def first(seed, mode="pairs"):
        return _take(
            make_pair_dataset(source, mode, seed=seed, preprocess=PreprocessConfig(multiple=8)), 3
        )

    a, b, c = first(0), first(0), first(1)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["moving"], y["moving"])
    assert not np.array_equal(a[0]["moving"], c[0]["moving"])
    atlas = first(0, "atlas")
    assert not np.array_equal(atlas[0]["moving"], atlas[1]["moving"])
    for batch in atlas:
        np.testing.assert_array_equal(batch["fixed"][0, ..., 0], source.atlas()["image"])


def test_synthetic_validation_and_downsampling():
    source = SyntheticPairs((32, 32, 32), num_labels=4, seed=0, num_val=3)
    config = PreprocessConfig(downsample=2, multiple=16)
    pipeline = make_validation_dataset(source, config, mode="pairs")
    batches = _take(pipeline, 10)
    assert len(batches) == 3
    assert batches[0]["moving_labels"].shape == (1, 16, 16, 16, 1)
    pair = source.pair(0, split="val")
    block = pair["moving"].reshape(16, 2, 16, 2, 16, 2).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(batches[0]["moving"][0, ..., 0], block, atol=1e-6)


# LPBA40


def _lpba40_batch(lpba40_dir, downsample, batch_size):
    dataset = load_dataset(lpba40_dir / "LPBA40_dataset.json")
    config = PreprocessConfig(downsample=downsample)
    pipeline = make_pair_dataset(dataset, "atlas", batch_size, preprocess=config, with_labels=True)
    shape = pipeline_shape(dataset, config)
    batch = _take(pipeline, 1)[0]
    assert batch["moving"].shape == batch["fixed_labels"].shape == (batch_size, *shape, 1)
    for side in ("moving", "fixed"):
        image, labels = batch[side], batch[f"{side}_labels"]
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert labels.min() == 0 and 40 < labels.max() <= 56
        # Labels sit on the brain: in LPBA40 about 85% of labelled voxels have a non-zero
        # intensity (sulcal CSF is labelled too) against about 5% of unlabelled ones.
        assert np.mean(image[labels > 0] > 0) > 0.8
        assert np.mean(image[labels == 0] > 0) < 0.2
    # The fixed image is the atlas: block mean of the file (oracle), centred in the padding.
    atlas = io.load_volume(dataset.atlas.image).array.astype(np.float64)
    atlas = (atlas - atlas.min()) / (atlas.max() - atlas.min())  # min-max at full resolution
    k = downsample
    coarse = atlas.reshape(160 // k, k, 192 // k, k, 160 // k, k).mean(axis=(1, 3, 5))
    start = [(s - c) // 2 for s, c in zip(shape, coarse.shape, strict=True)]
    inner = tuple(slice(b, b + c) for b, c in zip(start, coarse.shape, strict=True))
    np.testing.assert_allclose(batch["fixed"][0, ..., 0][inner], coarse, atol=1e-5)
    return shape


def test_lpba40_downsampled_batch(lpba40_dir):
    start = time.perf_counter()
    assert _lpba40_batch(lpba40_dir, 4, 2) == (48, 48, 48)
    assert time.perf_counter() - start < 30


@pytest.mark.slow
def test_lpba40_full_size_batch(lpba40_dir):
    assert _lpba40_batch(lpba40_dir, 1, 1) == (160, 192, 160)


def test_lpba40_validation_pairs(lpba40_dir):
    dataset = load_dataset(lpba40_dir / "LPBA40_dataset.json")
    pipeline = make_validation_dataset(dataset, PreprocessConfig(downsample=4))
    assert pipeline.element_spec["fixed_labels"].shape == (1, 48, 48, 48, 1)
    batch = next(iter(pipeline))
    assert int(tf.reduce_max(batch["moving_labels"])) <= 56
