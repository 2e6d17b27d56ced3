"""Export a trained `VxmDense` as a SavedModel laid out for TensorFlow Serving.

`export_saved_model` writes `<base_dir>/<model_name>/<version>/` (`saved_model.pb` and
`variables/`), the layout `tensorflow_model_server --model_base_path=<base_dir>/<model_name>`
watches. The export holds two signatures, built only from standard TensorFlow ops (no Python
functions, no custom ops), so TF Serving, the C/C++ SavedModel loader or `tf.saved_model.load`
run it without `vxmtf` installed:

    serving_default(moving, fixed) -> {moved, displacement}
        moving, fixed: float32 `(batch, *spatial, 1)`, batch and spatial sizes free.
        The pair is zero-padded (padding split evenly, the odd voxel after) to the next multiple
        of `lcm(2 ** len(enc_features), int_resolution)` per axis, registered, and the
        displacement cropped back: `(batch, *spatial, ndim)` float32, in voxels of the input
        grid, `moved[x] = moving[x + displacement[x]]`. `moved` is `moving` warped N-linearly by
        that cropped field (border clamped, as the Keras model does on unpadded inputs), so the
        zero padding never leaks into it.
    warp(image, displacement) -> {warped}
        image: float32 `(batch, *spatial, channels)`; displacement: float32
        `(batch, *spatial, ndim)`. Nearest-neighbour warp, for label maps.

The graph is traced from a float32 copy of the architecture with free spatial sizes, holding the
trained weights; so one export serves volumes of any size, whatever size the model was trained
on, and computes in float32 even if the model was trained under `mixed_float16`.

Command line: `python -m vxmtf.export --model model.keras --base-dir models [--version N]`.
"""

import argparse
import errno
import logging
import re
from pathlib import Path

import tensorflow as tf

import vxmtf_cli as cli
from vxmtf.atomic import atomic_path
from vxmtf.checks import check_int
from vxmtf.networks.loading import as_vxm_dense, float32_clone
from vxmtf.ops.resample import warp

logger = logging.getLogger(__name__)

_VERSION_NAME = re.compile(r"^[0-9]+$")


def export_saved_model(model, base_dir, model_name="vxm", version=None, jit_compile=False):
    """Write `model` as `<base_dir>/<model_name>/<version>/` for TensorFlow Serving.

    The version folder appears atomically: the SavedModel is written into a hidden sibling
    (`.tmp-...`, a name TF Serving ignores) and renamed into place once complete; on any error
    the temporary folder is removed, so no half-written version is ever visible.

    Args:
        model: a `vxmtf.networks.VxmDense`, or the path of a `.keras` file holding one.
        base_dir: folder of exported models; created if missing.
        model_name: sub-folder for this model (TF Serving's `--model_name`).
        version: integer version >= 0; None takes one more than the largest existing version
            (1 if there is none).
        jit_compile: compile both signatures with XLA. Can be faster, but the model server
            must be built with XLA (the TensorFlow pip package and the C library it ships are;
            check your `tensorflow_model_server` build), each new input shape is compiled on
            its first request, and XLA skips the input shape checks (Assert ops).

    Returns:
        `Path` of the new version folder.

    Raises:
        NotVxmDenseError (a TypeError): `model` is not a `VxmDense` (or the file does not hold
            one).
        FileNotFoundError, ValueError: the model file is missing or unreadable.
        ValueError: `version` is not a non-negative integer, or `model_name` is not a plain name.
        FileExistsError: that version already exists (the error names its path).
        OSError: `base_dir` cannot be created or written (raised by the file system, with the
            path).
    """
    model = as_vxm_dense(model)
    if version is not None:
        check_int("version", version, minimum=0)
    if not model_name or Path(model_name).name != model_name or model_name.startswith("."):
        raise ValueError(
            "`model_name` must be a plain folder name (no separators, not hidden). "
            f"Received: model_name={model_name!r}"
        )

    model_dir = Path(base_dir) / model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    existing = {int(p.name): p for p in model_dir.iterdir() if _VERSION_NAME.match(p.name)}
    if version is None:
        version = max(existing, default=0) + 1
    target = model_dir / str(version)
    if version in existing:
        raise FileExistsError(errno.EEXIST, "Model version already exists", str(existing[version]))

    module = _ServingModule(float32_clone(model), model.size_multiple, bool(jit_compile))
    # The hidden temporary folder (`.<version>.tmp-...`) is a name TF Serving ignores.
    with atomic_path(target, directory=True) as staging:
        tf.saved_model.save(
            module,
            str(staging),
            signatures={
                "serving_default": module.serve.get_concrete_function(),
                "warp": module.warp.get_concrete_function(),
            },
        )
    logger.info("Exported %s (jit_compile=%s) to %s", model.name, jit_compile, target)
    return target


