"""Tests for vxmtf.data.synthetic: determinism, shapes, labels, realism of the pairs."""

import numpy as np
import pytest

from vxmtf.data.synthetic import SyntheticPairs, smooth_noise

SHAPES = [(32, 32, 32), (48, 40)]


def _dice(a, b, labels):
    """Mean Dice over labels, by the definition 2|A & B| / (|A| + |B|)."""
    scores = []
    for label in labels:
        x, y = a == label, b == label
        scores.append(2.0 * np.logical_and(x, y).sum() / (x.sum() + y.sum()))
    return float(np.mean(scores))


@pytest.mark.parametrize("shape", SHAPES)
def test_shapes_dtypes_and_ranges(shape):
    pairs = SyntheticPairs(shape, num_labels=8, seed=0)
    pair = pairs.pair(0)
    assert sorted(pair) == ["fixed", "fixed_labels", "moving", "moving_labels"]
    for key in ("moving", "fixed"):
        assert pair[key].shape == shape and pair[key].dtype == np.float32
        assert pair[key].min() == 0.0 and pair[key].max() == 1.0
    for key in ("moving_labels", "fixed_labels"):
        assert pair[key].shape == shape and pair[key].dtype == np.int32
        assert pair[key].min() == 0 and pair[key].max() <= 8
    assert pairs.ndim == len(shape) and pairs.label_values == list(range(9))


@pytest.mark.parametrize("method", ["pair", "atlas_pair"])
def test_deterministic_per_seed_and_index(method):
    a = getattr(SyntheticPairs((24, 24, 24), seed=3), method)(5)
    b = getattr(SyntheticPairs((24, 24, 24), seed=3), method)(5)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    other_index = getattr(SyntheticPairs((24, 24, 24), seed=3), method)(6)
    other_seed = getattr(SyntheticPairs((24, 24, 24), seed=4), method)(5)
    val = getattr(SyntheticPairs((24, 24, 24), seed=3), method)(5, split="val")
    for other in (other_index, other_seed, val):
        assert not np.array_equal(a["moving"], other["moving"])
        assert not np.array_equal(a["moving_labels"], other["moving_labels"])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pairs_keep_labels_and_are_deformed(shape, seed):
    pair = SyntheticPairs(shape, num_labels=10, seed=seed).pair(0)
    moving, fixed = pair["moving_labels"], pair["fixed_labels"]
    assert set(np.unique(moving)) == set(np.unique(fixed)) == set(range(11))
    assert np.any(moving != fixed)  # a deformation happened
    dice = _dice(moving, fixed, range(1, 11))
    # Chance level for 10 structures is about 0.1; identical maps would give 1.
    assert 0.3 < dice < 0.95


def test_every_structure_has_a_fair_share():
    labels = SyntheticPairs((32, 32, 32), num_labels=12, seed=0).pair(0)["fixed_labels"]
    shares = np.bincount(labels.ravel(), minlength=13)[1:] / np.count_nonzero(labels)
    assert shares.min() > 0.25 / 12


@pytest.mark.parametrize("shape", SHAPES)
def test_images_depict_their_labels(shape):
    """Per-label mean intensity explains most of the image variance (R^2), in both images."""
    pair = SyntheticPairs(shape, num_labels=8, seed=0, noise=0.02).pair(1)
    for image, labels in (
        (pair["moving"], pair["moving_labels"]),
        (pair["fixed"], pair["fixed_labels"]),
    ):
        means = np.bincount(labels.ravel(), image.ravel()) / np.bincount(labels.ravel())
        residual = image - means[labels]
        assert 1 - residual.var() / image.var() > 0.7
        # And not the other image's labels: those explain much less.
    other = pair["fixed_labels"]
    means = np.bincount(other.ravel(), pair["moving"].ravel()) / np.bincount(other.ravel())
    own = pair["moving_labels"]
    own_means = np.bincount(own.ravel(), pair["moving"].ravel()) / np.bincount(own.ravel())
    assert (pair["moving"] - means[other]).var() > 1.5 * (pair["moving"] - own_means[own]).var()


def test_atlas_pair_fixes_the_atlas():
    pairs = SyntheticPairs((24, 28, 20), num_labels=6, seed=1)
    atlas = pairs.atlas()
    for index in (0, 1):
        pair = pairs.atlas_pair(index)
        np.testing.assert_array_equal(pair["fixed"], atlas["image"])
        np.testing.assert_array_equal(pair["fixed_labels"], atlas["labels"])
        assert np.any(pair["moving_labels"] != atlas["labels"])
        assert _dice(pair["moving_labels"], atlas["labels"], range(1, 7)) > 0.3
    pair["fixed"][:] = -1  # outputs are copies: the cached atlas is unchanged
    np.testing.assert_array_equal(pairs.atlas()["image"], atlas["image"])


def test_smooth_noise_statistics():
    field = smooth_noise(np.random.default_rng(0), (40, 40, 40), 3, scale=8.0)
    assert field.shape == (3, 40, 40, 40) and field.dtype == np.float32
    np.testing.assert_allclose(field.std(), 1.0, rtol=1e-4)
    # Smooth: neighbours are strongly correlated, unlike white noise (correlation 0).
    correlation = np.corrcoef(field[:, 1:].ravel(), field[:, :-1].ravel())[0, 1]
    assert correlation > 0.95


def test_bounded_size_and_errors():
    pairs = SyntheticPairs((16, 16), size=3, num_val=2)
    pairs.pair(2)
    pairs.pair(1, split="val")
    with pytest.raises(IndexError, match="index=3"):
        pairs.pair(3)
    with pytest.raises(IndexError, match="split 'val'"):
        pairs.atlas_pair(2, split="val")
    with pytest.raises(ValueError, match="split"):
        pairs.pair(0, split="test")
    with pytest.raises(ValueError, match=r"shape=\(16,\)"):
        SyntheticPairs((16,))
    with pytest.raises(ValueError, match="num_labels"):
        SyntheticPairs((16, 16), num_labels=0)
    with pytest.raises(ValueError, match="deformation"):
        SyntheticPairs((16, 16), deformation=-1.0)
