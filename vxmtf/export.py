"""Export a trained `VxmDense` as a SavedModel laid out for TensorFlow Serving.

`export_saved_model` writes `<base_dir>/<model_name>/<version>/` (`saved_model.pb`, `variables/`
and `assets/`), the layout `tensorflow_model_server --model_base_path=<base_dir>/<model_name>`
watches. The export holds three signatures, built only from standard TensorFlow ops (no Python
functions, no custom ops), so TF Serving, the C/C++ SavedModel loader or `tf.saved_model.load`
run it without `vxmtf` installed:

    serving_default(moving, fixed) -> {moved, displacement}
        moving, fixed: RAW float32 volumes `(batch, *spatial, 1)` on one grid, batch and spatial
        sizes free. Inside the graph, exactly as `vxmtf.registration.Registrator.register`:
        each sample is normalised as the training run did (`normalize`: min-max, or
        percentiles then clipped; NaN -> 0), block-mean downsampled by the run's factor `K`
        (`floor(n / K)` voxels per axis), zero-padded (centred, the odd voxel after) to the
        network's size multiple, registered, cropped back, and the field resized to the input
        grid (`rescale_field`, then edge padding of the `n - K floor(n / K)` trailing voxels).
        displacement: `(batch, *spatial, ndim)` float32 in voxels of the input grid, component
        k along axis k, `moved[x] = moving[x + displacement[x]]`. moved: the RAW moving image
        (its own intensities) warped N-linearly by it, border clamped.
    warp(image, displacement) -> {warped}
        image: float32 `(batch, *spatial, channels)`; displacement: float32
        `(batch, *spatial, ndim)` (the served one). Nearest-neighbour warp, border clamped:
        `warped[x] = image[round(x + displacement[x])]`, so label maps (as float32; exact up to
        2**24) keep their values. This is how a client brings the moving image's labels onto the
        fixed grid.
    preprocessing() -> {normalize, percentiles, downsample, multiple, prepares_inputs}
        The record of what `serving_default` does to its inputs (constants, no input):
        `normalize` a string ("minmax", "percentile" or "none"), `percentiles` float32 `(2,)`,
        `downsample` and `multiple` int32, `prepares_inputs` bool (False: a bare export,
        `preprocess=False`, whose inputs the client prepares).

The same record is the asset `assets/vxmtf_preprocessing.json` (`PREPROCESSING_ASSET`, read
with `read_preprocessing`), with the shapes and conventions in words. Exports without it (written
before it existed) take prepared inputs: `vxmtf.registration.Registrator` prepares them itself.

Memory: with `tiled=True` (the default) the network runs slab by slab along the first axis
(`vxmtf.networks.tiled_displacement`, slabs sized in the graph by `default_slab`) and both warps
by chunks of rows (`vxmtf.ops.warp_by_rows`), all in `tf.while_loop`s: at 160x192x224 a
request then peaks at about the memory of `Registrator(tiled=True)`, not the 5 GB of the whole
network.

The graph is traced from a float32 copy of the architecture with free spatial sizes, holding the
trained weights; so one export serves volumes of any size, whatever size the model was trained
on, and computes in float32 even if the model was trained under `mixed_float16`.

Command line: `python -m vxmtf.export --model model.keras --base-dir models [--config
config.json] [--version N] [--untiled] [--xla]`; `--model` may also be a training run folder
(its `best.keras`, else `last.keras`, and its `config.json`), not a SavedModel.
"""

import argparse
import errno
import json
import logging
import os
import re
import tempfile
from pathlib import Path

import tensorflow as tf

import vxmtf_cli as cli
from vxmtf.atomic import atomic_path
from vxmtf.checks import check_bool, check_int
from vxmtf.data.preprocess import PreprocessConfig
from vxmtf.networks.loading import as_vxm_dense, inference_clone
from vxmtf.networks.tiled import tiled_displacement
from vxmtf.ops.prepare import (
    crop,
    downsample_mean,
    normalize,
    pad_to_multiple,
    resize_field_to,
    warp_by_rows,
)
from vxmtf.ops.resample import warp
from vxmtf.training.config import RunConfig
from vxmtf.training.run_folder import find_run_config, load_run_config, resolve_model_path