def padding_multiple(model):
    """Size every spatial axis is padded to a multiple of (`VxmDense.size_multiple`)."""
    return model.size_multiple


class _ServingModule(tf.Module):
    """The two signature functions and the `tf.Variable`s they read.

    Only the variables are tracked, not the Keras model: a Keras 3 variable saved as an object
    is written to the checkpoint as a second `tf.Variable`, which the C++ loader (TF Serving,
    `saved_model_cli`) restores while the functions keep reading the first one, left
    uninitialised ("Could not find variable ..."; keras-team/keras#19274,
    tensorflow/tensorflow#72963). `tf.saved_model.load` hides the problem.
    """

    def __init__(self, clone, multiple, jit_compile):
        super().__init__(name="vxm_serving")
        self.weights = [variable.value for variable in clone.weights]
        ndim = len(clone.inshape)
        volume_shape = (None,) * (ndim + 1) + (1,)  # (batch, *spatial, 1)
        field_shape = (None,) * (ndim + 1) + (ndim,)  # (batch, *spatial, ndim)

        def checked(tensors, a, b, message):
            # The tensors, made to wait for `a == b`. XLA drops Assert ops (warning at each call),
            # so they are left out under jit_compile: a mismatched pair then fails in the U-Net's
            # concatenation, and `warp` samples the image on the displacement's grid.
            if jit_compile:
                return tensors
            with tf.control_dependencies([tf.debugging.assert_equal(a, b, message=message)]):
                return [tf.identity(t) for t in tensors]

        def serve(moving, fixed):
            moving, fixed = checked(
                [moving, fixed], tf.shape(moving), tf.shape(fixed), "`moving` and `fixed` differ"
            )
            sizes = tf.shape(moving)[1 : ndim + 1]  # (ndim,)
            padded = (sizes + multiple - 1) // multiple * multiple
            before = (padded - sizes) // 2
            widths = tf.stack([before, padded - sizes - before], axis=1)  # (ndim, 2)
            paddings = tf.pad(widths, [[1, 1], [0, 0]])  # (ndim + 2, 2): none on batch, channel
            # A dynamic padding loses the static channel size, which the convolutions need.
            outputs = clone(
                {
                    "moving": tf.ensure_shape(tf.pad(moving, paddings), volume_shape),
                    "fixed": tf.ensure_shape(tf.pad(fixed, paddings), volume_shape),
                },
                training=False,
            )
            # Crop (batch, *padded, ndim) back to (batch, *sizes, ndim).
            begin = tf.pad(before, [[1, 1]])
            size = tf.concat([[-1], sizes, [-1]], axis=0)
            displacement = tf.ensure_shape(
                tf.slice(outputs["displacement"], begin, size), field_shape
            )
            moved = warp(moving, displacement, interpolation="linear")
            return {"moved": moved, "displacement": displacement}

        def warp_labels(image, displacement):
            image, displacement = checked(
                [image, displacement],
                tf.shape(image)[: ndim + 1],
                tf.shape(displacement)[: ndim + 1],
                "`image` and `displacement` differ in batch or spatial shape",
            )
            return {"warped": warp(image, displacement, interpolation="nearest")}

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


def main(argv=None):
    """`python -m vxmtf.export`: export a `.keras` VxmDense for TF Serving; prints the folder.

    Returns 0, or 2 on bad input (`error: ...` on stderr)."""
    parser = argparse.ArgumentParser(
        prog="python -m vxmtf.export",
        description="Export a trained VxmDense (.keras) as a SavedModel in TF Serving's layout "
        "<base-dir>/<name>/<version>/.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="path of the trained .keras model")
    parser.add_argument("--base-dir", required=True, help="folder of exported models")
    parser.add_argument("--name", default="vxm", help="model name (sub-folder)")
    parser.add_argument(
        "--version", type=int, default=None, help="version number (default: the next free one)"
    )
    parser.add_argument(
        "--xla", action="store_true", help="compile the signatures with XLA (jit_compile)"
    )
    cli.add_verbose_argument(parser)
    args, code = cli.parse_args(parser, argv)
    if args is None:
        return code
    cli.setup_logging(args.verbose)
    try:
        path = export_saved_model(
            args.model, args.base_dir, args.name, version=args.version, jit_compile=args.xla
        )
    except cli.BAD_INPUT as error:
        return cli.report_error(error)
    print(path)
    return cli.EXIT_OK


if __name__ == "__main__":
    cli.run_main("vxmtf.export", main)
