"""Tests for vxmtf.data.preprocess against NumPy oracles."""

import itertools

import numpy as np
import pytest

from vxmtf.data import preprocess as P


def _rng(seed=0):
    return np.random.default_rng(seed)


# Normalisation


def test_minmax_matches_numpy():
    x = _rng().normal(3.0, 2.0, (5, 6, 7))
    expected = (x - x.min()) / (x.max() - x.min())
    out = P.normalize_intensity(x, "minmax")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_percentile_matches_numpy():
    x = _rng(1).normal(0.0, 1.0, (9, 10, 11))
    x[0, 0, 0] = 1e6  # an outlier that min-max would let dominate
    low, high = np.percentile(x, [2.0, 98.0])
    expected = np.clip((x - low) / (high - low), 0, 1)
    out = P.normalize_intensity(x, "percentile", (2.0, 98.0))
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert out.min() == 0.0 and out.max() == 1.0


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_preprocess_image_refuses_non_finite_voxels(bad):
    # One infinite voxel would otherwise be the min-max maximum and scale the rest to 0.
    x = _rng().normal(size=(8, 8, 8)).astype(np.float32)
    x[3, 4, 5] = bad
    config = P.PreprocessConfig(multiple=4)
    with pytest.raises(ValueError, match=r"^`fixed`: 1 of 512 voxels are not finite"):
        P.preprocess_image(x, config, name="`fixed`")
    with pytest.raises(ValueError, match=r"^image: 1 of 512 voxels are not finite"):
        P.preprocess_image(x, config)


def test_normalisation_edge_cases():
    np.testing.assert_array_equal(P.normalize_intensity(np.full((3, 3), 5.0)), 0.0)
    x = np.array([[np.nan, 2.0], [4.0, 0.0]])
    np.testing.assert_allclose(P.normalize_intensity(x), [[0.0, 0.5], [1.0, 0.0]])
    out = P.normalize_intensity(np.array([1, 7], dtype=np.int16), None)
    assert out.dtype == np.float32 and out.tolist() == [1.0, 7.0]
    with pytest.raises(ValueError, match="method"):
        P.normalize_intensity(x, "zscore")


# Downsampling


