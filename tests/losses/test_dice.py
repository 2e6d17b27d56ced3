"""Tests for vxmtf.losses.dice: hand-computed overlaps, NumPy soft Dice, edge cases."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from vxmtf.losses import MSE, Dice, soft_dice

EPS = 1e-5

# Two 4x4 label maps with labels 0 (background), 1 and 2.
TRUE_LABELS = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]])
PRED_LABELS = np.array([[0, 1, 1, 1], [0, 0, 1, 1], [2, 2, 2, 0], [1, 2, 2, 2]])


def _one_hot(labels, num_labels):
    return np.eye(num_labels, dtype=np.float32)[labels][None]  # (1, *spatial, K)


def test_hand_computed_partial_overlap():
    # Counted by hand from the maps above (|T|, |P|, |T and P|):
    #   label 0: 4, 4, 3 -> (6 + eps) / (8 + eps)
    #   label 1: 4, 6, 4 -> (8 + eps) / (10 + eps)
    #   label 2: 8, 6, 6 -> (12 + eps) / (14 + eps)
    dice0, dice1, dice2 = ((2 * o + EPS) / (s + EPS) for o, s in ((3, 8), (4, 10), (6, 14)))
    y_true, y_pred = _one_hot(TRUE_LABELS, 3), _one_hot(PRED_LABELS, 3)
    np.testing.assert_allclose(soft_dice(y_true, y_pred).numpy(), [[dice1, dice2]], rtol=1e-6)
    np.testing.assert_allclose(
        soft_dice(y_true, y_pred, include_background=True).numpy(),
        [[dice0, dice1, dice2]],
        rtol=1e-6,
    )
    np.testing.assert_allclose(Dice()(y_true, y_pred).numpy(), 1 - (dice1 + dice2) / 2, 1e-6)
    np.testing.assert_allclose(
        Dice(include_background=True)(y_true, y_pred).numpy(),
        1 - (dice0 + dice1 + dice2) / 3,
        rtol=1e-6,
    )


@pytest.mark.parametrize("include_background", [False, True])
@pytest.mark.parametrize("shape", [(2, 6, 7, 4), (2, 5, 4, 6, 3)])
def test_identical_maps_give_zero(shape, include_background):
    labels = np.random.default_rng(0).integers(0, shape[-1], size=shape[:-1])
    y = np.eye(shape[-1], dtype=np.float32)[labels]
    loss = Dice(include_background=include_background, reduction=None)(y, y)
    assert loss.shape == (shape[0],) and loss.dtype == tf.float32
    np.testing.assert_allclose(loss.numpy(), 0.0, atol=1e-7)


@pytest.mark.parametrize("ndim", [2, 3])
def test_disjoint_maps_give_one(ndim):
    spatial = (6, 8) if ndim == 2 else (4, 6, 8)
    left = np.zeros(spatial, int)
    left[..., :4] = 1
    y_true, y_pred = _one_hot(left, 2), _one_hot(1 - left, 2)
    np.testing.assert_allclose(Dice()(y_true, y_pred).numpy(), 1.0, atol=1e-6)
    np.testing.assert_allclose(
        Dice(include_background=True)(y_true, y_pred).numpy(), 1.0, atol=1e-6
    )


def test_label_absent_from_both_counts_as_a_match():
    # Label 2 appears in neither map: it scores 1, not a silent 0.
    y_true, y_pred = _one_hot(TRUE_LABELS % 2, 3), _one_hot(TRUE_LABELS % 2, 3)
    np.testing.assert_allclose(soft_dice(y_true, y_pred).numpy(), [[1.0, 1.0]])


def test_probabilistic_maps_match_numpy():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 5, 6, 4, 4))
    y_pred = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    y_true = np.eye(4)[rng.integers(0, 4, size=(3, 5, 6, 4))]
    axes = (1, 2, 3)
    expected = (2 * (y_true * y_pred).sum(axes) + EPS) / (y_true.sum(axes) + y_pred.sum(axes) + EPS)
    np.testing.assert_allclose(soft_dice(y_true, y_pred, include_background=True), expected, 1e-12)
    loss = Dice(reduction=None)(y_true.astype(np.float16), y_pred.astype(np.float16))
    assert loss.dtype == tf.float32
    np.testing.assert_allclose(loss.numpy(), 1 - expected[:, 1:].mean(-1), rtol=2e-3)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="Received: eps="):
        Dice(eps=0.0)
    with pytest.raises(ValueError, match="include_background=True. Received: y_pred.shape="):
        Dice()(tf.zeros((1, 4, 4, 1)), tf.zeros((1, 4, 4, 1)))
    with pytest.raises(
        ValueError, match=r"y_true.shape=\(1, 4, 4, 3\), y_pred.shape=\(1, 4, 4, 2\)"
    ):
        Dice()(tf.zeros((1, 4, 4, 3)), tf.zeros((1, 4, 4, 2)))


def test_serialization_round_trip():
    loss = Dice(eps=1e-3, include_background=True, name="overlap")
    config = loss.get_config()
    assert config["eps"] == 1e-3 and config["include_background"] is True
    serialized = keras.saving.serialize_keras_object(loss)
    assert serialized["registered_name"] == "vxmtf>Dice"
    y_true, y_pred = _one_hot(TRUE_LABELS, 3), _one_hot(PRED_LABELS, 3)
    for restored in (keras.losses.deserialize(serialized), keras.losses.get(serialized)):
        assert isinstance(restored, Dice) and restored.get_config() == config
        np.testing.assert_allclose(restored(y_true, y_pred).numpy(), loss(y_true, y_pred).numpy())


def test_dict_output_model_compile():
    image = keras.Input((6, 6, 1), name="image")
    moved = keras.layers.Conv2D(1, 3, padding="same", name="moved")(image)
    labels = keras.layers.Conv2D(3, 1, activation="softmax", name="labels")(image)
    model = keras.Model(image, {"moved": moved, "labels": labels})
    model.compile(optimizer="sgd", loss={"moved": MSE(), "labels": Dice()})
    rng = np.random.default_rng(2)
    x = rng.uniform(size=(2, 6, 6, 1)).astype(np.float32)
    y = {"moved": x, "labels": np.eye(3, dtype=np.float32)[rng.integers(0, 3, size=(2, 6, 6))]}
    model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    out = model.predict(x, verbose=0)
    expected = np.mean((out["moved"] - x) ** 2) + float(Dice()(y["labels"], out["labels"]))
    total = model.evaluate(x, y, batch_size=2, verbose=0, return_dict=True)["loss"]
    np.testing.assert_allclose(total, expected, rtol=1e-5)
