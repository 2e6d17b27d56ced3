"""Identity sampling grids.

Conventions used across `vxmtf.ops`: voxel coordinates, "ij" order (component k indexes spatial
axis k), voxel centres at integer positions ``0 .. size - 1``.
"""

import tensorflow as tf


def identity_grid(spatial_shape, dtype=tf.float32):
    """Voxel coordinates of every grid point.

    Args:
        spatial_shape: sequence of `ndim` ints or a 1-D integer tensor (may be dynamic).
        dtype: float dtype of the result.

    Returns:
        Tensor of shape `(*spatial_shape, ndim)` with `grid[x] = x`.
    """
    spatial_shape = tf.convert_to_tensor(spatial_shape, dtype=tf.int32)
    ndim = spatial_shape.shape[0]
    if ndim is None:
        raise ValueError(
            f"identity_grid needs a spatial shape of known length. Received: {spatial_shape}"
        )
    axes = [tf.range(spatial_shape[k], dtype=dtype) for k in range(ndim)]
    # Each mesh: (*spatial); stacked: (*spatial, ndim).
    return tf.stack(tf.meshgrid(*axes, indexing="ij"), axis=-1)
