"""Resizing of displacement fields between grids."""

import tensorflow as tf

from vxmtf.ops.resample import resample


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
    # Per-axis sample positions, broadcast into (*out_spatial, ndim) coordinates.
    axes = [(tf.range(out_sizes[k], dtype=tf.float32) + 0.5) / scale[k] - 0.5 for k in range(ndim)]
    coords = tf.stack(tf.meshgrid(*axes, indexing="ij"), axis=-1)
    coords = tf.broadcast_to(coords[None], tf.concat([tf.shape(field)[:1], tf.shape(coords)], 0))
    return resample(field, coords) * scale
