"""`python -m vxmtf.register`: register one pair of volume files with a trained model.

    python -m vxmtf.register --model runs/vxm/best.keras --moving a.nii.gz --fixed b.nii.gz \\
        --moved moved.nii.gz --warp warp.nii.gz \\
        [--moving-labels a_seg.nii.gz --moved-labels moved_seg.nii.gz] [--warp-mm warp_mm.nii.gz]

`main` only parses arguments; `register_files` does the work, on top of
`vxmtf.registration.Registrator` (which prepares the pair as the model's training run did and
pads/crops/downsamples it to the model's grid and back) and `vxmtf.data.io` (which keeps each
file's affine and header). Inputs may be NIfTI (`.nii`, `.nii.gz`), `.npz` or `.npy` volumes of
any size.

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

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from vxmtf.data.io import NPZ_AFFINE_KEY, Volume, file_kind, load_volume, save_volume
from vxmtf.launch import run_main
from vxmtf.registration import Registrator

logger = logging.getLogger(__name__)

#: Two affines whose entries all differ by less than this (mm) describe the same grid.
AFFINE_TOLERANCE = 1e-3
#: NIfTI's world frame (RAS) to ITK's physical frame (LPS): x and y change sign.
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
#: NIFTI_INTENT_VECTOR, the intent code of ITK/ANTs displacement field files.
INTENT_VECTOR = 1007


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

    def summary(self) -> str:
        """One line with the pair, the grid and the timing, then the files written."""
        size = "x".join(str(s) for s in self.shape)
        line = (
            f"registered {self.moving.name} -> {self.fixed.name} on the {size} fixed grid in "
            f"{self.seconds:.2f} s ({self.total_seconds:.2f} s with loading and writing)"
        )
        if self.resampled:
            line += f"; moving resampled onto the fixed grid ({self.coverage:.0%} covered)"
        return "\n  ".join([line, *(f"{name}: {path}" for name, path in self.paths.items())])


def has_affine(volume: Volume) -> bool:
    """Whether a volume's file carries a voxel-to-world affine: NIfTI, or `.npz` with one."""
    if volume.header is not None:
        return True
    if volume.path is None or file_kind(volume.path) != "npz":
        return False
    with np.load(volume.path, allow_pickle=False) as archive:
        return NPZ_AFFINE_KEY in archive.files and archive[NPZ_AFFINE_KEY].shape == (4, 4)


def _same_affine(a, b) -> bool:
    return bool(np.allclose(a, b, rtol=0.0, atol=AFFINE_TOLERANCE))


def grid_mapping(moving: Volume, fixed: Volume) -> np.ndarray | None:
    """The `(4, 4)` map from fixed voxel to moving voxel coordinates, `A_moving^-1 A_fixed`, or
    None when the two volumes share a grid (see the module docstring).

    Raises:
        ValueError: the grids differ and cannot be mapped: a file without an affine, a 2D
            pair, or a singular affine.
    """
    same_shape = moving.shape == fixed.shape
    both = has_affine(moving) and has_affine(fixed)
    if same_shape and (not both or _same_affine(moving.affine, fixed.affine)):
        return None
    received = (
        f"Received: moving={moving.path} (shape {moving.shape}), "
        f"fixed={fixed.path} (shape {fixed.shape})"
    )
    if not both:
        missing = [str(v.path) for v in (moving, fixed) if not has_affine(v)]
        raise ValueError(
            "Cannot map the moving image onto the fixed grid: images of different shapes are "
            "resampled through their affines, but "
            f"{' and '.join(missing)} carries none (.npy, or .npz without 'affine'). Expected "
            f"the same shape, or NIfTI/.npz files with affines. {received}"
        )
    if len(fixed.shape) != 3:
        raise ValueError(
            "Cannot map the moving image onto the fixed grid: 2D pairs must share one grid "
            f"(the same shape and affine). {received}"
        )
    try:
        return np.linalg.inv(moving.affine) @ fixed.affine
    except np.linalg.LinAlgError as error:
        raise ValueError(
            f"Cannot map the moving image onto the fixed grid: expected invertible affines. "
            f"Received: moving affine of {moving.path}=\n{moving.affine}"
        ) from error


