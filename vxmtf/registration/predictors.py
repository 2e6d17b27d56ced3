"""Predictors: the network part of `Registrator`, one small object per kind of model.

Each predictor maps a prepared pair, `moving` and `fixed` float32 `(1, *P, 1)` with every size of
`P` a multiple of `multiple`, to the displacement `(1, *P, ndim)` in voxels of that grid
(`moved[x] = moving[x + displacement[x]]`):

- `KerasPredictor`: a `VxmDense` run whole, with free spatial sizes, in float32 or with its U-Net
  in bfloat16 (`precision`, `vxmtf.networks.loading.inference_clone`; the displacement is
  float32 either way);
- `TiledKerasPredictor`: the same displacement computed slab by slab along the first axis
  (`vxmtf.networks.tiled_displacement`), in a fraction of the memory;
- `SavedModelPredictor`: the `serving_default` signature of a `vxmtf.export` SavedModel, which
  pads and crops inside its graph (so `multiple` is 1). An export that records its preprocessing
  (`vxmtf.export.read_preprocessing`, `prepares_inputs: true`) also normalises, downsamples and
  resizes there: `Registrator` then feeds it the raw pair (`register_raw`) and prepares nothing.

Keras predictors also give the network's field before integration (`field`: the model's
`preint_flow`, a velocity at 1/`int_resolution` of the grid, or the displacement itself when
`int_steps == 0`), which test-time refinement (`vxmtf.refine`) starts from.

`make_predictor` chooses among them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import tensorflow as tf

from vxmtf.export import read_preprocessing
from vxmtf.networks.loading import as_vxm_dense, check_precision, inference_clone
from vxmtf.networks.tiled import check_slab, default_slab, tiled_displacement, tiled_flow

logger = logging.getLogger(__name__)

__all__ = [
    "KerasPredictor",
    "SavedModelPredictor",
    "TiledKerasPredictor",
    "make_predictor",
    "native_bfloat16",
]


class KerasPredictor:
    """A `VxmDense` run whole (a copy with free spatial sizes).

    Args:
        model: a `VxmDense`.
        precision: "float32", or "bfloat16" for the U-Net (faster on CPUs with AVX512_BF16 or
            AMX, and on GPUs; emulated, and slower, elsewhere: a warning says so).

    Attributes:
        model: the copy. `inshape`: the trained model's input shape. `ndim`, `multiple`: its
            dimensionality and size multiple. `precision`: the argument.
    """

    def __init__(self, model, precision="float32"):
        self.inshape = tuple(model.inshape)
        self.ndim = len(self.inshape)
        self.multiple = model.size_multiple
        self.model = inference_clone(model, precision=precision)  # checks `precision`
        self.precision = precision
        if precision == "bfloat16" and native_bfloat16() is False:
            logger.warning(
                "precision bfloat16 on a CPU without AVX512_BF16 or AMX: bfloat16 is emulated "
                "there and slower than float32"
            )
        spec = tf.TensorSpec((None,) * (self.ndim + 1) + (1,), tf.float32)
        self._predict = tf.function(self._displacement, input_signature=[spec, spec])

    def _displacement(self, moving, fixed):
        return self.model([moving, fixed], training=False)["displacement"]

    def __call__(self, moving, fixed):
        return self._predict(moving, fixed)

    def field(self, moving, fixed):
        """The model's `preint_flow` for the pair: `(1, *P / r, ndim)` (r = `int_resolution`
        when integrating, else 1)."""
        if not hasattr(self, "_field"):
            spec = tf.TensorSpec((None,) * (self.ndim + 1) + (1,), tf.float32)
            self._field = tf.function(
                lambda moving, fixed: self.model([moving, fixed], training=False)["preint_flow"],
                input_signature=[spec, spec],
            )
        return self._field(moving, fixed)


class TiledKerasPredictor(KerasPredictor):
    """A `VxmDense` computed slab by slab (`tiled_displacement`): the same displacement.

    Args:
        model: a `VxmDense`.
        slab: rows per slab (at least `vxmtf.networks.min_slab(model)`), or None to choose it
            per input shape (`vxmtf.networks.default_slab`).
    """

    def __init__(self, model, slab=None, precision="float32"):
        super().__init__(model, precision)
        self.slab = None if slab is None else check_slab(slab, self.model)
        spec = tf.TensorSpec((None,) * (self.ndim + 1) + (1,), tf.float32)
        # The slab is an argument, not a constant: one graph serves every input shape.
        self._tiled = tf.function(
            lambda moving, fixed, slab: tiled_displacement(self.model, moving, fixed, slab=slab),
            input_signature=[spec, spec, tf.TensorSpec([], tf.int32)],
        )

    def __call__(self, moving, fixed):
        slab = self.slab or default_slab(tuple(moving.shape), self.model)
        return self._tiled(moving, fixed, tf.constant(slab, tf.int32))

    def field(self, moving, fixed):
        """`preint_flow` computed slab by slab (`vxmtf.networks.tiled_flow`)."""
        if not hasattr(self, "_tiled_field"):
            spec = tf.TensorSpec((None,) * (self.ndim + 1) + (1,), tf.float32)
            self._tiled_field = tf.function(
                lambda moving, fixed, slab: self.model.flow_to_velocity(
                    tiled_flow(self.model, moving, fixed, slab=slab)
                ),
                input_signature=[spec, spec, tf.TensorSpec([], tf.int32)],
            )
        slab = self.slab or default_slab(tuple(moving.shape), self.model)
        return self._tiled_field(moving, fixed, tf.constant(slab, tf.int32))


class SavedModelPredictor:
    """The `serving_default(moving, fixed)` signature of a SavedModel written by `vxmtf.export`.

    Attributes:
        ndim: 2 or 3. `multiple`: 1 (the export pads inside its graph). `inshape`: None.
        preprocessing: the export's record (`vxmtf.export.read_preprocessing`: a dict with
            `normalize`, `percentiles`, `downsample`, `multiple`, ...) or None for an export
            written before it existed.
        prepares_inputs: True when the export normalises, downsamples and resizes inside its
            graph: call `register_raw` with the raw pair, not `__call__` with a prepared one.

    Raises:
        ValueError: the folder cannot be loaded, has no such signature, or holds an unreadable
            preprocessing record.
    """

    inshape = None
    multiple = 1  # the export pads inside its graph

    def __init__(self, path):
        path = Path(path)
        self.preprocessing = read_preprocessing(path)
        self.prepares_inputs = bool(self.preprocessing and self.preprocessing["prepares_inputs"])
        try:
            self._loaded = tf.saved_model.load(str(path))  # keeps the variables alive
        except Exception as error:  # TensorFlow raises many types for a bad SavedModel.
            raise ValueError(
                f"Could not load the SavedModel {path}. "
                f"Received: error={type(error).__name__}: {error}"
            ) from error
        self._signature = self._loaded.signatures.get("serving_default")
        inputs = {} if self._signature is None else self._signature.structured_input_signature[1]
        if set(inputs) != {"moving", "fixed"}:
            raise ValueError(
                f"{path} is not a vxmtf export: expected a serving_default(moving, fixed) "
                f"signature. Received: inputs={sorted(inputs)}"
            )
        self.ndim = inputs["moving"].shape.rank - 2
        if self.prepares_inputs:
            logger.info(
                "%s prepares raw inputs itself (normalize=%s, downsample=%d): the run's "
                "preprocessing is not applied again",
                path,
                self.preprocessing["normalize"],
                self.preprocessing["downsample"],
            )

    def __call__(self, moving, fixed):
        """The displacement `(1, *P, ndim)` of a prepared pair `(1, *P, 1)` (an export that
        does not prepare its inputs)."""
        return self._signature(moving=moving, fixed=fixed)["displacement"]

    def register_raw(self, moving, fixed):
        """`(displacement, moved)` of a raw pair `(*S)`: `(*S, ndim)` in voxels of that grid and
        `(*S)` float32, computed entirely by the export's graph (`prepares_inputs`)."""
        pair = [tf.constant(np.asarray(x, np.float32)[None, ..., None]) for x in (moving, fixed)]
        out = self._signature(moving=pair[0], fixed=pair[1])
        return out["displacement"].numpy()[0], out["moved"].numpy()[0, ..., 0]


