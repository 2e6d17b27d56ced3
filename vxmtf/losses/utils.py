"""Input handling shared by the losses: float promotion and static shape checks."""

import tensorflow as tf


def loss_float(*tensors):
    """Casts tensors to the dtype loss maths runs in: float64 if any is float64, else float32.

    float16 / bfloat16 (mixed precision) and integer inputs are promoted to float32, so loss
    reductions never run in half precision.
    """
    tensors = [tf.convert_to_tensor(t) for t in tensors]
    dtype = tf.float64 if any(t.dtype == tf.float64 for t in tensors) else tf.float32
    return [tf.cast(t, dtype) for t in tensors]


def check_spatial_rank(x, name):
    """Raises ValueError unless ``x`` is ``(batch, *spatial, channels)``, 2 or 3 spatial axes."""
    if x.shape.rank not in (4, 5):
        raise ValueError(
            f"Expected `{name}` of shape (batch, *spatial, channels) with 2 or 3 spatial axes "
            f"(rank 4 or 5). Received: {name}.shape={x.shape}"
        )


def check_same_shape(y_true, y_pred):
    """Raises ValueError if the static shapes of ``y_true`` and ``y_pred`` cannot match."""
    if not y_true.shape.is_compatible_with(y_pred.shape):
        raise ValueError(
            "Expected `y_true` and `y_pred` of the same shape. "
            f"Received: y_true.shape={y_true.shape}, y_pred.shape={y_pred.shape}"
        )
