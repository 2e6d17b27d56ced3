"""`NCC`: local (windowed) normalised cross-correlation, the VoxelMorph image similarity loss."""

import math

import keras
import tensorflow as tf

from vxmtf.checks import check_positive
from vxmtf.losses.utils import check_same_shape, check_spatial_rank, loss_float
from vxmtf.ops.filters import box_sum, normalize_window

__all__ = ["NCC", "local_ncc", "mean_local_ncc"]


def local_ncc(y_true, y_pred, window=9, eps=1e-5):
    """Squared local normalised cross-correlation at every voxel and channel.

    With ``I = y_true``, ``J = y_pred`` and sums ``S`` over the ``n = prod(window)`` voxels of
    the window centred on voxel ``p`` (zero padding at the borders: border windows count the
    padding zeros and ``n`` stays constant)::

        cross(p) = S[I J] - S[I] S[J] / n
        var_I(p) = S[I^2] - S[I]^2 / n          (likewise var_J)
        cc(p)    = cross(p)^2 / (var_I(p) var_J(p) + eps)

    ``cc`` lies in ``[0, 1]`` up to ``eps``: about 1 where ``J`` is locally ``a I + b`` with
    ``a != 0`` (at the borders, where the window holds padding zeros, only ``a I``), and 0
    where either image is locally constant (for instance all-zero), which keeps values and
    gradients finite. Against float rounding the variances are clamped at 0 and ``cross^2`` at
    ``var_I var_J`` (exact in real arithmetic by Cauchy-Schwarz, so the formula is unchanged).
    The five quantities ``I, J, I^2, J^2, IJ`` are stacked along channels and summed by one
    separable `box_sum` call. Intensities should be normalised (for example to ``[0, 1]``):
    with a large intensity offset the sums become differences of large numbers.

    Reference: Balakrishnan et al., "VoxelMorph: a learning framework for deformable medical
    image registration", IEEE TMI 2019 (and CVPR 2018), definition of CC.

    Args:
        y_true: fixed image, ``(batch, *spatial, channels)``, 2 or 3 spatial axes.
        y_pred: moved image, same shape.
        window: positive odd int, or a tuple of one per spatial axis.
        eps: positive constant added to the denominator.

    Returns:
        ``(batch, *spatial, channels)`` in float32 (float64 for float64 inputs; half-precision
        inputs are cast to float32 first).

    Raises:
        ValueError: bad ``window`` or ``eps``, rank other than 4 or 5, or static shapes of
            ``y_true`` and ``y_pred`` that differ.
    """
    eps = _check_eps(eps)
    y_true, y_pred = loss_float(y_true, y_pred)
    check_spatial_rank(y_pred, "y_pred")
    check_same_shape(y_true, y_pred)
    windows = normalize_window(window, y_pred.shape.rank - 2)
    count = float(math.prod(windows))

    # (batch, *spatial, 5 * channels): the five quantities whose local sums NCC needs.
    stacked = tf.concat([y_true, y_pred, y_true * y_true, y_pred * y_pred, y_true * y_pred], -1)
    sums = box_sum(stacked, windows)
    # Five tensors of (batch, *spatial, channels).
    sum_i, sum_j, sum_ii, sum_jj, sum_ij = tf.split(sums, 5, axis=-1)

    cross = sum_ij - sum_i * sum_j / count
    var_i = tf.maximum(sum_ii - sum_i * sum_i / count, 0.0)
    var_j = tf.maximum(sum_jj - sum_j * sum_j / count, 0.0)
    var_product = var_i * var_j
    # Cauchy-Schwarz gives cross^2 <= var_i var_j; enforce it against rounding, so that a
    # locally constant image (var ~ 0 but cross != 0 from rounding) gives cc ~ 0, not > 1.
    return tf.minimum(cross * cross, var_product) / (var_product + eps)


def mean_local_ncc(y_true, y_pred, window=9, eps=1e-5):
    """Mean of `local_ncc` over voxels and channels: a similarity per sample, ``(batch,)``.

    Higher is more similar (at most 1); see `local_ncc` for the formula and arguments.
    """
    cc = local_ncc(y_true, y_pred, window=window, eps=eps)
    return tf.reduce_mean(cc, axis=list(range(1, cc.shape.rank)))


@keras.saving.register_keras_serializable(package="vxmtf")
class NCC(keras.losses.Loss):
    """Negative mean local normalised cross-correlation (lower is better, best is about -1).

    ``loss(y_true, y_pred) = -mean_{p, c} cc(p, c)`` per sample, where ``cc`` is the squared
    local correlation of `local_ncc` over a ``window**ndim`` neighbourhood (VoxelMorph, IEEE TMI
    2019). Multi-channel images average over channels. Computed in float32 (float64 for
    float64 inputs), including under a ``mixed_float16`` policy.

    Args:
        window: positive odd int, or a tuple of one per spatial axis (default 9, as VoxelMorph).
        eps: positive constant added to the denominator (default 1e-5).
        name: name of the loss.
        **kwargs: other `keras.losses.Loss` arguments (``reduction``, ``dtype``).

    Call arguments:
        y_true: fixed image, ``(batch, *spatial, channels)``.
        y_pred: moved image, same shape.

    Returns the per-sample loss ``(batch,)`` before Keras's reduction.

    Raises:
        ValueError: ``window`` not a positive odd int (or tuple of them), ``eps`` not positive;
            at call time, inputs of rank other than 4 or 5 or of different static shapes.
    """

    def __init__(self, window=9, eps=1e-5, name="ncc", **kwargs):
        super().__init__(name=name, **kwargs)
        windows = normalize_window(window, None)
        self.window = windows if isinstance(window, (list, tuple)) else windows[0]
        self.eps = _check_eps(eps)

    def call(self, y_true, y_pred):
        return -mean_local_ncc(y_true, y_pred, window=self.window, eps=self.eps)

    def get_config(self):
        config = super().get_config()
        config.update({"window": self.window, "eps": self.eps})
        return config


def _check_eps(eps):
    return check_positive("eps", eps, hint="it keeps cc finite on constant windows")