def native_bfloat16():
    """Whether this machine computes bfloat16 natively: a GPU, or a CPU with AVX512_BF16 or
    AMX (from /proc/cpuinfo); None when unknown (no /proc/cpuinfo: not Linux)."""
    if tf.config.list_physical_devices("GPU"):
        return True
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = set(text.split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def make_predictor(model, tiled=True, slab=None, precision="float32"):
    """The predictor for `model`: a `VxmDense`, a `.keras` file, or a SavedModel folder.

    Args:
        model: a `VxmDense`, or a path from `vxmtf.training.run_folder.resolve_model_path`.
        tiled: slab-wise inference for a Keras model (a SavedModel runs its exported graph).
        slab: rows per slab when tiled (None: automatic).
        precision: "float32" or "bfloat16" (`KerasPredictor`); a SavedModel runs in the
            precision it was exported in.

    Raises:
        ValueError: a `slab` or a bfloat16 `precision` for a SavedModel, a bad `precision`,
            or a bad model file.
        NotVxmDenseError: a `.keras` file or model that is not a `VxmDense`.
    """
    check_precision(precision)
    if isinstance(model, (str, Path)) and Path(model).is_dir():
        if slab is not None:
            raise ValueError(
                f"`slab` applies to Keras models; {model} is a SavedModel, which runs its "
                f"exported graph. Received: slab={slab!r}"
            )
        if precision != "float32":
            raise ValueError(
                f"`precision` applies to Keras models; {model} is a SavedModel, which runs in "
                f"the precision it was exported in (float32). Received: precision={precision!r}"
            )
        return SavedModelPredictor(model)
    model = as_vxm_dense(model)
    if tiled:
        return TiledKerasPredictor(model, slab, precision)
    return KerasPredictor(model, precision)