logger = logging.getLogger(__name__)

__all__ = ["PREPROCESSING_ASSET", "export_saved_model", "padding_multiple", "read_preprocessing"]

_VERSION_NAME = re.compile(r"^[0-9]+$")
#: File name of the preprocessing record in the export's `assets/` folder.
PREPROCESSING_ASSET = "vxmtf_preprocessing.json"
_RECORD_FORMAT = "vxmtf-preprocessing/1"


def export_saved_model(
    model,
    base_dir,
    model_name="vxm",
    version=None,
    jit_compile=False,
    config=None,
    tiled=True,
    preprocess=True,
):
    """Write `model` as `<base_dir>/<model_name>/<version>/` for TensorFlow Serving.

    The version folder appears atomically: the SavedModel is written into a hidden sibling
    (`.tmp-...`, a name TF Serving ignores) and renamed into place once complete; on any error
    the temporary folder is removed, so no half-written version is ever visible.

    Args:
        model: a `vxmtf.networks.VxmDense`, the path of a `.keras` file holding one, or a
            training run folder (its `best.keras`, else `last.keras`; `resolve_model_path`).
        base_dir: folder of exported models; created if missing.
        model_name: sub-folder for this model (TF Serving's `--model_name`).
        version: integer version >= 0; None takes one more than the largest existing version
            (1 if there is none).
        jit_compile: compile the signatures with XLA. Can be faster, but the model server
            must be built with XLA (the TensorFlow pip package and the C library it ships are;
            check your `tensorflow_model_server` build), each new input shape is compiled on
            its first request, and XLA skips the input shape checks (Assert ops). XLA needs
            static shapes inside the graph, so it runs the network whole: give `tiled=False`.
        config: the training run's `RunConfig`, or the path of its `config.json`, whose
            preprocessing (`config.data.normalize`, `config.data.downsample`) the export
            applies to raw inputs. None: the `config.json` found beside a model file
            (`find_run_config`), else the one of a run folder holding `base_dir` (training
            exports to `<run>/export`), else min-max normalisation and no downsampling, as
            `Registrator` assumes (logged as a warning).
        tiled: low-memory serving (slab-wise network, warps by chunks of rows); False runs
            the network and the warps in one piece. The outputs are the same.
        preprocess: False exports the bare network (zero padding to the size multiple and
            cropping only), whose inputs the client normalises and downsamples; the record
            then says `prepares_inputs: false`.

    Returns:
        `Path` of the new version folder.

    Raises:
        NotVxmDenseError (a TypeError): `model` is not a `VxmDense` (or the file does not hold
            one).
        TypeError: `config` is not a `RunConfig` or a path; `tiled`, `preprocess` not bools.
        FileNotFoundError, ValueError: the model or configuration file is missing or
            unreadable, or `model` is a SavedModel folder (not a Keras model).
        ValueError: `version` is not a non-negative integer, `model_name` is not a plain name,
            or `tiled` with `jit_compile`.
        FileExistsError: that version already exists (the error names its path).
        OSError: `base_dir` cannot be created or written (raised by the file system, with the
            path).
    """
    check_bool("tiled", tiled)
    check_bool("preprocess", preprocess)
    if tiled and jit_compile:
        raise ValueError(
            "XLA (jit_compile=True) needs the static shapes of the whole network: export with "
            f"tiled=False. Received: tiled={tiled}, jit_compile={jit_compile}"
        )
    model_path = _keras_model_path(model) if isinstance(model, (str, os.PathLike)) else None
    model = as_vxm_dense(model if model_path is None else model_path)
    if version is not None:
        check_int("version", version, minimum=0)
    if not model_name or Path(model_name).name != model_name or model_name.startswith("."):
        raise ValueError(
            "`model_name` must be a plain folder name (no separators, not hidden). "
            f"Received: model_name={model_name!r}"
        )
    run_config, config_path = _resolve_config(config, model_path, Path(base_dir), model.name)
    if run_config is None:
        preprocessing = PreprocessConfig(multiple=model.size_multiple)
    else:
        preprocessing = run_config.data.preprocess(model.size_multiple)

    model_dir = Path(base_dir) / model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    existing = {int(p.name): p for p in model_dir.iterdir() if _VERSION_NAME.match(p.name)}
    if version is None:
        version = max(existing, default=0) + 1
    target = model_dir / str(version)
    if version in existing:
        raise FileExistsError(errno.EEXIST, "Model version already exists", str(existing[version]))

    record = _record(preprocessing, preprocess, len(model.inshape), tiled, config_path)
    with tempfile.TemporaryDirectory() as scratch:
        record_file = Path(scratch) / PREPROCESSING_ASSET
        record_file.write_text(json.dumps(record, indent=2) + "\n")
        module = _ServingModule(
            inference_clone(model), preprocessing, preprocess, tiled, bool(jit_compile), record_file
        )
        # The hidden temporary folder (`.<version>.tmp-...`) is a name TF Serving ignores.
        with atomic_path(target, directory=True) as staging:
            tf.saved_model.save(
                module,
                str(staging),
                signatures={
                    "serving_default": module.serve.get_concrete_function(),
                    "warp": module.warp.get_concrete_function(),
                    "preprocessing": module.preprocessing.get_concrete_function(),
                },
            )
    logger.info(
        "Exported %s (normalize=%s, downsample=%d, prepares inputs=%s, tiled=%s, "
        "jit_compile=%s) to %s",
        model.name,
        preprocessing.normalize,
        preprocessing.downsample,
        preprocess,
        tiled,
        jit_compile,
        target,
    )
    return target


