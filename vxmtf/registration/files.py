"""`register_files`: register one pair of volume files with a trained model, results on the fixed
grid with its affine and header (the library behind `python -m vxmtf.register`).

It works on top of `vxmtf.registration.Registrator` (which prepares the pair as the model's
training run did and pads/crops/downsamples it to the model's grid and back), `vxmtf.data.io`
(which keeps each file's affine and header) and `vxmtf.data.geometry` (grids and ITK fields).
Inputs may be NIfTI (`.nii`, `.nii.gz`), `.npz` or `.npy` volumes of any size.

Grids. Everything is computed on, and written to, the fixed image's voxel grid with the fixed
file's affine and header:

- same shape, and the same affine (every entry within `AFFINE_TOLERANCE`) or a file without
  one (`.npy`, `.npz` without `affine`): voxel `x` of the moving image is voxel `x` of the fixed
  one, as during training;
- otherwise (3D only) both files must carry an affine, and the moving image (and its label map)
  is resampled onto the fixed grid through world coordinates, moving voxel
  `y = A_moving^-1 A_fixed x` (linear for the image, which takes its own minimum outside its
  field of view; nearest for labels, 0 outside). This maps fields of view and voxel sizes only:
  the pair must already be affinely aligned in world space. A moving image that covers no voxel
  of the fixed grid is an error.

Outputs, on the fixed grid `(X, Y, Z)`:

- `moved` (float32): `moved[x] = moving[x + u[x]]`, N-linear, border clamped;
- `warp` (float32, `(X, Y, Z, 3)`): the displacement `u` in voxels of the fixed grid, component
  `k` along voxel axis `k` (VoxelMorph's convention; Balakrishnan et al., IEEE TMI 38(8), 2019);
- `moved_labels` (the label file's integer dtype): the moving label map warped by `u`, nearest;
- `warp_mm` (float32, `(X, Y, Z, 1, 3)`, NIfTI intent code 1007, NIFTI_INTENT_VECTOR): the same
  field as ITK and ANTs read a displacement field. ITK places a voxel at the physical point
  `p = diag(-1, -1, 1) (A x)` (NIfTI's world frame is RAS, ITK's is LPS) and maps each point
  `p` of the fixed image to `p + d(p)` of the moving one, with `d` in mm in that LPS frame:
  `d = diag(-1, -1, 1) M u`, `M` the 3x3 block of the fixed affine. ITK reads the vectors of
  an intent-1007 file as stored (it converts RAS vectors only for intent 1006, DISPVECT;
  InsightSoftwareConsortium/ITK#3884), which is how ANTs writes its `Warp.nii.gz` files; so
  `antsApplyTransforms -i moving -r fixed -t warp_mm.nii.gz` reproduces `moved`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path

import numpy as np

from vxmtf.atomic import atomic_paths, check_writable
from vxmtf.data.geometry import (
    displacement_to_world,
    grid_mapping,
    resample_to_grid,
    save_itk_displacement,
)
from vxmtf.data.io import Volume, file_kind, load_label_map, load_volume, save_volume
from vxmtf.data.itk import write_itk_affine
from vxmtf.registration.registrator import Registrator

logger = logging.getLogger(__name__)

__all__ = ["RegisteredFiles", "check_destinations", "register_files"]

#: Endings of an ITK transform file (`vxmtf.data.itk.write_itk_affine`).
ITK_ENDINGS = (".txt", ".tfm", ".mat")


@dataclasses.dataclass
class RegisteredFiles:
    """What `register_files` did.

    Attributes:
        paths: output name (`moved`, `warp`, `moved_labels`, `warp_mm`) -> the file written.
        moving, fixed: the input files.
        shape: the fixed grid's shape.
        resampled: True when the moving image was resampled onto the fixed grid first.
        coverage: the share of fixed voxels inside the moving image's field of view (1.0 when
            the two share a grid).
        seconds: registration time (preprocessing, network, resizing, warping the image).
        total_seconds: wall time including reading, loading the model and writing.
    """

    paths: dict[str, Path]
    moving: Path
    fixed: Path
    shape: tuple[int, ...]
    resampled: bool
    coverage: float
    seconds: float
    total_seconds: float
    affine: object | None = None

    def summary(self) -> str:
        """One line with the pair, the grid and the timing, then the files written."""
        size = "x".join(str(s) for s in self.shape)
        line = (
            f"registered {self.moving.name} -> {self.fixed.name} on the {size} fixed grid in "
            f"{self.seconds:.2f} s ({self.total_seconds:.2f} s with loading and writing)"
        )
        if self.affine is not None:
            line += (
                f"; affine stage ({self.affine.transform}, {self.affine.metric}) "
                f"{self.affine.seconds:.2f} s"
            )
        elif self.resampled:
            line += f"; moving resampled onto the fixed grid ({self.coverage:.0%} covered)"
        return "\n  ".join([line, *(f"{name}: {path}" for name, path in self.paths.items())])


def _load(path, role: str) -> Volume:
    try:
        return load_volume(path)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"The {role} file was not found: {path}") from error


def _check_kinds(outputs: dict) -> None:
    for name, path in outputs.items():
        if path is not None and name != "affine_transform":
            file_kind(path)  # raises for an unknown ending
    if outputs.get("warp_mm") is not None and file_kind(outputs["warp_mm"]) != "nifti":
        raise ValueError(
            "The millimetre warp is an ITK/ANTs displacement field: expected a name ending in "
            f".nii or .nii.gz. Received: warp_mm={outputs['warp_mm']}"
        )
    transform = outputs.get("affine_transform")
    if transform is not None and not str(transform).lower().endswith(ITK_ENDINGS):
        raise ValueError(
            f"An ITK transform file must end with {', '.join(ITK_ENDINGS)}. "
            f"Received: affine_transform={transform}"
        )


def _same_file(a, b) -> bool:
    """Whether two paths name one file: equal once links are resolved, or (both existing) one
    inode (a hard link)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def check_destinations(outputs: dict, inputs: dict, overwrite: bool = True, options=False) -> None:
    """Raises unless every output can be written without losing anything, before any work.

    Checks, in this order: each output's ending (a volume format; NIfTI for `warp_mm`; an ITK
    transform ending for `affine_transform`); no output is an input or another output (the
    same file once symbolic links are resolved, or a hard link to it); each output's folder
    is writable (or can be created: `vxmtf.atomic.check_writable`); and, unless `overwrite`,
    no output exists yet.

    Args:
        outputs: name -> destination (None: not written), e.g. `moved`, `warp`.
        inputs: name -> file read (None, or anything that is not a path, is skipped), e.g.
            `moving`, `fixed`, `model`.
        overwrite: replace outputs that exist.
        options: name the arguments as command-line options in errors (`--moved`,
            `--overwrite`) instead of keyword arguments (`moved`, `overwrite=True`).

    Raises:
        ValueError: an unknown ending, or an output that is an input or another output.
        IsADirectoryError, NotADirectoryError, PermissionError: an output that cannot be
            written.
        FileExistsError: an output that exists, without `overwrite`.
    """

    def label(name):
        return f"--{name.replace('_', '-')}" if options else f"`{name}`"

    def received(name, path):
        return f"{label(name) if options else name}={path}"

    _check_kinds(outputs)
    outputs = {name: path for name, path in outputs.items() if path is not None}
    inputs = {name: path for name, path in inputs.items() if isinstance(path, (str, os.PathLike))}
    seen = {}
    for name, path in outputs.items():
        for other, other_path in [*inputs.items(), *seen.items()]:
            if _same_file(path, other_path):
                role = "input" if other in inputs else "output"
                loss = "destroy the input" if role == "input" else "lose one of the two"
                raise ValueError(
                    f"The output {label(name)} is the {role} {label(other)}: expected a file of "
                    f"its own (writing it would {loss}). "
                    f"Received: {received(name, path)}, {received(other, other_path)}"
                )
        seen[name] = path
    for name, path in outputs.items():
        check_writable(path, label(name))
    if not overwrite:
        for name, path in outputs.items():
            if os.path.lexists(path):
                hint = label("overwrite") if options else "overwrite=True"
                raise FileExistsError(
                    f"The output {label(name)} exists: expected a new file, or {hint} to "
                    f"replace it. Received: {received(name, path)}"
                )


