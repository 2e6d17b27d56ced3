"""`Registrator`: register one pair of volumes of any size with a trained VoxelMorph model.

The pair is prepared exactly as the model's training run prepared its inputs
(`vxmtf.training.data.TrainingData`): intensities normalised (`config.data.normalize`), block-mean
downsampled by `config.data.downsample`, zero-padded (centred) to the model's size multiple. The
predicted displacement is cropped back and, for a downsampled run, resized to the input grid:

    input (*S)  --normalise, downsample by K-->  (*C), C_k = S_k // K  --pad-->  (*P)
    displacement (*P, ndim)  --crop-->  (*C, ndim)  --resize, vectors * K-->  (*S, ndim)

Resizing uses the voxel-centre convention of the downsampling (coarse voxel `i` sits at fine
coordinate `K i + (K - 1) / 2`; `vxmtf.ops.rescale_field` to `K * C`), and the trailing
`S_k - K C_k` voxels the coarse grid does not cover take the value of the last covered voxel.

The returned displacement is in voxels of the input grid, component k along axis k, with
`moved[x] = moving[x + displacement[x]]` (Balakrishnan et al., "VoxelMorph: a learning framework
for deformable medical image registration", IEEE TMI 38(8), 2019).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from vxmtf.data.preprocess import PreprocessConfig, preprocess_image
from vxmtf.networks.tiled import check_slab, default_slab, tiled_displacement
from vxmtf.networks.vxm_dense import VxmDense
from vxmtf.ops import identity_grid, resample, rescale_field, warp
from vxmtf.training.config import RunConfig

logger = logging.getLogger(__name__)

#: Bytes of temporaries per output voxel of a 3D N-linear warp (`vxmtf.ops.resample` holds the
#: coordinates, and indices and weights of each axis and corner, as separate tensors).
WARP_BYTES_PER_VOXEL = 128
#: Temporaries of one chunk of a warp by rows (`Registrator.warp(..., rows=warp_rows(shape))`).
WARP_CHUNK_BYTES = 128 * 2**20

#: Folders above a SavedModel version searched for the run's `config.json`
#: (`<run>/export/<name>/<version>` -> `<run>` is three levels up).
_CONFIG_LEVELS = 3


@dataclasses.dataclass
class Registration:
    """The result of registering one pair.

    Attributes:
        displacement: `(*spatial, ndim)` float32 on the input grid, in its voxels.
        moved: `(*spatial)` float32, the moving image (its own intensities, not normalised)
            warped N-linearly by `displacement`, border clamped.
        seconds: wall time of the registration (preprocessing, model, resizing, warp).
    """

    displacement: np.ndarray
    moved: np.ndarray
    seconds: float


def resolve_model_path(path) -> Path:
    """The model file or SavedModel version folder that `path` names.

    Accepts a `.keras` file, a SavedModel folder (holding `saved_model.pb`), a folder of numbered
    SavedModel versions (`<base>/<name>`; the largest number wins, as TF Serving does), or a
    training run folder holding `best.keras` (else `last.keras`).

    Raises:
        FileNotFoundError: nothing exists at `path`.
        ValueError: `path` exists but is none of the above.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Model not found: {path}")
    if path.is_file():
        if path.suffix == ".keras":
            return path
    elif (path / "saved_model.pb").is_file():
        return path
    else:
        versions = [
            p for p in path.iterdir() if p.name.isdigit() and (p / "saved_model.pb").is_file()
        ]
        if versions:
            return max(versions, key=lambda p: int(p.name))
        for name in ("best.keras", "last.keras"):
            if (path / name).is_file():
                return path / name
    raise ValueError(
        f"{path} is not a model: expected a .keras file, a SavedModel folder (holding "
        "saved_model.pb), a folder of numbered SavedModel versions or a training run folder "
        f"(holding best.keras). Received: model={path}"
    )


def find_run_config(model_path) -> Path | None:
    """The `config.json` of the run that produced a model, or None.

    Looked for next to a `.keras` file (`<name>.config.json` first, so that several shipped
    models can share a folder, as in `pretrained/`, then `config.json`), and in a SavedModel
    version folder and up to three folders above it (`<run>/export/<name>/<version>`).
    """
    path = Path(model_path)
    if path.is_file() and path.with_suffix(".config.json").is_file():
        return path.with_suffix(".config.json")
    folders = [path.parent] if path.is_file() else [path, *path.parents[:_CONFIG_LEVELS]]
    for folder in folders:
        if (folder / "config.json").is_file():
            return folder / "config.json"
    return None


