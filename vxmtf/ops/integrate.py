"""Integration of stationary velocity fields by scaling and squaring."""

import tensorflow as tf

from vxmtf.ops.resample import coordinate_dtype, warp


def integrate_velocity(velocity, steps=7):
    """Displacement of the time-1 flow of a stationary velocity field.

    Scaling and squaring (Arsigny et al., MICCAI 2006; Ashburner, NeuroImage 2007; used by
    Dalca et al., MICCAI 2018): start from `u = v / 2**steps` (the flow for a short time) and
    compose the transform with itself `steps` times, `u <- u + u o (id + u)`, i.e.
    `u(x) <- u(x) + u(x + u(x))`, sampled N-linearly with border clamping.

    Args:
        velocity: `(batch, *spatial, ndim)` in voxels.
        steps: number of squarings, >= 0. 0 returns the field unchanged.

    Returns:
        `(batch, *spatial, ndim)` displacement, float32 (float64 for float64 input).
    """
    velocity = tf.convert_to_tensor(velocity)
    velocity = tf.cast(velocity, coordinate_dtype(velocity.dtype))
    if steps == 0:
        return velocity
    displacement = velocity * (1.0 / 2**steps)
    for _ in range(steps):
        displacement = displacement + warp(displacement, displacement)
    return displacement
