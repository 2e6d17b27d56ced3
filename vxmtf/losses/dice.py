"""`Dice`: soft Dice loss on one-hot or probabilistic label maps."""

import keras
import tensorflow as tf

from vxmtf.checks import check_positive
from vxmtf.losses.utils import check_same_shape, check_spatial_rank, loss_float

__all__ = ["Dice", "soft_dice"]


def soft_dice(y_true, y_pred, eps=1e-5, include_background=False):
    """Soft Dice overlap per sample and label.

    For label ``k``, with sums over every voxel ``p``::

        dice_k = (2 sum_p t_k(p) p_k(p) + eps) / (sum_p t_k(p) + sum_p p_k(p) + eps)

    ``eps`` in the numerator too makes a label absent from both maps count as a perfect match
    (``dice_k = 1``, no gradient) instead of a silent 0; identical maps give exactly 1 and
    disjoint ones ``eps / (sum t + sum p + eps)``, about 0.

    Reference: Milletari et al., "V-Net", 3DV 2016 (soft Dice); VoxelMorph (Balakrishnan et
    al., IEEE TMI 2019) uses it on anatomical segmentations in its semi-supervised variant.

    Args:
        y_true: one-hot (or probabilistic) labels, ``(batch, *spatial, K)``.
        y_pred: predicted (for instance warped) label probabilities, same shape.
        eps: positive smoothing constant.
        include_background: keep channel 0; by default it is dropped (structures only).

    Returns:
        ``(batch, K)`` (or ``(batch, K - 1)`` without background) in float32 (float64 for
        float64 inputs).

    Raises:
        ValueError: ``eps`` not positive, rank other than 4 or 5, static shapes that differ, or
            a single channel with ``include_background=False`` (no label left).
    """
    eps = check_positive("eps", eps)
    y_true, y_pred = loss_float(y_true, y_pred)
    check_spatial_rank(y_pred, "y_pred")
    check_same_shape(y_true, y_pred)
    if not include_background:
        if y_pred.shape[-1] == 1:
            raise ValueError(
                "Without the background channel there is no label left; pass one-hot maps "
                "with K >= 2 channels or include_background=True. "
                f"Received: y_pred.shape={y_pred.shape}"
            )
        # (batch, *spatial, K - 1): drop channel 0, the background.
        y_true, y_pred = y_true[..., 1:], y_pred[..., 1:]
    spatial_axes = list(range(1, y_pred.shape.rank - 1))
    # (batch, K): sums over voxels.
    overlap = tf.reduce_sum(y_true * y_pred, axis=spatial_axes)
    total = tf.reduce_sum(y_true, axis=spatial_axes) + tf.reduce_sum(y_pred, axis=spatial_axes)
    return (2.0 * overlap + eps) / (total + eps)


@keras.saving.register_keras_serializable(package="vxmtf")
class Dice(keras.losses.Loss):
    """Soft Dice loss, ``1 - mean_k dice_k`` per sample (0 for a perfect overlap, about 1 for none).

    ``dice_k`` is the smoothed soft Dice of label ``k`` from `soft_dice`; the mean runs over the
    structures (channels ``1..K-1``) unless ``include_background=True``.

    Args:
        eps: positive smoothing constant (default 1e-5).
        include_background: include channel 0 in the mean (default False, as VoxelMorph's
            semi-supervised training on anatomical structures).
        name: name of the loss.
        **kwargs: other `keras.losses.Loss` arguments (``reduction``, ``dtype``).

    Call arguments:
        y_true: one-hot labels ``(batch, *spatial, K)``.
        y_pred: label probabilities, same shape.

    Returns the per-sample loss ``(batch,)`` before Keras's reduction.

    Raises:
        ValueError: ``eps`` not positive; at call time, see `soft_dice`.
    """

    def __init__(self, eps=1e-5, include_background=False, name="dice", **kwargs):
        super().__init__(name=name, **kwargs)
        self.eps = check_positive("eps", eps)
        self.include_background = bool(include_background)

    def call(self, y_true, y_pred):
        dice = soft_dice(y_true, y_pred, eps=self.eps, include_background=self.include_background)
        return 1.0 - tf.reduce_mean(dice, axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update({"eps": self.eps, "include_background": self.include_background})
        return config