def resample_to_grid(array, mapping, shape, order: int, fill: float = 0.0) -> np.ndarray:
    """`out[x] = array[mapping @ (x, 1)]` on a grid of `shape`.

    Args:
        array: `(*in_spatial)` volume.
        mapping: `(4, 4)` map from output voxel to input voxel coordinates.
        shape: output spatial shape.
        order: 1 for linear interpolation (images), 0 for nearest (label maps).
        fill: the value outside the input, which also enters interpolation at its edge.

    Returns:
        `(*shape)` of the input's dtype.
    """
    mapping = np.asarray(mapping, np.float64)
    return ndimage.affine_transform(
        np.asarray(array),
        mapping[:3, :3],
        offset=mapping[:3, 3],
        output_shape=tuple(shape),
        order=order,
        mode="grid-constant",
        cval=fill,
    )


def displacement_to_world(displacement, affine, lps: bool = True) -> np.ndarray:
    """A displacement in voxels as a displacement in mm in the world frame.

    `d[x] = F M u[x]`, with `M` the 3x3 block of `affine` (voxel to world, RAS) and `F` the
    identity, or `diag(-1, -1, 1)` for ITK's LPS frame when `lps`.

    Args:
        displacement: `(X, Y, Z, 3)` in voxels, component `k` along voxel axis `k`.
        affine: `(4, 4)` voxel-to-world matrix of the grid the displacement lives on.
        lps: return ITK/ANTs (LPS) components rather than NIfTI (RAS) ones.

    Returns:
        `(X, Y, Z, 3)` float32 in mm.
    """
    displacement = np.asarray(displacement, np.float64)
    if displacement.ndim != 4 or displacement.shape[-1] != 3:
        raise ValueError(
            "Expected a 3D displacement of shape (X, Y, Z, 3). "
            f"Received: displacement.shape={displacement.shape}"
        )
    matrix = np.asarray(affine, np.float64)[:3, :3]
    if lps:
        matrix = RAS_TO_LPS @ matrix
    return np.einsum("kl,...l->...k", matrix, displacement).astype(np.float32)


def save_itk_displacement(path, displacement_mm, affine, header=None) -> Path:
    """Writes an ITK/ANTs displacement field: NIfTI `(X, Y, Z, 1, 3)` float32, intent 1007.

    Args:
        path: a `.nii` or `.nii.gz` destination.
        displacement_mm: `(X, Y, Z, 3)` LPS vectors in mm (`displacement_to_world`).
        affine: the grid's `(4, 4)` affine; `header`: a NIfTI header to keep (e.g. the fixed
            image's), or None.
    """
    if file_kind(path) != "nifti":
        raise ValueError(
            f"An ITK displacement field is a NIfTI file: expected a name ending in .nii or "
            f".nii.gz. Received: path={path}"
        )
    header = nib.Nifti1Header() if header is None else header.copy()
    header.set_intent(INTENT_VECTOR)
    field = np.asarray(displacement_mm, np.float32)[..., None, :]  # (X, Y, Z, 1, 3)
    return save_volume(path, field, affine, header)


def _load(path, role: str) -> Volume:
    try:
        return load_volume(path)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"The {role} file was not found: {path}") from error


def _load_labels(path, image: Volume, role: str) -> tuple[Volume, np.dtype | None]:
    """A label map on its image's grid as an integer array, and the integer dtype it is stored
    in (None for a file of floats holding integers, or of booleans)."""
    labels = _load(path, role)
    if labels.shape != image.shape:
        raise ValueError(
            f"The {role} {path} must lie on the grid of its image {image.path}: expected shape "
            f"{image.shape}. Received: shape={labels.shape}"
        )
    if has_affine(labels) and has_affine(image) and not _same_affine(labels.affine, image.affine):
        raise ValueError(
            f"The {role} {path} must lie on the grid of its image {image.path}: expected its "
            f"affine\n{image.affine}\nReceived: affine=\n{labels.affine}"
        )
    array = labels.array
    storage = array.dtype if np.issubdtype(array.dtype, np.integer) else None
    if labels.header is not None and np.issubdtype(labels.header.get_data_dtype(), np.integer):
        storage = labels.header.get_data_dtype()  # scaled integer files read as floats
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        if not (np.all(np.isfinite(array)) and np.array_equal(array, np.round(array))):
            raise ValueError(
                f"The {role} {path} must hold integer labels. "
                f"Received: dtype={array.dtype} with non-integer values"
            )
        array = array.astype(np.int32)
    return dataclasses.replace(labels, array=array), storage


