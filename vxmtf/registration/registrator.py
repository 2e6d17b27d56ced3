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

import dataclasses
import logging
import os
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from vxmtf.affine import register_affine
from vxmtf.checks import check_bool
from vxmtf.data.finite import check_finite
from vxmtf.data.geometry import compose_displacement, resample_to_grid, sample_through
from vxmtf.data.preprocess import (
    PreprocessConfig,
    normalize_intensity,
    preprocess_image,
    resize_displacement,
)
from vxmtf.ops import warp, warp_rows
from vxmtf.refine import RefineConfig, refine_field
from vxmtf.registration.predictors import make_predictor
from vxmtf.training.config import RunConfig
from vxmtf.training.run_folder import find_run_config, load_run_config, resolve_model_path

logger = logging.getLogger(__name__)

__all__ = ["Registration", "Registrator", "warp_volume"]


@dataclasses.dataclass
class Registration:
    """The result of registering one pair.

    Attributes:
        displacement: `(*spatial, ndim)` float32 on the fixed grid, in its voxels. With an
            affine stage, the composed transform (the deformable field, then the affine).
        moved: `(*spatial)` float32, the moving image (its own intensities, not normalised)
            read N-linearly at `x + displacement[x]`, border clamped.
        seconds: wall time of the registration (affine stage, preprocessing, model,
            refinement, resizing, warp).
        mapping: None when moving and fixed share a grid; else the `(ndim + 1, ndim + 1)` map
            from fixed voxel to moving voxel coordinates (`A_moving^-1 A_fixed`): the moving
            image is read at `mapping (x + displacement[x])` (`warp_moving`).
        affine: the `vxmtf.affine.AffineResult` of the affine stage, or None.
        refinement: the loss history of test-time refinement (`vxmtf.refine.refine_field`),
            or None.
    """

    displacement: np.ndarray
    moved: np.ndarray
    seconds: float
    mapping: np.ndarray | None = None
    affine: object | None = None
    refinement: dict | None = None

    def warp_moving(self, array, interpolation="linear"):
        """A volume of the moving grid (image, or label map with "nearest") read through this
        registration onto the fixed grid; label maps are 0 outside the moving field of view."""
        if self.mapping is None:
            return warp_volume(array, self.displacement, interpolation)
        order = 1 if interpolation == "linear" else 0
        return sample_through(array, self.displacement, self.mapping, order, None if order else 0)


