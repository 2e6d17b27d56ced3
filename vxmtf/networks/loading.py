"""Loading a trained `VxmDense`, and its float32 copy with free spatial sizes.

Every consumer of a saved model goes through here: registration (`vxmtf.registration`), export
(`vxmtf.export`) and fine-tuning (`vxmtf.training`, initial weights). A `.keras` file is loaded
without compiling, checked to hold a `VxmDense` (`NotVxmDenseError` otherwise), and Keras's many
error types for a bad archive become one `ValueError` naming the file.

`inference_clone` rebuilds the architecture with free spatial sizes (or a given shape) and
without the inverse outputs of a bidirectional model, holding the trained weights: one graph
then registers volumes of any size, whatever the size and dtype policy the model was trained
with. Its precision is float32 everywhere, or `"bfloat16"`: the U-Net computes in bfloat16
(Keras policy `mixed_bfloat16`, float32 weights) while the flow head, the integration and the
resizing stay float32, as in mixed-precision training.
"""

from __future__ import annotations

import contextlib
import os
import zipfile
from pathlib import Path

import keras

from vxmtf.networks.vxm_dense import VxmDense

__all__ = [
    "PRECISIONS",
    "NotVxmDenseError",
    "check_precision",
    "check_vxm_dense",
    "inference_clone",
    "load_vxm_dense",
]

#: Inference precisions and the Keras dtype policy each builds the copy under.
PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16"}


class NotVxmDenseError(TypeError):
    """A model, or the content of a model file, that is not a `vxmtf.networks.VxmDense`."""


def check_vxm_dense(model, source=None) -> VxmDense:
    """Returns `model` if it is a `VxmDense`; raises `NotVxmDenseError` naming `source` else."""
    if not isinstance(model, VxmDense):
        where = f" in {source}" if source is not None else ""
        raise NotVxmDenseError(
            "Expected a vxmtf.networks.VxmDense model (or the path of a .keras file holding "
            f"one). Received: a model of type {type(model).__name__}{where}"
        )
    return model


def load_vxm_dense(path) -> VxmDense:
    """The `VxmDense` saved in the `.keras` file `path` (not compiled).

    Raises:
        FileNotFoundError: no file or folder at `path`.
        ValueError: `path` is a folder (a run folder or a SavedModel export: see
            `vxmtf.training.run_folder.resolve_model_path`), or a file Keras cannot load (not a
            `.keras` zip archive, truncated or corrupt, unknown objects): the message says the
            file exists and gives the underlying reason.
        NotVxmDenseError: it holds another model.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Model file not found: {path}")
    if path.is_dir():
        raise ValueError(
            f"{path} is a folder, not a .keras model file: expected a .keras file saved by "
            f"vxmtf. Received: model={path}"
        )
    # Keras reports a file that is not a zip archive as "File not found"; say what it is.
    reason = None if zipfile.is_zipfile(path) else _not_a_zip(path)
    if reason is None:
        try:
            model = keras.models.load_model(path, compile=False)
        except Exception as error:  # Keras raises many types for a bad archive.
            raise _unreadable(path, f"{type(error).__name__}: {error}") from error
    else:
        raise _unreadable(path, reason)
    return check_vxm_dense(model, path)


def _not_a_zip(path: Path) -> str:
    size = path.stat().st_size
    return (
        f"not a zip archive ({size} bytes; a .keras file is a zip archive: is it truncated, "
        "corrupt or of another format?)"
    )


def _unreadable(path: Path, reason: str) -> ValueError:
    return ValueError(
        f"The model file {path} exists but is not a readable Keras model: expected a .keras "
        f"file saved by vxmtf. Received: error={reason}"
    )


def as_vxm_dense(model) -> VxmDense:
    """`model` itself if it is a `VxmDense`, or the one loaded from a path (`load_vxm_dense`)."""
    if isinstance(model, (str, os.PathLike)):
        return load_vxm_dense(model)
    return check_vxm_dense(model)


def check_precision(precision) -> str:
    """Returns `precision` if it is a key of `PRECISIONS`, else raises ValueError."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(
            f"Expected `precision` to be one of {tuple(PRECISIONS)}. "
            f"Received: precision={precision!r}"
        )
    return precision


def inference_clone(model, inshape=None, precision="float32") -> VxmDense:
    """The architecture of `model` at `inshape` (default: every spatial size free), forward
    outputs only (`bidir=False`), holding `model`'s weights.

    Args:
        model: a `VxmDense`.
        inshape: spatial shape of the copy (ints or None); None makes every size free.
        precision: "float32", or "bfloat16" (the U-Net in bfloat16, fields in float32; see
            the module docstring).
    """
    check_vxm_dense(model)
    policy = PRECISIONS[check_precision(precision)]
    config = model.get_config()
    ndim = len(model.inshape)
    config.update(inshape=tuple(inshape) if inshape is not None else (None,) * ndim, bidir=False)
    with _dtype_policy(policy):
        clone = VxmDense.from_config(config)
    for layer in clone.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return clone


@contextlib.contextmanager
def _dtype_policy(name):
    # Keras keeps the global dtype policy per thread; restore whatever the caller had set.
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