def _check_outputs(outputs: dict) -> None:
    for path in outputs.values():
        if path is not None:
            file_kind(path)  # raises for an unknown ending
    if outputs.get("warp_mm") is not None and file_kind(outputs["warp_mm"]) != "nifti":
        raise ValueError(
            "The millimetre warp is an ITK/ANTs displacement field: expected a name ending in "
            f".nii or .nii.gz. Received: warp_mm={outputs['warp_mm']}"
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

    Returns:
        A `RegisteredFiles`.

    Raises:
        FileNotFoundError: an input file or the model does not exist.
        ValueError: an unreadable file, an unknown output ending, an image whose rank is not
            the model's, a label map off its image's grid, grids that cannot be mapped, or
            only one of `moving_labels` and `moved_labels`.
        TypeError: the model is not a VoxelMorph model.
    """
    start = time.perf_counter()
    if (moving_labels is None) != (moved_labels is None):
        raise ValueError(
            "Expected both a moving label map and a destination for the moved one, or neither. "
            f"Received: moving_labels={moving_labels}, moved_labels={moved_labels}"
        )
    outputs = {"moved": moved, "warp": warp, "moved_labels": moved_labels, "warp_mm": warp_mm}
    _check_outputs(outputs)
    fixed_volume = _load(fixed, "fixed image")
    moving_volume = _load(moving, "moving image")
    labels, label_dtype = None, None
    if moving_labels is not None:
        labels, label_dtype = _load_labels(moving_labels, moving_volume, "moving label map")

    registrator = model if isinstance(model, Registrator) else Registrator(model, config=config)
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
    affine, header = fixed_volume.affine, fixed_volume.header
    paths = {
        "moved": save_volume(moved, result.moved.astype(np.float32), affine, header),
        "warp": save_volume(warp, result.displacement.astype(np.float32), affine, header),
    }
    if label_array is not None:
        warped = registrator.warp_labels(label_array, result.displacement)
        paths["moved_labels"] = save_volume(moved_labels, warped, affine, header, dtype=label_dtype)
    if warp_mm is not None:
        field = displacement_to_world(result.displacement, affine, lps=True)
        paths["warp_mm"] = save_itk_displacement(warp_mm, field, affine, header)
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


# ----------------------------------------------------------------------------- command line

DESCRIPTION = """\
Register a moving image onto a fixed one with a trained VoxelMorph model, and write the moved
image, the displacement (and optionally the moved label map and an ITK/ANTs displacement in mm)
on the fixed image's grid, with its affine and header.

--warp holds u in voxels, shape (X, Y, Z, 3), component k along voxel axis k, such that
moved[x] = moving[x + u[x]]. --warp-mm holds the same field for ITK/ANTs: a 5-D NIfTI
(X, Y, Z, 1, 3), intent 1007 (vector), in mm in ITK's LPS physical frame (x and y of the NIfTI
RAS world frame negated).

Images of any size; moving and fixed on different grids (3D, both with affines) are resampled
onto the fixed grid through their affines first (the pair must be affinely aligned already).
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m vxmtf.register",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        required=True,
        help="a .keras file, a SavedModel folder (or <base>/<name>: newest version) or a run "
        "folder",
    )
    p.add_argument("--config", help="the run's config.json (default: found beside the model)")
    p.add_argument("--moving", required=True, help="moving image (.nii, .nii.gz, .npz, .npy)")
    p.add_argument("--fixed", required=True, help="fixed image; outputs are on its grid")
    p.add_argument("--moved", required=True, help="output: the moved image (float32)")
    p.add_argument("--warp", required=True, help="output: displacement in voxels (X, Y, Z, 3)")
    p.add_argument("--moving-labels", help="label map of the moving image")
    p.add_argument("--moved-labels", help="output: the moved label map (needs --moving-labels)")
    p.add_argument(
        "--warp-mm", help="output: ITK/ANTs displacement in mm, LPS (.nii/.nii.gz, 3D only)"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    return p


def main(argv=None) -> int:
    """Parses the arguments and calls `register_files`; returns 0, or 2 on an error.

    Run as `python -m vxmtf.register`, the process uses TensorFlow's oneDNN CPU kernels unless
    `TF_ENABLE_ONEDNN_OPTS` says otherwise (see `vxmtf.launch`).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.moved_labels is not None and args.moving_labels is None:
            parser.error("--moved-labels needs --moving-labels (the label map to warp)")
        if args.moving_labels is not None and args.moved_labels is None:
            parser.error("--moving-labels needs --moved-labels (where to write the result)")
    except SystemExit as exit_:  # --help (0) or a usage error (2, message already printed)
        return int(exit_.code or 0)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        result = register_files(
            args.model,
            moving=args.moving,
            fixed=args.fixed,
            moved=args.moved,
            warp=args.warp,
            moving_labels=args.moving_labels,
            moved_labels=args.moved_labels,
            warp_mm=args.warp_mm,
            config=args.config,
        )
    except (OSError, ValueError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0


if __name__ == "__main__":
    run_main("vxmtf.register", main)
