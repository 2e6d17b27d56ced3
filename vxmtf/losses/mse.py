"""`MSE`: mean squared intensity difference per sample."""

import keras
import tensorflow as tf

from vxmtf.losses.utils import check_same_shape, loss_float

__all__ = ["MSE", "mean_squared_error"]


def mean_squared_error(y_true, y_pred):
    """``mean_{p, c} (y_true - y_pred)^2`` over every non-batch axis: ``(batch,)``.

    Args:
        y_true: ``(batch, ...)``, for images ``(batch, *spatial, channels)``.
        y_pred: same shape.

    Returns:
        ``(batch,)`` in float32 (float64 for float64 inputs).

    Raises:
        ValueError: if the static shapes of ``y_true`` and ``y_pred`` differ.
    """
    y_true, y_pred = loss_float(y_true, y_pred)
    check_same_shape(y_true, y_pred)
    squared = tf.square(y_true - y_pred)
    return tf.reduce_mean(squared, axis=list(range(1, squared.shape.rank)))


@keras.saving.register_keras_serializable(package="vxmtf")
class MSE(keras.losses.Loss):
    """Mean squared error per sample, ``mean_{p, c} (y_true - y_pred)^2``, in float32.

    Unlike ``keras.losses.MeanSquaredError`` (which averages the last axis only) this averages
    every non-batch axis, so it returns one value per sample, ``(batch,)``. VoxelMorph uses it
    as the image similarity for images of matching contrast (TMI 2019).

    Args:
        name: name of the loss.
        **kwargs: other `keras.losses.Loss` arguments (``reduction``, ``dtype``).
    """

    def __init__(self, name="mse", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        return mean_squared_error(y_true, y_pred)
