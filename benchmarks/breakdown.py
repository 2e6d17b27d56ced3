"""A training step taken apart: each part's forward + backward timed on its own.

Parts of one VoxelMorph training step (`benchmarks.workloads.build_trainer`):

- `unet`: U-Net and flow head, forward and the gradient with respect to every weight (for an
  arbitrary fixed upstream gradient), i.e. all the convolution work of the step;
- `resize` and `integrate` (only when `int_steps > 0`): halving the flow and doubling the
  integrated displacement back (`RescaleTransform`, both together), and the scaling and squaring
  at half resolution (`VecInt`); forward and gradient with respect to their input;
- `warp`: `SpatialTransformer(moving, displacement)`, forward and gradient with respect to the
  displacement;
- `ncc`: `NCC(9)(fixed, moved)`, forward and gradient with respect to `moved`;
- `grad`: `Grad("l2")` on `preint_flow`, forward and gradient;
- `optimizer`: one Adam update of every weight;
- `step`: the whole `train_on_batch` step, for comparison with the sum of the parts.

Each part is a `tf.function` (graph mode, like Keras's train function without XLA) timed like
the other workloads: median, min and max of `repeats` calls after `warmup` calls.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from benchmarks.workloads import build_trainer, random_pair, time_calls
from vxmtf.losses import NCC, Grad

__all__ = ["breakdown_workload"]


def _gradient_fn(forward, sources):
    """A `tf.function` computing `forward()` and d(sum(out * upstream))/d(sources)."""

    @tf.function
    def run(upstream):
        with tf.GradientTape() as tape:  # every source is a trainable variable: watched
            out = forward()
            loss = tf.reduce_sum(tf.cast(out, tf.float32) * upstream)
        grads = tape.gradient(loss, sources)
        # One scalar that depends on every gradient, so that nothing is pruned.
        return loss + tf.add_n(
            [tf.reduce_sum(tf.cast(g, tf.float32)) for g in grads if g is not None]
        )

    return run


def _timed(forward, sources, out_shape, repeats, warmup):
    upstream = tf.random.normal(out_shape, stddev=1e-3, seed=1)
    run = _gradient_fn(forward, sources)
    return time_calls(lambda: run(upstream).numpy(), repeats, warmup)


def breakdown_workload(shape, int_steps, repeats, warmup):
    """Seconds of each part of a training step at `shape` (see the module docstring)."""
    model, trainer, config = build_trainer(shape, int_steps)
    moving, fixed = random_pair(shape)
    parts = {}

    # U-Net + flow head: a model from the pair to the full-resolution flow.
    flow_model = keras.Model(model.inputs, model.flow_head.output)
    weights = flow_model.trainable_variables
    flow_shape = (1, *shape, len(shape))
    parts["unet"] = _timed(
        lambda: flow_model([moving, fixed], training=True), weights, flow_shape, repeats, warmup
    )

    # A smooth, realistic-size displacement (a few voxels) for the other parts.
    flow = tf.Variable(tf.random.normal(flow_shape, stddev=2.0, seed=2))
    field = flow
    if int_steps:
        resize = model.get_layer("velocity_resize")
        integrate = model.get_layer("integrate")
        upsize = model.get_layer("displacement_resize")
        field = tf.Variable(resize(tf.identity(flow)))
        parts["resize"] = _timed(
            lambda: upsize(resize(tf.identity(flow))), [flow], flow_shape, repeats, warmup
        )
        parts["integrate"] = _timed(
            lambda: integrate(tf.identity(field)), [field], field.shape, repeats, warmup
        )
    transformer = model.transformer
    parts["warp"] = _timed(
        lambda: transformer(moving, tf.identity(flow)), [flow], (1, *shape, 1), repeats, warmup
    )

    moved = tf.Variable(transformer(moving, tf.identity(flow)))
    ncc = NCC(config.train.ncc_window)
    parts["ncc"] = _timed(lambda: ncc(fixed, tf.identity(moved)), [moved], (), repeats, warmup)
    grad = Grad("l2", loss_mult=config.model.int_resolution if int_steps else None)
    parts["grad"] = _timed(
        lambda: grad(tf.zeros([1, 1]), tf.identity(field)), [field], (), repeats, warmup
    )

    variables = trainer.trainable_variables
    optimizer = keras.optimizers.Adam(config.train.lr)
    optimizer.build(variables)
    gradients = [tf.random.normal(v.shape, stddev=1e-3) for v in variables]

    @tf.function
    def update():
        optimizer.apply(gradients, variables)
        return optimizer.iterations

    parts["optimizer"] = time_calls(lambda: update().numpy(), repeats, warmup)

    x = {"moving": moving, "fixed": fixed}
    y = {"moved": fixed, "preint_flow": tf.zeros([1, 1])}
    parts["step"] = time_calls(lambda: trainer.train_on_batch(x, y), repeats, warmup)
    parts_sum = sum(v["median"] for k, v in parts.items() if k != "step")
    return {"parts": parts, "sum_of_parts": parts_sum}