def read_preprocessing(export_dir):
    """The preprocessing record of a SavedModel folder (`assets/vxmtf_preprocessing.json`), or
    None for an export without one (written before the record existed).

    Raises:
        ValueError: the file exists but is not a vxmtf preprocessing record.
    """
    path = Path(export_dir) / "assets" / PREPROCESSING_ASSET
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        if record.get("format") != _RECORD_FORMAT:
            raise ValueError(f"unknown format {record.get('format')!r}")
    except (ValueError, AttributeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"Expected a vxmtf preprocessing record ({_RECORD_FORMAT}) in {path}. "
            f"Received: error={type(error).__name__}: {error}"
        ) from error
    return record


def padding_multiple(model):
    """Size every spatial axis is padded to a multiple of (`VxmDense.size_multiple`)."""
    return model.size_multiple


def _keras_model_path(model) -> Path:
    """The `.keras` file a `model` path names: the file itself, or the model of a training run
    folder (`resolve_model_path`: `best.keras`, else `last.keras`).

    Raises:
        FileNotFoundError: nothing at `model`.
        ValueError: `model` names a SavedModel (an export holds no Keras model to export again)
            or is not a model at all.
    """
    path = resolve_model_path(model)
    if not path.is_file():
        raise ValueError(
            f"{model} is a SavedModel export ({path}): exporting needs the trained .keras model "
            "or the training run folder holding it (best.keras or last.keras); a SavedModel "
            f"holds no Keras model to export again. Received: model={model}"
        )
    return path


def _resolve_config(config, model_path, base_dir, name):
    """`(RunConfig or None, path of its config.json or None)` (see `export_saved_model`)."""
    if config is None:
        config = find_run_config(model_path) if model_path is not None else None
        if config is None:
            config = find_run_config(base_dir)
        if config is None:
            logger.warning(
                "No config.json for model %s: the export assumes minmax normalisation and no "
                "downsampling (pass `config`)",
                model_path or name,
            )
            return None, None
        logger.info("Exporting with the preprocessing of %s", config)
    if isinstance(config, (str, os.PathLike)):
        return load_run_config(config), Path(config)
    if not isinstance(config, RunConfig):
        raise TypeError(
            f"Expected `config` to be a RunConfig or the path of a config.json. "
            f"Received: config={config!r}"
        )
    return config, None