def register_files(
    model,
    moving,
    fixed,
    moved,
    warp,
    moving_labels=None,
    moved_labels=None,
    warp_mm=None,
    config=None,
    affine=None,
    affine_transform=None,
    refine=None,
    precision="float32",
    overwrite=True,
) -> RegisteredFiles:
    """Registers a moving image file onto a fixed one and writes the results on the fixed grid.

    See the module docstring for the grids, the conventions and the file layouts.

    Args:
        model: a `vxmtf.registration.Registrator`, or what it accepts (a `.keras` file, a
            SavedModel, a run folder, a `VxmDense`).
        moving, fixed: the image files.
        moved, warp: destinations of the moved image and of the displacement in voxels.
        moving_labels, moved_labels: a label map of the moving image and its destination
            (both or neither).
        warp_mm: optional destination of the ITK/ANTs displacement in mm (3D only).
        config: the run's `config.json` when it is not beside the model.
        affine: run an affine stage first (`Registrator(affine=...)`: True or a dict of
            `vxmtf.affine.register_affine` options); both images need affines. `warp` and
            `warp_mm` then hold the composed transform (affine, then deformable).
        affine_transform: optional destination of the affine alone as an ITK transform file
            (`.txt`, `.tfm` or `.mat`; `vxmtf.data.itk.write_itk_affine`); needs `affine`.
        refine: test-time refinement (`Registrator(refine=...)`), when `model` is not a
            `Registrator` already.
        precision: the network's arithmetic (`Registrator(precision=...)`), likewise.
        overwrite: replace output files that exist (the default, as Keras's `Model.save`);
            False refuses them (`FileExistsError`) before any work, as the command line does
            without `--overwrite`.

    Outputs are checked before anything is read (`check_destinations`: an output that is an
    input or another output, or that cannot be written, is refused whatever `overwrite`), and
    written all or none: each to a temporary file beside its destination, all moved into
    place once every one is written (`vxmtf.atomic.atomic_paths`).

    Returns:
        A `RegisteredFiles`.

    Raises:
        FileNotFoundError: an input file or the model does not exist.
        FileExistsError: an output exists and `overwrite` is False.
        OSError: an output folder that cannot be written (`PermissionError`, ...).
        ValueError: an unreadable file, an unknown output ending, an output that is an input
            or another output, an image whose rank is not the model's, a label map off its
            image's grid, grids that cannot be mapped, only one of `moving_labels` and
            `moved_labels`, or a non-finite displacement (`Registrator.register`).
        TypeError: the model is not a VoxelMorph model.
    """
    start = time.perf_counter()
    if (moving_labels is None) != (moved_labels is None):
        raise ValueError(
            "Expected both a moving label map and a destination for the moved one, or neither. "
            f"Received: moving_labels={moving_labels}, moved_labels={moved_labels}"
        )
    outputs = {
        "moved": moved,
        "warp": warp,
        "moved_labels": moved_labels,
        "warp_mm": warp_mm,
        "affine_transform": affine_transform,
    }
    inputs = {
        "moving": moving,
        "fixed": fixed,
        "moving_labels": moving_labels,
        "model": model,
        "config": config,
    }
    check_destinations(outputs, inputs, overwrite)
    fixed_volume = _load(fixed, "fixed image")
    moving_volume = _load(moving, "moving image")
    labels, label_dtype = None, None
    if moving_labels is not None:
        labels, label_dtype = load_label_map(moving_labels, moving_volume, "moving label map")

    if isinstance(model, Registrator):
        registrator = model
    else:
        registrator = Registrator(
            model, config=config, refine=refine, affine=affine, precision=precision
        )
    if affine_transform is not None and registrator.affine is None:
        raise ValueError(
            "An ITK affine transform file is written by the affine stage: expected the affine "
            f"stage on. Received: affine_transform={affine_transform}, affine={affine}"
        )
    for role, volume in (("moving", moving_volume), ("fixed", fixed_volume)):
        if volume.array.ndim != registrator.ndim:
            raise ValueError(
                f"The model registers {registrator.ndim}D volumes: expected the {role} image "
                f"{volume.path} to have {registrator.ndim} axes. Received: shape={volume.shape}"
            )
    if warp_mm is not None and registrator.ndim != 3:
        raise ValueError(
            f"A millimetre (ITK) warp is written for 3D volumes only. Received: "
            f"ndim={registrator.ndim}"
        )

    if registrator.affine is not None:
        return _register_affine_files(
            registrator,
            moving_volume,
            fixed_volume,
            labels,
            label_dtype,
            outputs,
            overwrite,
            start,
        )
    mapping = grid_mapping(moving_volume, fixed_volume)
    moving_array, coverage = moving_volume.array, 1.0
    label_array = None if labels is None else labels.array
    if mapping is not None:
        # Layout: every array below is on the fixed grid, (*fixed.shape).
        inside = resample_to_grid(
            np.ones(moving_volume.shape, np.uint8), mapping, fixed_volume.shape, 0
        )
        coverage = float(inside.mean())
        if coverage == 0.0:
            raise ValueError(
                f"Cannot map the moving image onto the fixed grid: in world coordinates "
                f"{moving_volume.path} covers no voxel of {fixed_volume.path}. Expected an "
                f"affinely pre-aligned pair. Received: moving affine=\n{moving_volume.affine}\n"
                f"fixed affine=\n{fixed_volume.affine}"
            )
        logger.info(
            "Resampling the moving image onto the fixed grid (%.1f%% covered)", 100 * coverage
        )
        source = np.asarray(moving_array, np.float32)
        moving_array = resample_to_grid(source, mapping, fixed_volume.shape, 1, float(source.min()))
        if label_array is not None:
            label_array = resample_to_grid(label_array, mapping, fixed_volume.shape, 0)

    result = registrator.register(moving_array, fixed_volume.array)
    warped = None
    if label_array is not None:
        warped = registrator.warp_labels(label_array, result.displacement)
    paths = _save_outputs(outputs, overwrite, fixed_volume, result, warped, label_dtype)
    return RegisteredFiles(
        paths=paths,
        moving=Path(moving),
        fixed=Path(fixed),
        shape=tuple(fixed_volume.shape),
        resampled=mapping is not None,
        coverage=coverage,
        seconds=result.seconds,
        total_seconds=time.perf_counter() - start,
    )