def warp_volume(image, displacement, interpolation="linear", rows=None):
    """`out[x] = image[x + displacement[x]]` for one `(*spatial)` NumPy volume
    (`vxmtf.ops.warp`, border clamped).

    "linear" returns float32; "nearest" keeps an integer label map's dtype (labels are never
    mixed). `rows`: None warps the whole volume at once; an int >= 1 computes that many output
    rows (first axis) at a time (`vxmtf.ops.warp`'s `rows`; `vxmtf.ops.warp_rows` chooses it).

    Raises:
        ValueError: a displacement that is not `(*image.shape, image.ndim)`, or a bad `rows`.
    """
    image = np.asarray(image)
    displacement = np.asarray(displacement, np.float32)
    if image.shape != displacement.shape[:-1] or displacement.shape[-1] != image.ndim:
        raise ValueError(
            f"Expected a displacement of shape {(*image.shape, image.ndim)} for an image of "
            f"shape {image.shape}. Received: displacement.shape={displacement.shape}"
        )
    if interpolation == "linear":
        source = image.astype(np.float32)
    elif np.issubdtype(image.dtype, np.integer) or image.dtype == np.bool_:
        source = image.astype(np.int32)
    else:
        source = image
    if rows is not None and not isinstance(rows, bool) and isinstance(rows, int):
        rows = None if rows >= image.shape[0] else rows
    out = warp(
        tf.constant(source[None, ..., None]),
        displacement[None],
        interpolation=interpolation,
        rows=rows,
    )
    out = out.numpy()[0, ..., 0]
    return out if interpolation == "linear" else out.astype(image.dtype)


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
        refine: test-time refinement of the network's field on each pair (`vxmtf.refine`): a
            `RefineConfig`, a dict of its fields, or an int (its `steps`); None or 0: the
            network alone. The objective is the model's (its run's image loss, window and
            lambda; `int_steps` and `int_resolution` of the model itself). Keras models only.
        affine: an affine stage before the deformable model (`vxmtf.affine.register_affine`,
            in world coordinates from both volumes' affines): True, or a dict of its keyword
            arguments (`transform`, `metric`, ...); None or False: the pair is affinely aligned
            already.
        precision: "float32", or "bfloat16" to run a Keras model's U-Net in bfloat16 (fields,
            integration, warps and refinement stay float32): faster on CPUs with AVX512_BF16
            or AMX and on GPUs, with Dice within about 0.005 of float32 (benchmarks/NOTES.md).

    Attributes:
        ndim: 2 or 3. `downsample`, `normalize`: the run's preprocessing.
        model_path, config_path: where the model and its configuration came from (or None).
        model_name: how errors name the model (its path, else the Keras model's name).
        config: the `RunConfig` (or None). `inshape`: the model's input shape (None sizes
            free) for a Keras model, None for a SavedModel.
        tiled, slab, precision: the arguments (`slab` None: automatic).

    Raises:
        FileNotFoundError, ValueError: the model or configuration is missing or unreadable.
        TypeError: a `.keras` file holding something else than a `VxmDense`, or `tiled` not a
            bool.
        ValueError: a `slab` below the model's minimum, a `slab` without tiling (`tiled`
            False or a SavedModel), bad refinement or affine options, refinement with a
            SavedModel, an unknown `precision` or bfloat16 with a SavedModel.
    """

    def __init__(
        self,
        model,
        config=None,
        tiled=True,
        slab=None,
        refine=None,
        affine=None,
        precision="float32",
    ):
        check_bool("tiled", tiled)
        if slab is not None and not tiled:
            raise ValueError(
                "`slab` sets the rows per slab of tiled inference; it needs tiled=True. "
                f"Received: tiled={tiled}, slab={slab!r}"
            )
        self.tiled = tiled
        self.slab = slab
        self.model_path = None
        if isinstance(model, (str, os.PathLike)):
            model = self.model_path = resolve_model_path(model)
        #: How errors name the model: its path, else the Keras model's name.
        self.model_name = str(self.model_path or getattr(model, "name", type(model).__name__))
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
        self.predictor = make_predictor(model, tiled=tiled, slab=slab, precision=precision)
        self.precision = precision
        self.ndim = self.predictor.ndim
        self.multiple = self.predictor.multiple
        self.inshape = self.predictor.inshape
        self.refine = _refine_config(refine)
        if self.refine.enabled and not hasattr(self.predictor, "model"):
            raise ValueError(
                "Test-time refinement optimises the network's field, which a SavedModel does "
                "not return: expected a .keras model (or a run folder) for refinement. "
                f"Received: model={self.model_path}, refine_steps={self.refine.steps}"
            )
        self.affine = _affine_options(affine)

    def settings(self) -> dict:
        """What this registrator does beyond the network, for reports (`summary.json`)."""
        return {
            "refine": self.refine.to_dict() if self.refine.enabled else None,
            "affine": self.affine,
            "precision": self.precision,
        }

    @property
    def preprocess(self) -> PreprocessConfig:
        """How each image is prepared (the padding multiple is 1 for a SavedModel)."""
        if self.config is not None:
            return self.config.data.preprocess(self.multiple)
        return PreprocessConfig(normalize=self.normalize, multiple=self.multiple)

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

    def register(
        self, moving, fixed, moving_affine=None, fixed_affine=None, names=None
    ) -> Registration:
        """Registers `moving` onto `fixed`, two arrays of the same shape `(*spatial)`; with an
        affine stage, volumes of any grids with their voxel-to-world `(4, 4)` affines (`names`:
        how the affine stage's errors name the two, e.g. their files).

        Returns:
            A `Registration` with the displacement on the fixed grid and the moved image.

        Raises:
            ValueError: volumes of the wrong rank or of different shapes (without an affine
                stage), affines missing for the affine stage, a failed affine stage, or a
                non-finite displacement (NaN or Inf: non-finite model weights or inputs, or a
                diverged refinement; the error names the model).
        """
        start = time.perf_counter()
        for name, image in zip(names or ("moving", "fixed"), (moving, fixed), strict=True):
            check_finite(image, f"`{name}`")
        if self.affine is not None:
            names = names or ("moving", "fixed")
            return self._register_affine(moving, fixed, moving_affine, fixed_affine, names, start)
        return self._register_aligned(moving, fixed, start)

    def _register_aligned(self, moving, fixed, start, warp_moving=True) -> Registration:
        """The deformable registration of a pair on one grid (the network, refined); without
        `warp_moving`, the moved image is not computed (`moved` is None)."""
        self.check_pair(moving, fixed)
        if getattr(self.predictor, "prepares_inputs", False):
            # The SavedModel normalises, downsamples, registers, resizes and warps in its graph.
            displacement, moved = self.predictor.register_raw(moving, fixed)
            self._check_finite(displacement, moving, fixed)
            return Registration(displacement, moved, time.perf_counter() - start)
        shape = np.shape(fixed)
        preprocess = self.preprocess
        prepared = []
        for image in (moving, fixed):
            array, padding = preprocess_image(image, preprocess)
            prepared.append(tf.constant(array[None, ..., None]))
        history = None
        if self.refine.enabled:
            field, displacement, history = self._refined(*prepared)
        else:
            displacement = self.predictor(*prepared)
        if self.refine.full_stage_steps:
            displacement, history = self._refined_full(moving, fixed, padding, field, history)
        else:
            displacement = padding.undo(displacement.numpy()[0])  # (*P, ndim) -> (*C, ndim)
            displacement = resize_displacement(displacement, shape, self.downsample)
        self._check_finite(displacement, moving, fixed)
        moved = None
        if warp_moving:
            rows = warp_rows(shape) if self.tiled else None
            moved = warp_volume(moving, displacement, rows=rows)
        return Registration(displacement, moved, time.perf_counter() - start, refinement=history)

    def _check_finite(self, displacement, moving, fixed):
        """Raises ValueError unless every displacement value is finite (a NaN or Inf field,
        from non-finite weights or a diverged refinement, is never returned or written)."""
        displacement = np.asarray(displacement)
        bad = int(np.count_nonzero(~np.isfinite(displacement)))
        if not bad:
            return
        inputs = [
            f"{name} has {count} non-finite voxels"
            for name, image in (("moving", moving), ("fixed", fixed))
            if (count := int(np.count_nonzero(~np.isfinite(np.asarray(image, np.float32)))))
        ]
        if inputs:
            cause = f"the inputs are not finite ({', '.join(inputs)})"
        elif self.refine.enabled:
            cause = (
                "non-finite weights, or a refinement that diverged (try a smaller learning rate)"
            )
        else:
            cause = "its weights are probably not finite (a training run that diverged)"
        raise ValueError(
            f"The model {self.model_name} gave a non-finite displacement: expected finite "
            f"values; {cause}. Received: {bad} of {displacement.size} displacement values "
            "NaN or Inf"
        )

    def _refined(self, moving, fixed):
        """The network's field for the prepared pair, refined on it (`vxmtf.refine`)."""
        options = self._objective_of_model(self.refine.kwargs(self.config))
        field = self.predictor.field(moving, fixed)
        field, displacement, history = refine_field(moving, fixed, field, **options)
        return field, displacement, history

    def _objective_of_model(self, options):
        model = self.predictor.model
        coarse = model.int_steps > 0 and model.int_resolution > 1
        options.update(
            int_steps=model.int_steps, grad_mult=float(model.int_resolution) if coarse else 1.0
        )
        return options

    def _refined_full(self, moving, fixed, padding, field, history):
        """The last steps of refinement (`full_steps`, `full_fine_steps`) against the images at
        their own resolution.

        The run's grid is `C = S // K` padded to `P` (`padding`); at full resolution the same
        region is the first `K C` voxels of each axis padded by `K` times as much, so the field
        (on the model's grid, or its velocity grid) is refined against images of `K P` voxels
        and its displacement, in full-resolution voxels, cropped back and edge-padded to `S`
        (the voxels past `K C` repeat the last covered row, as `resize_displacement` does).
        """
        k = self.downsample
        shape = np.shape(fixed)
        if min(padding.before + padding.after) < 0:
            raise ValueError(
                "Full-resolution refinement needs the run's grid padded, not cropped, to the "
                f"size multiple. Received: padding before={padding.before}, "
                f"after={padding.after}"
            )
        covered = tuple(slice(0, k * (n // k)) for n in shape)
        widths = [(k * b, k * a) for b, a in zip(padding.before, padding.after, strict=True)]
        images = []
        for image in (moving, fixed):
            preprocess = self.preprocess
            array = normalize_intensity(image, preprocess.normalize, preprocess.percentiles)
            array = array[covered]
            images.append(tf.constant(np.pad(array, widths)[None, ..., None]))
        options = self._objective_of_model(self.refine.full_kwargs(self.config))
        _, displacement, full = refine_field(*images, field, **options)
        region = tuple(
            slice(k * b, k * b + k * (n // k)) for b, n in zip(padding.before, shape, strict=True)
        )
        displacement = displacement.numpy()[0][region]  # (*(K C), ndim)
        edge = [(0, n - k * (n // k)) for n in shape] + [(0, 0)]
        displacement = np.pad(displacement, edge, mode="edge")
        history = {key: np.concatenate([history[key], full[key][1:]]) for key in history}
        return displacement, history

    def _register_affine(self, moving, fixed, moving_affine, fixed_affine, names, start):
        """The affine stage, then the deformable registration of the affinely aligned pair on
        the fixed grid; the result holds the composed field (`Registration`)."""
        for name, image, matrix in (
            ("moving", moving, moving_affine),
            ("fixed", fixed, fixed_affine),
        ):
            if np.ndim(image) != self.ndim:
                raise ValueError(
                    f"The model registers {self.ndim}D volumes; expected `{name}` of rank "
                    f"{self.ndim}. Received: {name}.shape={np.shape(image)}"
                )
            if matrix is None:
                raise ValueError(
                    f"The affine stage works in world coordinates: expected `{name}_affine`, "
                    f"the voxel-to-world matrix of `{name}`. Received: {name}_affine=None"
                )
        options = {"names": names, **self.affine}
        affine = register_affine(moving, moving_affine, fixed, fixed_affine, **options)
        voxel_map = affine.voxel_matrix()  # fixed voxel -> moving voxel
        source = np.asarray(moving, np.float32)
        aligned = resample_to_grid(source, voxel_map, np.shape(fixed), 1, float(source.min()))
        # The moved image is read from the original scan through the composed field below.
        deformable = self._register_aligned(aligned, fixed, start, warp_moving=False)
        # Fixed voxel x -> P (x + u(x)) in fixed voxels, P = A_fixed^-1 T A_fixed.
        fixed_frame = np.linalg.inv(affine.fixed_affine) @ affine.matrix @ affine.fixed_affine
        composed = compose_displacement(deformable.displacement, fixed_frame)
        mapping = np.linalg.inv(affine.moving_affine) @ affine.fixed_affine
        moved = sample_through(source, composed, mapping, order=1)
        return Registration(
            composed,
            moved,
            time.perf_counter() - start,
            mapping=mapping,
            affine=affine,
            refinement=deformable.refinement,
        )

    #: `warp_volume`, also reachable as a static method.
    warp = staticmethod(warp_volume)

    def warp_labels(self, labels, displacement, mapping=None):
        """Nearest-neighbour warp of a label map, keeping its dtype (labels are never mixed);
        by chunks of rows when `tiled` (`warp_rows`). With a `mapping` (`Registration.mapping`:
        the label map lies on the moving grid), read through it, 0 outside."""
        if mapping is not None:
            return sample_through(labels, displacement, mapping, order=0, fill=0)
        rows = warp_rows(np.shape(labels)) if self.tiled else None
        return warp_volume(labels, displacement, interpolation="nearest", rows=rows)


def _refine_config(refine) -> RefineConfig:
    if refine is None:
        return RefineConfig()
    if isinstance(refine, RefineConfig):
        return refine
    if isinstance(refine, dict):
        return RefineConfig.from_dict(refine)
    if isinstance(refine, int) and not isinstance(refine, bool):
        return RefineConfig(steps=refine)
    raise TypeError(
        "`refine` must be None, a number of steps, a RefineConfig or a dict of its fields. "
        f"Received: refine={refine!r}"
    )


def _affine_options(affine) -> dict | None:
    if affine is None or affine is False:
        return None
    if affine is True:
        return {}
    if isinstance(affine, dict):
        return dict(affine)
    raise TypeError(
        "`affine` must be None, True or False, or a dict of vxmtf.affine.register_affine "
        f"keyword arguments. Received: affine={affine!r}"
    )