def _record(preprocessing, prepares_inputs, ndim, tiled, config_path):
    """The JSON record of what `serving_default` does (the `preprocessing` signature's values,
    and the conventions in words)."""
    return {
        "format": _RECORD_FORMAT,
        "prepares_inputs": bool(prepares_inputs),
        "normalize": preprocessing.normalize,
        "percentiles": list(preprocessing.percentiles),
        "downsample": preprocessing.downsample,
        "multiple": preprocessing.multiple,
        "resize": preprocessing.resize,
        "ndim": ndim,
        "tiled": bool(tiled),
        "config": None if config_path is None else str(config_path),
        "inputs": (
            "moving, fixed: float32 (batch, *spatial, 1) on one voxel grid; raw intensities "
            "when prepares_inputs, else normalised and downsampled as above"
        ),
        "outputs": {
            "displacement": (
                "float32 (batch, *spatial, ndim) in voxels of the input grid, component k "
                "along axis k: moved[x] = moving[x + displacement[x]]"
            ),
            "moved": "the moving image as given, warped N-linearly, border clamped",
        },
        "warp": (
            "warp(image, displacement): nearest-neighbour, border clamped, for label maps "
            "(float32): warped[x] = image[round(x + displacement[x])]"
        ),
    }


class _ServingModule(tf.Module):
    """The signature functions, the `tf.Variable`s they read and the preprocessing record.

    Only the variables are tracked, not the Keras model: a Keras 3 variable saved as an object
    is written to the checkpoint as a second `tf.Variable`, which the C++ loader (TF Serving,
    `saved_model_cli`) restores while the functions keep reading the first one, left
    uninitialised ("Could not find variable ..."; keras-team/keras#19274,
    tensorflow/tensorflow#72963). `tf.saved_model.load` hides the problem.
    """

    def __init__(self, clone, preprocessing, prepares_inputs, tiled, jit_compile, record_file):
        super().__init__(name="vxm_serving")
        self.weights = [variable.value for variable in clone.weights]
        self.record = tf.saved_model.Asset(str(record_file))  # copied to assets/
        ndim = len(clone.inshape)
        multiple = preprocessing.multiple
        factor = preprocessing.downsample if prepares_inputs else 1
        volume_shape = (None,) * (ndim + 1) + (1,)  # (batch, *spatial, 1)
        field_shape = (None,) * (ndim + 1) + (ndim,)  # (batch, *spatial, ndim)

        def checked(tensors, checks):
            # The tensors, made to wait for each `(a, b, message)`: `a == b`, or `a >= b` when
            # b is an int. XLA drops Assert ops (warning at each call), so they are left out
            # under jit_compile: a mismatched pair then fails in the U-Net's concatenation, and
            # `warp` samples the image on the displacement's grid.
            if jit_compile:
                return tensors
            asserts = [
                tf.debugging.assert_greater_equal(a, b, message=message)
                if isinstance(b, int)
                else tf.debugging.assert_equal(a, b, message=message)
                for a, b, message in checks
            ]
            with tf.control_dependencies(asserts):
                return [tf.identity(t) for t in tensors]

        def prepare(image):
            # Raw (batch, *S, 1) -> normalised, downsampled (batch, *C, 1), C = S // K.
            image = normalize(image, preprocessing.normalize, preprocessing.percentiles)
            return downsample_mean(image, factor)

        def serve(moving, fixed):
            moving, fixed = checked(
                [moving, fixed],
                [
                    (tf.shape(moving), tf.shape(fixed), "`moving` and `fixed` differ"),
                    (
                        tf.shape(fixed)[1 : ndim + 1],
                        factor,
                        f"volumes smaller than the downsampling factor ({factor})",
                    ),
                ],
            )
            sizes = tf.shape(moving)[1 : ndim + 1]  # (ndim,) S
            pair = [prepare(moving), prepare(fixed)] if prepares_inputs else [moving, fixed]
            coarse = tf.shape(pair[0])[1 : ndim + 1]  # C
            (moving_p, before), (fixed_p, _) = (pad_to_multiple(x, multiple) for x in pair)
            if tiled:
                field = tiled_displacement(clone, moving_p, fixed_p)  # slab: default_slab
            else:
                field = clone({"moving": moving_p, "fixed": fixed_p}, training=False)
                field = field["displacement"]
            field = crop(field, before, coarse)  # (batch, *C, ndim)
            displacement = resize_field_to(field, sizes, factor)  # (batch, *S, ndim)
            displacement = tf.ensure_shape(displacement, field_shape)
            if tiled:
                moved = warp_by_rows(moving, displacement, "linear")
            else:
                moved = warp(moving, displacement, interpolation="linear")
            return {"moved": moved, "displacement": displacement}

        def warp_labels(image, displacement):
            image, displacement = checked(
                [image, displacement],
                [
                    (
                        tf.shape(image)[: ndim + 1],
                        tf.shape(displacement)[: ndim + 1],
                        "`image` and `displacement` differ in batch or spatial shape",
                    )
                ],
            )
            if tiled:
                return {"warped": warp_by_rows(image, displacement, "nearest")}
            return {"warped": warp(image, displacement, interpolation="nearest")}

        def record():
            return {
                "normalize": tf.constant(preprocessing.normalize or "none"),
                "percentiles": tf.constant(preprocessing.percentiles, tf.float32),
                "downsample": tf.constant(preprocessing.downsample, tf.int32),
                "multiple": tf.constant(multiple, tf.int32),
                "prepares_inputs": tf.constant(bool(prepares_inputs)),
            }

        self.serve = tf.function(
            serve,
            input_signature=[
                tf.TensorSpec(volume_shape, tf.float32, name="moving"),
                tf.TensorSpec(volume_shape, tf.float32, name="fixed"),
            ],
            jit_compile=jit_compile,
        )
        self.warp = tf.function(
            warp_labels,
            input_signature=[
                tf.TensorSpec((None,) * (ndim + 2), tf.float32, name="image"),
                tf.TensorSpec(field_shape, tf.float32, name="displacement"),
            ],
            jit_compile=jit_compile,
        )
        self.preprocessing = tf.function(record, input_signature=[])


