"""Integration of stationary velocity fields by scaling and squaring."""

import tensorflow as tf

from vxmtf.checks import check_choice
from vxmtf.ops._xla import in_xla_context, tape_is_recording
from vxmtf.ops.resample import coordinate_dtype, warp

_METHODS = ("auto", "unrolled", "loop")


def integrate_velocity(velocity, steps=7, method="auto"):
    """Displacement of the time-1 flow of a stationary velocity field.

    Scaling and squaring (Arsigny et al., MICCAI 2006; Ashburner, NeuroImage 2007; used by
    Dalca et al., MICCAI 2018): start from `u = v / 2**steps` (the flow for a short time) and
    compose the transform with itself `steps` times, `u <- u + u o (id + u)`, i.e.
    `u(x) <- u(x) + u(x + u(x))`, sampled N-linearly with border clamping.

    The squarings run unrolled (`method="unrolled"`) or as a `tf.while_loop` of `steps`
    iterations (`"loop"`); both give the same field and gradient. `"auto"` unrolls them except
    inside a function that XLA compiles and that no gradient tape records: there, unrolled,
    XLA fuses each squaring's sampling into the next one's and recomputes it per corner, so
    the forward pass grows with every step. `python -m benchmarks.bench_integrate --jit`
    (2-core AMX Xeon, 7 steps): forward only, the loop is 36x faster at 40x48x40 (285 -> 8 ms;
    25 ms without XLA) and 51x at 80x96x80; with the gradient it is 0.85x (47 -> 55 ms), so
    `"auto"` keeps the unrolled form under a tape.

    Args:
        velocity: `(batch, *spatial, ndim)` in voxels.
        steps: number of squarings, >= 0. 0 returns the field unchanged.
        method: `"auto"`, `"unrolled"` or `"loop"`.

    Returns:
        `(batch, *spatial, ndim)` displacement, float32 (float64 for float64 input).
    """
    check_choice("method", method, _METHODS)
    velocity = tf.convert_to_tensor(velocity)
    velocity = tf.cast(velocity, coordinate_dtype(velocity.dtype))
    if steps == 0:
        return velocity
    displacement = velocity * (1.0 / 2**steps)
    if method == "auto":
        method = "loop" if in_xla_context() and not tape_is_recording() else "unrolled"
    if method == "loop":
        # (batch, *spatial, ndim) -> same: one squaring per iteration.
        (displacement,) = tf.while_loop(
            lambda u: True,
            lambda u: (u + warp(u, u),),
            (displacement,),
            maximum_iterations=steps,
        )
        return displacement
    for _ in range(steps):
        displacement = displacement + warp(displacement, displacement)
    return displacement