def _register_affine_files(
    registrator, moving, fixed, labels, label_dtype, outputs, overwrite, start
) -> RegisteredFiles:
    """`register_files` with the affine stage: the moving files are read on their own grid
    through the composed transform."""
    for volume in (moving, fixed):
        if not volume.has_affine:
            raise ValueError(
                "The affine stage registers in world coordinates: expected a file with a "
                f"voxel-to-world affine (NIfTI, or .npz with 'affine'). Received: {volume.path} "
                "carries none"
            )
    names = (str(moving.path), str(fixed.path))
    result = registrator.register(
        moving.array, fixed.array, moving.affine, fixed.affine, names=names
    )
    warped = None if labels is None else result.warp_moving(labels.array, "nearest")
    paths = _save_outputs(outputs, overwrite, fixed, result, warped, label_dtype)
    return RegisteredFiles(
        paths=paths,
        moving=Path(moving.path),
        fixed=Path(fixed.path),
        shape=tuple(fixed.shape),
        resampled=True,
        coverage=float(result.affine.overlap),
        seconds=result.seconds,
        total_seconds=time.perf_counter() - start,
        affine=result.affine,
    )


def _save_outputs(outputs, overwrite, fixed, result, warped_labels, label_dtype) -> dict:
    """Writes the moved image, the displacement (and the moved labels, the ITK field in mm, the
    ITK affine when asked) on the fixed grid with its affine and header, all or none
    (`atomic_paths`); returns name -> path."""
    grid, header = fixed.affine, fixed.header
    wanted = {name: path for name, path in outputs.items() if path is not None}
    if warped_labels is None:
        wanted.pop("moved_labels", None)
    if result.affine is None:
        wanted.pop("affine_transform", None)
    with atomic_paths(wanted, replace=overwrite) as temporary:
        save_volume(temporary["moved"], result.moved.astype(np.float32), grid, header)
        save_volume(temporary["warp"], result.displacement.astype(np.float32), grid, header)
        if "moved_labels" in temporary:
            save_volume(temporary["moved_labels"], warped_labels, grid, header, dtype=label_dtype)
        if "warp_mm" in temporary:
            field = displacement_to_world(result.displacement, grid, lps=True)
            save_itk_displacement(temporary["warp_mm"], field, grid, header)
        if "affine_transform" in temporary:
            write_itk_affine(temporary["affine_transform"], result.affine.matrix)
    return {name: Path(path) for name, path in wanted.items()}