def _block_mean_oracle(x, k):
    """Reshape-mean on the floor-cropped array, in float64."""
    n = [s // k for s in x.shape]
    x = x[tuple(slice(0, c * k) for c in n)].astype(np.float64)
    split = x.reshape([v for c in n for v in (c, k)])
    return split.mean(axis=tuple(range(1, 2 * len(n), 2)))


@pytest.mark.parametrize("shape", [(8, 6, 10), (9, 7, 11), (10, 13)])
@pytest.mark.parametrize("factor", [2, 3])
def test_block_mean_matches_reshape_oracle(shape, factor):
    x = _rng(2).random(shape).astype(np.float32)
    out = P.downsample_image(x, factor)
    assert out.dtype == np.float32
    assert out.shape == tuple(s // factor for s in shape)
    np.testing.assert_allclose(out, _block_mean_oracle(x, factor), atol=1e-6)


def test_block_mean_brute_force_one_voxel():
    x = _rng(3).random((6, 6, 6))
    out = P.downsample_image(x, 2)
    np.testing.assert_allclose(out[1, 2, 0], x[2:4, 4:6, 0:2].mean(), atol=1e-6)


def test_constant_blocks_downsample_exactly():
    coarse = _rng(4).random((3, 4, 5)).astype(np.float32)
    fine = np.repeat(np.repeat(np.repeat(coarse, 4, 0), 4, 1), 4, 2)
    np.testing.assert_array_equal(P.downsample_image(fine, 4), coarse)
    labels = _rng(5).integers(0, 9, (3, 4, 5))
    fine_labels = np.repeat(np.repeat(np.repeat(labels, 4, 0), 4, 1), 4, 2)
    for method in ("majority", "nearest"):
        np.testing.assert_array_equal(P.downsample_labels(fine_labels, 4, method), labels)


def test_block_mean_with_channel_axis():
    x = _rng(6).random((8, 8, 8, 2))
    out = P.downsample_image(x, 2, ndim=3)
    assert out.shape == (4, 4, 4, 2)
    for c in range(2):
        np.testing.assert_allclose(out[..., c], _block_mean_oracle(x[..., c], 2), atol=1e-6)


@pytest.mark.parametrize("factor", [2, 3])
def test_nearest_labels_take_the_block_centre_voxel(factor):
    x = _rng(7).integers(0, 50, (7, 8, 9))
    out = P.downsample_labels(x, factor, "nearest")
    o = (factor - 1) // 2
    for i, j, k in itertools.product(*(range(s) for s in out.shape)):
        assert out[i, j, k] == x[factor * i + o, factor * j + o, factor * k + o]


def _majority_oracle(x, k):
    n = [s // k for s in x.shape]
    out = np.zeros(n, dtype=x.dtype)
    for index in itertools.product(*(range(c) for c in n)):
        block = x[tuple(slice(k * i, k * i + k) for i in index)]
        values, counts = np.unique(block, return_counts=True)
        out[index] = values[np.argmax(counts)]  # first maximum: the smallest value
    return out


@pytest.mark.parametrize("values", [(0, 3, 200), (-5, 0, 7, 100000), (0, 1)])
@pytest.mark.parametrize("shape", [(8, 8, 8), (9, 10), (5, 7, 6)])
def test_majority_labels_match_brute_force(values, shape):
    x = _rng(8).choice(np.array(values), shape)
    np.testing.assert_array_equal(P.downsample_labels(x, 2), _majority_oracle(x, 2))


def test_majority_tie_goes_to_smaller_value():
    x = np.array([[5, 5], [2, 2]])
    assert P.downsample_labels(x, 2).tolist() == [[2]]


def test_downsample_errors():
    with pytest.raises(ValueError, match="too small"):
        P.downsample_image(np.zeros((3, 8)), 4)
    with pytest.raises(ValueError, match="method"):
        P.downsample_labels(np.zeros((4, 4), int), 2, "mode")


# Padding


@pytest.mark.parametrize("shape", [(5, 16, 17), (1, 2, 3), (20, 33)])
def test_pad_to_multiple_is_centred_and_undone(shape):
    x = _rng(9).random(shape)
    out, padding = P.pad_to_multiple(x, 8)
    assert all(s % 8 == 0 and s >= n for s, n in zip(out.shape, shape, strict=True))
    width = [((t - n) // 2, t - n - (t - n) // 2) for n, t in zip(shape, out.shape, strict=True)]
    np.testing.assert_array_equal(out, np.pad(x, width))
    assert padding.padded_shape == out.shape and padding.original_shape == shape
    np.testing.assert_array_equal(padding.undo(out), x)


def test_crop_to_multiple_and_undo():
    x = _rng(10).random((21, 35, 16))
    out, padding = P.pad_to_multiple(x, 8, resize="crop")
    assert out.shape == (16, 32, 16)
    # Centred crop: (21 - 16) // 2 = 2 removed before, 3 after; (35 - 32) // 2 = 1 before.
    np.testing.assert_array_equal(out, x[2:18, 1:33, :])
    back = padding.undo(out)
    assert back.shape == x.shape
    np.testing.assert_array_equal(back[2:18, 1:33], x[2:18, 1:33])
    assert back[:2].sum() == 0 and back[18:].sum() == 0 and back[:, 33:].sum() == 0


def test_padding_with_channels_and_batch_axes():
    x = _rng(11).random((5, 6, 7))
    _, padding = P.pad_to_multiple(x, 4)
    channels = np.stack([x, 2 * x], axis=-1)  # (5, 6, 7, 2)
    padded = padding.apply(channels)
    assert padded.shape == (8, 8, 8, 2)
    np.testing.assert_array_equal(padding.undo(padded), channels)
    batch = padded[None]  # (1, 8, 8, 8, 2): spatial axes start at 1
    np.testing.assert_array_equal(padding.undo(batch, axis=1), channels[None])
    with pytest.raises(ValueError, match=r"Expected spatial shape \(8, 8, 8\)"):
        padding.undo(channels)


def test_pad_value_and_partial_axes():
    out, padding = P.pad_to_multiple(np.ones((3, 5, 2)), 4, ndim=2, value=-1)
    assert out.shape == (4, 8, 2)
    assert out[0, 0, 0] == -1 and padding.before == (0, 1) and padding.after == (1, 2)


# Labels


def test_remap_and_unmap_round_trip():
    values = [0, 21, 22, 181, 182]
    x = _rng(12).choice(values, (6, 7, 8)).astype(np.uint8)
    indices = P.remap_labels(x, values)
    assert indices.dtype == np.int32
    lookup = {v: k for k, v in enumerate(values)}
    np.testing.assert_array_equal(indices, np.vectorize(lookup.get)(x))
    np.testing.assert_array_equal(P.unmap_labels(indices, values), x)


def test_remap_unknown_values():
    x = np.array([[0, 5], [9, -3]])
    np.testing.assert_array_equal(P.remap_labels(x, [0, 5]), [[0, 1], [0, 0]])
    with pytest.raises(ValueError, match=r"unknown_values=\[-3, 9\]"):
        P.remap_labels(x, [0, 5], unknown="error")


def test_label_values_checked():
    with pytest.raises(ValueError, match="starting with 0"):
        P.remap_labels(np.zeros(3, int), [1, 2])
    with pytest.raises(ValueError, match="sorted"):
        P.remap_labels(np.zeros(3, int), [0, 5, 2])
    with pytest.raises(TypeError, match="integer"):
        P.remap_labels(np.zeros(3, int), [0.0, 1.5])
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        P.unmap_labels(np.array([3]), [0, 4, 5])


# Config and the whole chain


def test_config_checks_and_output_shape():
    config = P.PreprocessConfig(downsample=2, multiple=16)
    assert config.output_shape((160, 192, 160)) == (80, 96, 80)
    assert P.PreprocessConfig(downsample=4).output_shape((160, 192, 160)) == (48, 48, 48)
    assert P.PreprocessConfig(downsample=4, resize="crop").output_shape((160, 192, 160)) == (
        32,
        48,
        32,
    )
    assert P.PreprocessConfig(percentiles=[1, 99]).percentiles == (1.0, 99.0)
    for bad in (
        {"normalize": "z"},
        {"percentiles": (99, 1)},
        {"downsample": 0},
        {"multiple": 2.5},
        {"resize": "reflect"},
        {"label_downsample": "mean"},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            P.PreprocessConfig(**bad)


def test_preprocess_image_and_labels_stay_aligned():
    coarse = _rng(13).choice([0, 3, 8], (5, 6, 7))
    labels = np.repeat(np.repeat(np.repeat(coarse, 2, 0), 2, 1), 2, 2)  # constant 2x2x2 blocks
    image = labels * 10.0 + 4.0
    config = P.PreprocessConfig(downsample=2, multiple=8)
    out_image, padding = P.preprocess_image(image, config)
    out_labels, label_padding = P.preprocess_labels(labels, config, [0, 3, 8])
    assert out_image.shape == out_labels.shape == (8, 8, 8) == config.output_shape(image.shape)
    assert padding == label_padding
    # minmax maps 4 -> 0, 84 -> 1; the label indices 0, 1, 2 stand for 0, 3, 8.
    expected = np.array([0.0, 30.0, 80.0])[padding.undo(out_labels)] / 80.0
    np.testing.assert_allclose(padding.undo(out_image), expected, atol=1e-6)