def load_run_config(path) -> RunConfig:
    """Reads a run's `config.json`, naming the file in any error.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a run configuration.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Run configuration not found: {path}")
    try:
        return RunConfig.load(path)
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError(
            f"Could not read the run configuration {path}: expected the config.json a training "
            f"run writes. Received: error={type(error).__name__}: {error}"
        ) from error


def resize_displacement(displacement, shape, factor):
    """Brings a displacement from a grid downsampled by `factor` back to the full grid.

    With `C_k = shape_k // factor`, the field `(*C, ndim)` is resized to `(*(factor * C), ndim)`
    by `vxmtf.ops.rescale_field` (fine voxel `y` reads coarse position `(y + 0.5) / K - 0.5`,
    N-linearly, border clamped; vectors times `K`), then the `shape_k - K C_k` voxels past the
    coarse grid repeat the last row (edge padding), matching the downsampling that dropped them.

    Args:
        displacement: `(*C, ndim)` in coarse voxels.
        shape: the full spatial shape `S`.
        factor: the integer downsampling factor `K >= 1`.

    Returns:
        `(*S, ndim)` float32 in full-grid voxels.
    """
    displacement = np.asarray(displacement, np.float32)
    shape = tuple(int(s) for s in shape)
    coarse = tuple(s // factor for s in shape)
    if displacement.shape != (*coarse, len(shape)):
        raise ValueError(
            f"Expected a displacement of shape {(*coarse, len(shape))} (the grid {shape} "
            f"downsampled by {factor}). Received: displacement.shape={displacement.shape}"
        )
    if factor == 1:
        return displacement
    covered = tuple(factor * c for c in coarse)
    fine = rescale_field(displacement[None], out_shape=covered).numpy()[0]
    widths = [(0, s - c) for s, c in zip(shape, covered, strict=True)] + [(0, 0)]
    return np.pad(fine, widths, mode="edge")


def warp_rows(shape):
    """Rows (first axis) per chunk of a warp of a `shape` volume: `WARP_CHUNK_BYTES` of
    temporaries, at least 1."""
    row_voxels = int(np.prod(shape[1:]))
    return max(1, WARP_CHUNK_BYTES // (WARP_BYTES_PER_VOXEL * row_voxels))


@contextlib.contextmanager
def _float32_policy():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


class Registrator:
    """Registers pairs of NumPy volumes with a `.keras` model or an exported SavedModel.

    Args:
        model: a `VxmDense`, or a path accepted by `resolve_model_path`.
        config: the run's `RunConfig` or the path of its `config.json`; None looks for
            `config.json` beside the model (`find_run_config`) and, if there is none, assumes
            min-max normalisation and no downsampling (logged as a warning).
        tiled: low-memory registration, the same results: compute the displacement of a Keras
            model slab by slab along the first axis (`vxmtf.networks.tiled_displacement`) and
            warp images by chunks of rows (`warp_rows`); at 160x192x224 the whole process then
            peaks at about 2.3 GB instead of 5.6 GB. False runs the model and each warp in one
            piece. A SavedModel always runs its exported graph (only its warps are chunked).
        slab: rows per slab for `tiled` (at least `vxmtf.networks.min_slab(model)`, 5 for the
            default network); None chooses it per input shape with `default_slab` (at most
            about 0.4 GB of full-resolution working tensors per slab, and at least 4 slabs:
            18 rows at 160x192x224, 20 at 80x96x112).

    Attributes:
        ndim: 2 or 3. `downsample`, `normalize`: the run's preprocessing.
        model_path, config_path: where the model and its configuration came from (or None).
        config: the `RunConfig` (or None). `inshape`: the model's input shape (None sizes
            free) for a Keras model, None for a SavedModel.
        tiled, slab: the arguments (`slab` None: automatic).

    Raises:
        FileNotFoundError, ValueError: the model or configuration is missing or unreadable.
        TypeError: a `.keras` file holding something else than a `VxmDense`, or `tiled` not a
            bool.
        ValueError: a `slab` below the model's minimum, or a `slab` without tiling (`tiled`
            False or a SavedModel).
    """

    def __init__(self, model, config=None, tiled=True, slab=None):
        if not isinstance(tiled, bool):
            raise TypeError(f"`tiled` must be True or False. Received: tiled={tiled!r}")
        if slab is not None and not tiled:
            raise ValueError(
                "`slab` sets the rows per slab of tiled inference; it needs tiled=True. "
                f"Received: tiled={tiled}, slab={slab!r}"
            )
        self.tiled = tiled
        self.slab = slab
        self.model_path = None
        if isinstance(model, (str, os.PathLike)):
            self.model_path = resolve_model_path(model)
        if config is None and self.model_path is not None:
            config = find_run_config(self.model_path)
        self.config_path = Path(config) if isinstance(config, (str, os.PathLike)) else None
        self.config = load_run_config(config) if self.config_path else config
        if self.config is not None and not isinstance(self.config, RunConfig):
            raise TypeError(
                f"Expected `config` to be a RunConfig or a path. Received: config={config!r}"
            )
        if self.config is None:
            logger.warning(
                "No config.json for model %s: assuming minmax normalisation, no downsampling",
                self.model_path or getattr(model, "name", model),
            )
        self.normalize = self.config.data.normalize if self.config else "minmax"
        self.downsample = int(self.config.data.downsample) if self.config else 1

        self.inshape = None
        if self.model_path is not None and self.model_path.is_dir():
            if slab is not None:
                raise ValueError(
                    f"`slab` applies to Keras models; {self.model_path} is a SavedModel, which "
                    f"runs its exported graph. Received: slab={slab!r}"
                )
            self._load_saved_model(self.model_path)
        else:
            if self.model_path is not None:
                model = self._load_keras(self.model_path)
            self._use_keras(model)

    def _load_keras(self, path):
        try:
            return keras.models.load_model(path, compile=False)
        except Exception as error:  # Keras raises many types for a bad archive.
            raise ValueError(
                f"Could not load the Keras model {path}: expected a .keras file saved by vxmtf. "
                f"Received: error={type(error).__name__}: {error}"
            ) from error

    def _use_keras(self, model):
        if not isinstance(model, VxmDense):
            raise TypeError(
                "Expected a vxmtf.networks.VxmDense model. "
                f"Received: model of type {type(model).__name__}"
            )
        self.inshape = tuple(model.inshape)
        self.ndim = len(self.inshape)
        self.multiple = model.size_multiple
        # A copy with free spatial sizes, in float32, holding the trained weights.
        config = model.get_config()
        config.update(inshape=(None,) * self.ndim, bidir=False)
        with _float32_policy():
            clone = VxmDense.from_config(config)
        for layer in clone.layers:
            if layer.weights:
                layer.set_weights(model.get_layer(layer.name).get_weights())
        spec = tf.TensorSpec((None,) * (self.ndim + 1) + (1,), tf.float32)
        if not self.tiled:

            @tf.function(input_signature=[spec, spec])
            def predict(moving, fixed):
                return clone([moving, fixed], training=False)["displacement"]

            self._predict = predict
            return
        if self.slab is not None:
            check_slab(self.slab, clone)

        @tf.function(input_signature=[spec, spec, tf.TensorSpec([], tf.int32)])
        def predict_tiled(moving, fixed, slab):
            return tiled_displacement(clone, moving, fixed, slab=slab)

        def predict(moving, fixed):
            # The slab is an argument, not a constant: one graph serves every input shape.
            slab = self.slab or default_slab(tuple(moving.shape), clone)
            return predict_tiled(moving, fixed, tf.constant(slab, tf.int32))

        self._predict = predict

    def _load_saved_model(self, path):
        try:
            loaded = tf.saved_model.load(str(path))
        except Exception as error:  # TensorFlow raises many types for a bad SavedModel.
            raise ValueError(
                f"Could not load the SavedModel {path}. "
                f"Received: error={type(error).__name__}: {error}"
            ) from error
        signature = loaded.signatures.get("serving_default")
        inputs = {} if signature is None else signature.structured_input_signature[1]
        if set(inputs) != {"moving", "fixed"}:
            raise ValueError(
                f"{path} is not a vxmtf export: expected a serving_default(moving, fixed) "
                f"signature. Received: inputs={sorted(inputs)}"
            )
        self._saved_model = loaded  # keeps the variables alive
        self.ndim = inputs["moving"].shape.rank - 2
        self.multiple = 1  # the export pads inside its graph

        def predict(moving, fixed):
            return signature(moving=moving, fixed=fixed)["displacement"]

        self._predict = predict

    @property
    def preprocess(self) -> PreprocessConfig:
        """How each image is prepared (the padding multiple is 1 for a SavedModel)."""
        return PreprocessConfig(
            normalize=self.normalize, downsample=self.downsample, multiple=self.multiple
        )

    def check_pair(self, moving, fixed):
        """Raises ValueError unless `moving` and `fixed` are two volumes on one grid of the
        model's dimensionality, large enough for its downsampling."""
        for name, image in (("moving", moving), ("fixed", fixed)):
            if np.ndim(image) != self.ndim:
                raise ValueError(
                    f"The model registers {self.ndim}D volumes; expected `{name}` of rank "
                    f"{self.ndim}. Received: {name}.shape={np.shape(image)}"
                )
        if np.shape(moving) != np.shape(fixed):
            raise ValueError(
                "Expected `moving` and `fixed` on one voxel grid: the model compares them voxel "
                "by voxel, so pairs must be affinely pre-aligned and resampled to a common grid "
                f"first. Received: moving.shape={np.shape(moving)}, fixed.shape={np.shape(fixed)}"
            )
        if min(np.shape(moving)) < self.downsample:
            raise ValueError(
                f"Volume too small for the run's downsampling by {self.downsample}. "
                f"Received: shape={np.shape(moving)}"
            )

    def register(self, moving, fixed) -> Registration:
        """Registers `moving` onto `fixed`, two arrays of the same shape `(*spatial)`.

        Returns:
            A `Registration` with the displacement on the input grid and the moved image.
        """
        start = time.perf_counter()
        self.check_pair(moving, fixed)
        shape = np.shape(fixed)
        preprocess = self.preprocess
        prepared = []
        for image in (moving, fixed):
            array, padding = preprocess_image(image, preprocess)
            prepared.append(tf.constant(array[None, ..., None]))
        displacement = self._predict(*prepared).numpy()[0]  # (*P, ndim)
        displacement = padding.undo(displacement)  # (*C, ndim)
        displacement = resize_displacement(displacement, shape, self.downsample)
        moved = self.warp(moving, displacement, rows=warp_rows(shape) if self.tiled else None)
        return Registration(displacement, moved, time.perf_counter() - start)

    @staticmethod
    def warp(image, displacement, interpolation="linear", rows=None):
        """`out[x] = image[x + displacement[x]]` for one `(*spatial)` volume.

        "linear" returns float32; "nearest" keeps an integer label map's dtype. `rows` None
        warps the whole volume at once; an int >= 1 computes `rows` output rows (first axis) at
        a time, each reading the whole image: the same values, with the interpolation's
        temporaries (about `WARP_BYTES_PER_VOXEL`) held for one chunk only.
        """
        image = np.asarray(image)
        displacement = np.asarray(displacement, np.float32)
        if image.shape != displacement.shape[:-1] or displacement.shape[-1] != image.ndim:
            raise ValueError(
                f"Expected a displacement of shape {(*image.shape, image.ndim)} for an image of "
                f"shape {image.shape}. Received: displacement.shape={displacement.shape}"
            )
        if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 1):
            raise ValueError(f"`rows` must be None or an int >= 1. Received: rows={rows!r}")
        if interpolation == "linear":
            source = image.astype(np.float32)
        elif np.issubdtype(image.dtype, np.integer) or image.dtype == np.bool_:
            source = image.astype(np.int32)
        else:
            source = image
        if rows is None or rows >= image.shape[0]:
            out = warp(source[None, ..., None], displacement[None], interpolation=interpolation)
            out = out.numpy()[0, ..., 0]
        else:
            source = tf.constant(source[None, ..., None])  # (1, *spatial, 1)
            out = np.empty(image.shape, source.dtype.as_numpy_dtype)
            for first in range(0, image.shape[0], rows):
                part = displacement[first : first + rows]  # (rows, *rest, ndim)
                # Coordinates of these rows: the identity grid shifted by `first` along axis 0
                # (exact integers, so the sum equals `vxmtf.ops.warp`'s grid + displacement).
                offset = np.zeros(image.ndim, np.float32)
                offset[0] = first
                coords = identity_grid(part.shape[:-1]) + offset + part
                values = resample(source, coords[None], interpolation=interpolation)
                out[first : first + rows] = values.numpy()[0, ..., 0]
        return out if interpolation == "linear" else out.astype(image.dtype)

    def warp_labels(self, labels, displacement):
        """Nearest-neighbour warp of a label map, keeping its dtype (labels are never mixed);
        by chunks of rows when `tiled` (`warp_rows`)."""
        rows = warp_rows(np.shape(labels)) if self.tiled else None
        return self.warp(labels, displacement, interpolation="nearest", rows=rows)
