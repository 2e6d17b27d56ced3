"""The official VoxelMorph TensorFlow code (voxelmorph 0.2 + neurite 0.2 on tf-keras) as a
baseline workload: its training step and its registration `predict`, timed as
`benchmarks.workloads` times vxmtf's.

Balakrishnan et al.'s package (`pip install -e '.[official]'`) is the last release of VoxelMorph
with TensorFlow code; it needs Keras 2, so it runs on `tf-keras` (`TF_USE_LEGACY_KERAS=1`, set by
`benchmarks.case` before TensorFlow is imported, in that case's process only). Nothing of it is
copied here: the workloads call its public API. One shim lets it run on today's Python without
changing what it computes: neurite 0.2 reads constructor arguments with `inspect.getargspec`,
removed in Python 3.11, which gets the same four fields from `inspect.getfullargspec` here.

The model is the official default: `vxm.networks.VxmDense(inshape, int_steps=...)`, U-Net
16-32-32-32 / 32-32-32-32-32-16-16 (its `default_unet_features`), velocity at half resolution
(`int_downsize=2`). Training as its `train.py` compiles it: negative NCC (window 9) on the moved
image with weight 1 and `Grad('l2', loss_mult=int_downsize)` on the flow with weight 1, Adam
1e-4, batch 1, `train_on_batch` on one repeated pair. Registration: `predict_on_batch` of the
model on one pair (network, integration and the warp of the moving image, no preprocessing),
the fastest of its inference calls.
"""

from __future__ import annotations

import collections
import inspect

import numpy as np

from benchmarks.timing import random_arrays, time_calls

#: The command that installs the baseline (setup.cfg's `official` extra).
INSTALL = "pip install -e '.[official]'"


def import_voxelmorph():
    """`voxelmorph` with the shims above, or ImportError naming what to install."""
    if not hasattr(inspect, "getargspec"):
        spec = collections.namedtuple("ArgSpec", "args varargs keywords defaults")
        inspect.getargspec = lambda func: spec(*inspect.getfullargspec(func)[:4])
    try:
        import voxelmorph
    except ImportError as error:
        raise ImportError(
            f"The official VoxelMorph baseline needs voxelmorph 0.2, neurite 0.2 and tf-keras: "
            f"{INSTALL}. Received: {type(error).__name__}: {error}"
        ) from error
    return voxelmorph


def _model(shape, int_steps):
    vxm = import_voxelmorph()
    return vxm, vxm.networks.VxmDense(tuple(shape), int_steps=int_steps, int_resolution=2)


def _inputs(shape):
    moving, fixed = random_arrays(shape)
    return moving[None, ..., None], fixed[None, ..., None]


def official_train_workload(shape, int_steps, repeats, warmup):
    """Seconds per training step of the official model (see the module docstring)."""
    import tensorflow as tf

    vxm, model = _model(shape, int_steps)
    losses = [vxm.losses.NCC(win=[9] * len(shape)).loss, vxm.losses.Grad("l2", loss_mult=2).loss]
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate=1e-4), loss=losses)
    moving, fixed = _inputs(shape)
    flow_shape = model.outputs[1].shape[1:]
    zeros = np.zeros((1, *flow_shape), np.float32)
    history = []

    def step():
        history.append(float(np.ravel(model.train_on_batch([moving, fixed], [fixed, zeros]))[0]))

    result = time_calls(step, repeats, warmup)
    result["finite_losses"] = bool(np.all(np.isfinite(history)))
    import tf_keras

    if tf.keras.Model is not tf_keras.Model:
        raise RuntimeError("tf.keras is not tf-keras: set TF_USE_LEGACY_KERAS=1 before TensorFlow")
    result["keras"] = f"tf-keras {tf_keras.__version__}"
    return result


def official_predict_workload(shape, int_steps, repeats, warmup):
    """Seconds per `predict_on_batch` of the official model on one pair."""
    _, model = _model(shape, int_steps)
    moving, fixed = _inputs(shape)

    def predict():
        moved, _ = model.predict_on_batch([moving, fixed])
        np.ravel(moved)[:1]

    return time_calls(predict, repeats, warmup)
