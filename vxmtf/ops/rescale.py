"""Resizing of displacement fields between grids."""

import tensorflow as tf


def rescale_field(field, factor=None, out_shape=None):
    """Resize a displacement field to another grid and scale its vectors to that grid's voxels.

    Voxel-centre ("half-pixel") convention, the one `tf.image.resize` uses by default: output
    voxel `y` along an axis of input size `n` and output size `m` samples the input at
    `x = (y + 0.5) * n / m - 0.5` (N-linear, border clamped), and component k is multiplied by
    `m_k / n_k`. Halving a grid this way averages 2-voxel blocks; doubling it interpolates.

    Args:
        field: `(batch, *spatial, ndim)` displacement in input voxels.
        factor: positive number, output size = round(input size * factor) on every axis.
        out_shape: alternative to `factor`: the `ndim` output sizes (ints or an int tensor).

    Returns:
        `(batch, *out_spatial, ndim)` float32 displacement in output voxels.
    """
    if (factor is None) == (out_shape is None):
        raise ValueError(
            "Give exactly one of `factor` and `out_shape`. "
            f"Received: factor={factor}, out_shape={out_shape}"
        )
    field = tf.cast(field, tf.float32)
    ndim = field.shape[-1]
    in_sizes = tf.shape(field)[1 : ndim + 1]
    if factor is not None:
        if factor == 1:
            return field
        out_sizes = tf.cast(tf.round(tf.cast(in_sizes, tf.float32) * float(factor)), tf.int32)
    else:
        out_sizes = tf.convert_to_tensor(out_shape, dtype=tf.int32)
    scale = tf.cast(out_sizes, tf.float32) / tf.cast(in_sizes, tf.float32)  # (ndim,)
    # N-linear interpolation with border clamping is the tensor product of 1-D linear
    # interpolations, so resize one axis at a time: each pass holds two gathered copies of the
    # field instead of the 2**ndim corners of `vxmtf.ops.resample`, and is faster too.
    for k in range(ndim):
        field = _resize_axis(field, k + 1, in_sizes[k], out_sizes[k], scale[k])
    return field * scale


def _resize_axis(x, axis, in_size, out_size, scale):
    """Linear resize of `x` along `axis` from `in_size` to `out_size` voxels (voxel centres,
    border clamped): output voxel `y` reads input position `(y + 0.5) / scale - 0.5`."""
    position = (tf.range(out_size, dtype=tf.float32) + 0.5) / scale - 0.5  # (out_size,)
    lower = tf.floor(position)
    frac = position - lower
    lower = tf.cast(lower, tf.int32)
    first = tf.gather(x, tf.clip_by_value(lower, 0, in_size - 1), axis=axis)
    second = tf.gather(x, tf.clip_by_value(lower + 1, 0, in_size - 1), axis=axis)
    # Weights broadcast along `axis`: shape (1, ..., out_size, ..., 1).
    shape = [1] * x.shape.rank
    shape[axis] = -1
    return first + (second - first) * tf.reshape(frac, shape)
