"""`Grad`: smoothness penalty on a displacement field from its forward differences."""

import keras
import tensorflow as tf

from vxmtf.checks import check_choice, check_positive
from vxmtf.losses.utils import check_spatial_rank, loss_float

__all__ = ["PENALTIES", "Grad", "grad_penalty"]

PENALTIES = ("l1", "l2")


def grad_penalty(field, penalty="l1"):
    """Mean size of the forward differences of a field, averaged over its spatial axes.

    For each spatial axis ``i``, ``d_i = u[..., x + e_i, :] - u[..., x, :]`` (forward
    differences, so that axis loses one voxel); ``m_i`` is the mean of ``|d_i|`` (``"l1"``) or
    ``d_i^2`` (``"l2"``) over voxels and components; the result is ``mean_i m_i``. A constant
    field gives 0; a linear field ``u(x) = A x + b`` gives ``mean_i mean_k |A[k, i]|`` (l1) or
    ``mean_i mean_k A[k, i]^2`` (l2).

    Reference: Balakrishnan et al., IEEE TMI 2019, the smoothness term on the spatial gradients
    of the displacement.

    Args:
        field: ``(batch, *spatial, components)`` with 2 or 3 spatial axes, normally a
            displacement with ``components == ndim``; every spatial size must be at least 2.
        penalty: ``"l1"`` or ``"l2"``.

    Returns:
        ``(batch,)`` in float32 (float64 for float64 inputs).

    Raises:
        ValueError: unknown ``penalty``, rank other than 4 or 5, or a spatial size below 2.
    """
    check_choice("penalty", penalty, PENALTIES)
    (field,) = loss_float(field)
    check_spatial_rank(field, "field")
    rank = field.shape.rank
    for axis in range(1, rank - 1):
        size = field.shape[axis]
        if size is not None and size < 2:
            raise ValueError(
                "Every spatial axis of the field needs at least 2 voxels for a forward "
                f"difference. Received: field.shape={field.shape}"
            )
    per_axis = []
    for axis in range(1, rank - 1):
        # `tf.slice`, not `field[1:]` indexing: its gradient is a `tf.pad`, whereas the gradient
        # of a strided slice (`StridedSliceGrad`) is several times slower on CPU for 5-D fields
        # (0.29 s against 0.05 s at 80x96x112, forward + backward; the values are identical).
        length = field.shape[axis]
        extent = [-1] * rank  # everything, except one voxel less along `axis`
        extent[axis] = length - 1 if length is not None else tf.shape(field)[axis] - 1
        ahead = tf.slice(field, [int(a == axis) for a in range(rank)], extent)
        behind = tf.slice(field, [0] * rank, extent)
        diff = ahead - behind  # one voxel shorter along `axis`
        size = tf.abs(diff) if penalty == "l1" else tf.square(diff)
        per_axis.append(tf.reduce_mean(size, axis=list(range(1, rank))))
    return tf.add_n(per_axis) / len(per_axis)


@keras.saving.register_keras_serializable(package="vxmtf")
class Grad(keras.losses.Loss):
    """Smoothness loss on a displacement field (VoxelMorph's "Grad"); ``y_true`` is ignored.

    ``loss = loss_mult * mean_i mean_{x, k} pen(u_k(x + e_i) - u_k(x))`` per sample, with
    ``pen = |.|`` (``"l1"``) or ``(.)^2`` (``"l2"``); see `grad_penalty`. VoxelMorph sets
    ``loss_mult`` to the integration downsampling factor when the field is predicted at a lower
    resolution than the images.

    Args:
        penalty: ``"l1"`` (default) or ``"l2"``.
        loss_mult: optional positive factor applied to the penalty (None: 1).
        name: name of the loss.
        **kwargs: other `keras.losses.Loss` arguments (``reduction``, ``dtype``).

    Call arguments:
        y_true: ignored (any tensor, for example zeros of shape ``(batch, 1)``).
        y_pred: field ``(batch, *spatial, ndim)``.

    Returns the per-sample loss ``(batch,)`` before Keras's reduction.

    Raises:
        ValueError: unknown ``penalty`` or a ``loss_mult`` that is not a positive number; at
            call time, a field of rank other than 4 or 5 or with a spatial size below 2.
    """

    def __init__(self, penalty="l1", loss_mult=None, name="grad", **kwargs):
        super().__init__(name=name, **kwargs)
        check_choice("penalty", penalty, PENALTIES)
        self.penalty = penalty
        self.loss_mult = check_positive("loss_mult", loss_mult, optional=True)

    def call(self, y_true, y_pred):
        del y_true  # the penalty depends on the predicted field only
        value = grad_penalty(y_pred, penalty=self.penalty)
        if self.loss_mult is not None:
            value = value * self.loss_mult
        return value

    def get_config(self):
        config = super().get_config()
        config.update({"penalty": self.penalty, "loss_mult": self.loss_mult})
        return config