def main(argv=None):
    """`python -m vxmtf.export`: export a `.keras` VxmDense for TF Serving; prints the folder.

    Returns 0, or 2 on bad input (`error: ...` on stderr)."""
    parser = argparse.ArgumentParser(
        prog="python -m vxmtf.export",
        description="Export a trained VxmDense (.keras) as a SavedModel in TF Serving's layout "
        "<base-dir>/<name>/<version>/.",
        formatter_class=cli.HelpFormatter,
    )
    parser.add_argument(
        "--model",
        required=True,
        help="the trained .keras model, or a training run folder (its best.keras, else last.keras)",
    )
    parser.add_argument("--base-dir", required=True, help="folder of exported models")
    parser.add_argument("--name", default="vxm", help="model name (sub-folder)")
    parser.add_argument(
        "--version", type=int, default=None, help="version number (default: the next free one)"
    )
    parser.add_argument(
        "--config",
        default=None,
        help="the training run's config.json, whose preprocessing the export applies to raw "
        "inputs (default: found beside the model, else min-max and no downsampling)",
    )
    parser.add_argument(
        "--untiled",
        action="store_true",
        help="run the network and the warps in one piece (more memory; default: slab-wise)",
    )
    parser.add_argument(
        "--xla",
        action="store_true",
        help="compile the signatures with XLA (jit_compile); implies --untiled",
    )
    cli.add_verbose_argument(parser)
    args, code = cli.parse_args(parser, argv)
    if args is None:
        return code
    cli.setup_logging(args.verbose)
    try:
        path = export_saved_model(
            args.model,
            args.base_dir,
            args.name,
            version=args.version,
            jit_compile=args.xla,
            config=args.config,
            tiled=not (args.untiled or args.xla),
        )
    except cli.BAD_INPUT as error:
        return cli.report_error(error)
    print(path)
    return cli.EXIT_OK


if __name__ == "__main__":
    cli.run_main("vxmtf.export", main)
