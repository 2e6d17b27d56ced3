"""Accuracy, speed and capture range of `vxmtf.affine.register_affine` on LPBA40, beside ANTs.

    python -m benchmarks.bench_affine --data ../shared/data/LPBA40/LPBA40_dataset.json \\
        --out benchmarks/results/affine [--pairs 3] [--ants] [--capture] \\
        [--model pretrained/vxm_lpba40.keras [--save-moving DIR]] [--no-pairs]

For each of the first `--pairs` `registration_val` pairs, a known random world map `S` (seeded:
rotations up to 15 degrees about each axis and scales 0.9-1.1 around the image centre, shifts up
to 15 mm) is applied to the moving image, resampled (linear) onto its own grid ("same") and
once onto another grid ("other": 1.2 mm voxels, another shape, axes permuted and flipped, the
header set so that world positions agree). Each method then registers:

- `self`: the moving subject's own unperturbed image (fixed) with its perturbed copy (moving):
  the truth is `S` exactly;
- `pair`: the pair's fixed image with the perturbed moving image. The dataset is only roughly
  affinely aligned (subjects differ in size by up to ~10%), so the truth is taken as
  `S @ T0`, where `T0` is the same method's result on the unperturbed pair: this measures
  whether the perturbation is undone, not the inter-subject alignment itself.

The error is the mean over the fixed image's brain voxels (intensity > 0) of
`|T_est(x) - T_true(x)|` in mm, where `T` maps fixed world points to moving world points.
Seconds count the registration call only (ours: the first call also traces the graph).
ANTs: `ants.registration(type_of_transform="Affine")` with its defaults and
`ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS` (`--threads`, default 2). As a check that ANTs reads
our transform files, the first `self` result is written as an ITK file and applied with
`ants.apply_transforms`, and compared with our own resampling.

`--model MODEL` (a `.keras` model; `Registrator` finds its run config) measures the Dice (mean
over the dataset's 56 labels, `vxmtf.metrics.dice`, 0 excluded; label maps under `labelsTr`
with the images' file names) between the fixed labels and the moving labels read through:

- (a) `Registrator(model).register(moving, fixed)` on the original, aligned pair
  (`warp_labels`);
- (b) `Registrator(model, affine=True).register(moving, fixed, moving_affine, fixed_affine)` on
  the perturbed moving image (its label map perturbed the same way, nearest neighbour), on the
  same and on the other grid (`Registration.warp_moving(labels, "nearest")`); also on the
  unperturbed pair, whose affine stage gives the `T0` of the affine error;
- (c) with `--ants`: ANTs Affine, then the model on the pair aligned by it (composed as (b)).

with the affine error (mm, vs `S @ T0`), the seconds of the affine stage and of the whole call.
`--save-moving DIR` writes the first pair's perturbed moving images (and labels) as NIfTI, e.g.
to time `python -m vxmtf.register ... --affine` on them. With `--no-pairs`, only these runs.

`--capture` measures the capture range on the first `self` case: rotations about each axis
(and about all three at once) and shifts along each axis; a run converges when its error is
below 1 mm.

Writes in `--out`: `affine.md` (tables) and `affine.json` (every number, the machine load).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CAPTURE_ANGLES = (10, 20, 30, 40, 50, 60, 75, 90)
CAPTURE_SHIFTS = (20, 40, 60, 80)
#: Grid of the "other" case: voxel size (mm) and shape, and the axis permutation/flip (RAS).
OTHER_SPACING = 1.2
OTHER_SHAPE = (136, 136, 164)
OTHER_AXES = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


def random_map(rng, centre, max_degrees=15.0, scales=(0.9, 1.1), max_shift=15.0):
    """World map `x -> c + R D (x - c) + t` with random angles, scales and shifts."""
    from scipy.spatial.transform import Rotation

    linear = Rotation.from_euler(
        "xyz", rng.uniform(-max_degrees, max_degrees, 3), degrees=True
    ).as_matrix() @ np.diag(rng.uniform(*scales, 3))
    return centred_map(linear, rng.uniform(-max_shift, max_shift, 3), centre)


def centred_map(linear, shift, centre):
    out = np.eye(4)
    out[:3, :3] = linear
    out[:3, 3] = centre + shift - linear @ centre
    return out


def fov_centre(shape, affine):
    return affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0) + affine[:3, 3]


def perturb(image, affine, truth, shape=None, target_affine=None, order=1):
    """Moving image whose world content is `image`'s moved by `truth` (moving(truth x) = image(x)).

    Resampled onto `target_affine` / `shape` (default: the image's own grid), linearly
    (`order` 1: float32) or, for a label map, by nearest neighbour (`order` 0: its dtype, 0
    outside).
    """
    from scipy import ndimage

    shape = image.shape if shape is None else shape
    target_affine = affine if target_affine is None else target_affine
    voxel = np.linalg.inv(affine) @ np.linalg.inv(truth) @ target_affine
    out = ndimage.affine_transform(
        image, voxel[:3, :3], voxel[:3, 3], output_shape=shape, order=order, mode="constant"
    )
    return out.astype(np.float32) if order else out


def other_grid(truth, image_shape, image_affine):
    """The "other" grid's affine: centred on where `truth` moves the image's FOV centre."""
    linear = OTHER_SPACING * OTHER_AXES
    centre = truth[:3, :3] @ fov_centre(image_shape, image_affine) + truth[:3, 3]
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = centre - linear @ ((np.asarray(OTHER_SHAPE) - 1) / 2.0)
    return affine


def mean_error(matrix, truth, points):
    """Mean |matrix(x) - truth(x)| (mm) over world points `(n, 3)`."""
    diff = points @ (matrix[:3, :3] - truth[:3, :3]).T + (matrix[:3, 3] - truth[:3, 3])
    return float(np.linalg.norm(diff, axis=-1).mean())


class Ours:
    name = "vxmtf"

    def __init__(self, **options):
        from vxmtf.affine import register_affine

        self._register = register_affine
        self.options = options

    def __call__(self, moving, moving_affine, fixed, fixed_affine):
        result = self._register(moving, moving_affine, fixed, fixed_affine, **self.options)
        return result.matrix, result.seconds, result


class Ants:
    name = "ANTs"

    def __init__(self, threads):
        os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
        import ants

        self.ants = ants

    def image(self, array, affine, folder, name):
        import nibabel as nib

        path = Path(folder) / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(array, np.float32), affine), path)
        return self.ants.image_read(str(path))

    def __call__(self, moving, moving_affine, fixed, fixed_affine):
        from vxmtf.data.itk import read_itk_affine

        with tempfile.TemporaryDirectory() as folder:
            fixed_image = self.image(fixed, fixed_affine, folder, "fixed")
            moving_image = self.image(moving, moving_affine, folder, "moving")
            start = time.perf_counter()
            result = self.ants.registration(
                fixed_image, moving_image, type_of_transform="Affine", outprefix=f"{folder}/r_"
            )
            seconds = time.perf_counter() - start
            matrix = read_itk_affine(result["fwdtransforms"][0])
        return matrix, seconds, None


def check_ants_reads_our_file(ants_method, result, moving, moving_affine, fixed, fixed_affine):
    """Apply our ITK file with `ants.apply_transforms`; compare with our resampling."""
    from vxmtf.data.itk import write_itk_affine

    ants = ants_method.ants
    with tempfile.TemporaryDirectory() as folder:
        path = write_itk_affine(Path(folder) / "affine.txt", result.matrix, center=result.centre)
        warped = ants.apply_transforms(
            fixed=ants_method.image(fixed, fixed_affine, folder, "fixed"),
            moving=ants_method.image(moving, moving_affine, folder, "moving"),
            transformlist=[str(path)],
            interpolator="linear",
        ).numpy()
    ours = result.resample(moving, fixed.shape)
    brain = fixed > 0
    # Brain voxels whose sample lies at least one voxel inside the moving grid (at the border,
    # ITK and vxmtf.ops.resample treat the outside differently).
    voxel = result.voxel_matrix()
    coords = np.argwhere(brain) @ voxel[:3, :3].T + voxel[:3, 3]
    interior = np.zeros_like(brain)
    interior[brain] = np.all((coords >= 1) & (coords <= np.array(moving.shape) - 2), axis=-1)
    difference = np.abs(warped - ours)
    return {
        "max_abs_difference_in_brain": float(difference[brain].max()),
        "mean_abs_difference_in_brain": float(difference[brain].mean()),
        "max_abs_difference_interior": float(difference[interior].max()),
        "interior_share_of_brain": float(interior.sum() / brain.sum()),
        "intensity_range": float(moving.max() - moving.min()),
    }


def run_pairs(pairs, root, methods, seed, log):
    import nibabel as nib

    rows = []
    ants_check = None
    for index, pair in enumerate(pairs):
        fixed_img = nib.load(root / pair["fixed"])
        moving_img = nib.load(root / pair["moving"])
        fixed = fixed_img.get_fdata(dtype=np.float32)
        original = moving_img.get_fdata(dtype=np.float32)
        fixed_affine, moving_affine = fixed_img.affine, moving_img.affine
        rng = np.random.default_rng(seed + index)
        truth = random_map(rng, fov_centre(original.shape, moving_affine))
        other_affine = other_grid(truth, original.shape, moving_affine)
        movings = {
            "same": (perturb(original, moving_affine, truth), moving_affine),
            "other": (
                perturb(original, moving_affine, truth, OTHER_SHAPE, other_affine),
                other_affine,
            ),
        }
        fixed_brain = np.argwhere(fixed > 0) @ fixed_affine[:3, :3].T + fixed_affine[:3, 3]
        self_brain = np.argwhere(original > 0) @ moving_affine[:3, :3].T + moving_affine[:3, 3]
        name = f"{Path(pair['moving']).name.split('.')[0]} -> {Path(pair['fixed']).name[:11]}"
        for method in methods:
            base, base_seconds, _ = method(original, moving_affine, fixed, fixed_affine)
            log(f"{name} {method.name}: unperturbed pair in {base_seconds:.2f} s")
            for grid, (moving, affine) in movings.items():
                matrix, seconds, result = method(moving, affine, original, moving_affine)
                error = mean_error(matrix, truth, self_brain)
                rows.append(row(index, name, "self", grid, method.name, error, seconds))
                log(f"  self/{grid}: {error:.3f} mm, {seconds:.2f} s")
                if ants_check is None and result is not None and len(methods) > 1:
                    ants_check = check_ants_reads_our_file(
                        methods[1], result, moving, affine, original, moving_affine
                    )
                matrix, seconds, _ = method(moving, affine, fixed, fixed_affine)
                error = mean_error(matrix, truth @ base, fixed_brain)
                rows.append(row(index, name, "pair", grid, method.name, error, seconds))
                rows[-1]["unperturbed_seconds"] = base_seconds
                log(f"  pair/{grid}: {error:.3f} mm (vs S @ T0), {seconds:.2f} s")
    return rows, ants_check


def row(index, name, case, grid, method, error, seconds):
    return {
        "pair": index,
        "name": name,
        "case": case,
        "grid": grid,
        "method": method,
        "mean_error_mm": error,
        "seconds": seconds,
    }


def run_capture(pair, root, method, identity, log):
    """Errors for growing rotations and shifts on the first pair's moving subject (self case).

    Shifts move the field of view with the content (as scans with other origins do), and are
    registered with `method` (centre-of-mass initialisation) and with `identity` (none).
    """
    import nibabel as nib
    from scipy.spatial.transform import Rotation

    image = nib.load(root / pair["moving"])
    original = image.get_fdata(dtype=np.float32)
    affine = image.affine
    centre = fov_centre(original.shape, affine)
    brain = np.argwhere(original > 0) @ affine[:3, :3].T + affine[:3, 3]
    results = []
    axes = {"x": [1, 0, 0], "y": [0, 1, 0], "z": [0, 0, 1], "xyz": [1, 1, 1]}
    for axis, vector in axes.items():
        for angle in CAPTURE_ANGLES:
            angles = np.radians(angle) * np.asarray(vector, float)
            linear = Rotation.from_euler("xyz", angles).as_matrix()
            truth = centred_map(linear, np.zeros(3), centre)
            matrix, seconds, _ = method(perturb(original, affine, truth), affine, original, affine)
            error = mean_error(matrix, truth, brain)
            results.append({"kind": "rotation", "axis": axis, "degrees": angle, "error": error})
            log(f"capture rotation {axis} {angle} deg: {error:.3f} mm ({seconds:.1f} s)")
    for axis, vector in list(axes.items())[:3]:
        for shift in CAPTURE_SHIFTS:
            truth = centred_map(np.eye(3), shift * np.asarray(vector, float), centre)
            # Shifted on a grid that follows the content (a field of view shifted with it).
            moved_affine = truth @ affine
            moving = perturb(original, affine, truth, original.shape, moved_affine)
            for init, runner in (("com", method), ("identity", identity)):
                matrix, seconds, _ = runner(moving, moved_affine, original, affine)
                error = mean_error(matrix, truth, brain)
                results.append(
                    {"kind": "shift", "axis": axis, "mm": shift, "init": init, "error": error}
                )
                log(f"capture shift {axis} {shift} mm, init {init}: {error:.3f} mm")
    return results


def label_path(root, image):
    """The label map of a dataset image: `labelsTr` with the same file name."""
    return root / "labelsTr" / Path(image).name


def mean_dice(moved_labels, fixed_labels, labels):
    from vxmtf.evaluation.metrics import nanmean
    from vxmtf.metrics import dice

    return nanmean(list(dice(moved_labels, fixed_labels, labels).values()))


def ants_then_model(ants_method, registrator, moving, moving_affine, labels, fixed, fixed_affine):
    """ANTs Affine, then the model on the pair aligned by it; the moving labels are read through
    the composed transform (as `Registrator(affine=True)` composes its own)."""
    from vxmtf.data.geometry import compose_displacement, resample_to_grid, sample_through

    start = time.perf_counter()
    matrix, affine_seconds, _ = ants_method(moving, moving_affine, fixed, fixed_affine)
    voxel_map = np.linalg.inv(moving_affine) @ matrix @ fixed_affine
    source = np.asarray(moving, np.float32)
    aligned = resample_to_grid(source, voxel_map, fixed.shape, 1, float(source.min()))
    deformable = registrator.register(aligned, fixed)
    fixed_frame = np.linalg.inv(fixed_affine) @ matrix @ fixed_affine
    composed = compose_displacement(deformable.displacement, fixed_frame)
    mapping = np.linalg.inv(moving_affine) @ fixed_affine
    moved_labels = sample_through(labels, composed, mapping, order=0, fill=0)
    return matrix, affine_seconds, time.perf_counter() - start, moved_labels


def run_model(
    pairs, root, labels, model, affine_options, seed, ants_method, save_moving, log, checkpoint=None
):
    """Dice of the model alone on the aligned pairs (a), and of the affine stage + the model on
    the perturbed moving images (b), optionally ANTs Affine + the model (c): see the docstring."""
    import nibabel as nib

    from vxmtf.registration import Registrator

    aligned = Registrator(model)
    with_affine = Registrator(model, affine=affine_options or True)
    log(f"model {model}: config {aligned.config_path}, affine stage {with_affine.affine}")
    rows = []
    for index, pair in enumerate(pairs):
        fixed_img = nib.load(root / pair["fixed"])
        moving_img = nib.load(root / pair["moving"])
        fixed = fixed_img.get_fdata(dtype=np.float32)
        original = moving_img.get_fdata(dtype=np.float32)
        fixed_affine, moving_affine = fixed_img.affine, moving_img.affine
        fixed_labels = np.asarray(nib.load(label_path(root, pair["fixed"])).dataobj)
        moving_labels = np.asarray(nib.load(label_path(root, pair["moving"])).dataobj)
        # The same random map as `run_pairs` for this pair.
        rng = np.random.default_rng(seed + index)
        truth = random_map(rng, fov_centre(original.shape, moving_affine))
        other_affine = other_grid(truth, original.shape, moving_affine)
        grids = {"same": (original.shape, moving_affine), "other": (OTHER_SHAPE, other_affine)}
        fixed_brain = np.argwhere(fixed > 0) @ fixed_affine[:3, :3].T + fixed_affine[:3, 3]
        name = f"{Path(pair['moving']).name.split('.')[0]} -> {Path(pair['fixed']).name[:11]}"
        out = {"pair": index, "name": name, "moving": pair["moving"], "fixed": pair["fixed"]}
        out["dice_before"] = mean_dice(moving_labels, fixed_labels, labels)

        # (a) the model alone on the original (affinely aligned) pair.
        result = aligned.register(original, fixed)
        moved = aligned.warp_labels(moving_labels, result.displacement)
        out["dice_a"] = mean_dice(moved, fixed_labels, labels)
        out["seconds_a"] = result.seconds
        log(
            f"{name}: before {out['dice_before']:.4f}, (a) {out['dice_a']:.4f} "
            f"({result.seconds:.1f} s)"
        )

        # The affine stage + model on the unperturbed pair: its affine is T0 (truth S @ T0).
        result = with_affine.register(original, fixed, moving_affine, fixed_affine)
        base = result.affine.matrix
        out["dice_b_unperturbed"] = mean_dice(
            result.warp_moving(moving_labels, "nearest"), fixed_labels, labels
        )
        out["seconds_b_unperturbed"] = result.seconds
        out["affine_seconds_b_unperturbed"] = result.affine.seconds
        log(
            f"  (b) unperturbed: {out['dice_b_unperturbed']:.4f} ({result.seconds:.1f} s, "
            f"affine {result.affine.seconds:.1f} s)"
        )

        for grid, (shape, affine) in grids.items():
            moving = perturb(original, moving_affine, truth, shape, affine)
            labels_moved = perturb(moving_labels, moving_affine, truth, shape, affine, order=0)
            if save_moving is not None and index == 0:
                save_moving.mkdir(parents=True, exist_ok=True)
                stem = Path(pair["moving"]).name.split(".")[0]
                nib.save(nib.Nifti1Image(moving, affine), save_moving / f"{stem}_{grid}.nii.gz")
                nib.save(
                    nib.Nifti1Image(labels_moved, affine),
                    save_moving / f"{stem}_{grid}_labels.nii.gz",
                )
            result = with_affine.register(moving, fixed, affine, fixed_affine)
            key = f"b_{grid}"
            out[f"dice_{key}"] = mean_dice(
                result.warp_moving(labels_moved, "nearest"), fixed_labels, labels
            )
            # The affine stage alone (labels read through its matrix only).
            affine_only = resample_to_labels(labels_moved, result.affine.voxel_matrix(), fixed)
            out[f"dice_affine_only_{grid}"] = mean_dice(affine_only, fixed_labels, labels)
            out[f"error_mm_{key}"] = mean_error(result.affine.matrix, truth @ base, fixed_brain)
            out[f"affine_seconds_{key}"] = result.affine.seconds
            out[f"seconds_{key}"] = result.seconds
            log(
                f"  (b) {grid}: {out[f'dice_{key}']:.4f} (delta "
                f"{out[f'dice_{key}'] - out['dice_a']:+.4f}; affine only "
                f"{out[f'dice_affine_only_{grid}']:.4f}), error {out[f'error_mm_{key}']:.3f} mm, "
                f"affine {result.affine.seconds:.1f} s, register {result.seconds:.1f} s"
            )
            if ants_method is not None:
                if grid == "same":
                    ants_base, _, _ = ants_method(original, moving_affine, fixed, fixed_affine)
                matrix, affine_seconds, seconds, moved = ants_then_model(
                    ants_method, aligned, moving, affine, labels_moved, fixed, fixed_affine
                )
                key = f"c_{grid}"
                out[f"dice_{key}"] = mean_dice(moved, fixed_labels, labels)
                out[f"error_mm_{key}"] = mean_error(matrix, truth @ ants_base, fixed_brain)
                out[f"affine_seconds_{key}"] = affine_seconds
                out[f"seconds_{key}"] = seconds
                log(
                    f"  (c) ANTs {grid}: {out[f'dice_{key}']:.4f}, error "
                    f"{out[f'error_mm_{key}']:.3f} mm, affine {affine_seconds:.1f} s, "
                    f"total {seconds:.1f} s"
                )
        rows.append(out)
        if checkpoint is not None:
            checkpoint(rows)
    return rows


def resample_to_labels(labels, voxel_map, fixed):
    from vxmtf.data.geometry import resample_to_grid

    return resample_to_grid(labels, voxel_map, fixed.shape, 0, 0)


def model_markdown(rows, meta):
    """The Dice table of `--model` (per pair, then the mean over pairs)."""
    cases = [("b_same", "b same"), ("b_other", "b other")]
    if rows and "dice_c_same" in rows[0]:
        cases += [("c_same", "c ANTs same"), ("c_other", "c ANTs other")]
    lines = [
        f"## Affine stage + deformable model `{meta['model']}` (Dice over 56 labels)",
        "",
        "(a): `Registrator(model)` on the original, affinely aligned pair; (b): "
        "`Registrator(model, affine=True)` on the perturbed moving image (and its label map, "
        "nearest neighbour) against the fixed image, on the same grid and on the other grid"
        + ("; (c): ANTs Affine, then the model" if len(cases) > 2 else "")
        + ". (b0): `Registrator(model, affine=True)` on the unperturbed pair. Δa = Dice - "
        "Dice (a); Δ0 = Dice - Dice (b0) (what the perturbation costs); error: affine stage vs "
        "`S @ T0` (mm; T0: the method's own affine on the unperturbed pair); seconds: affine "
        "stage / whole `register` call (the first pair includes graph tracing).",
        "",
    ]
    header = ["pair", "before", "(a)", "(a) s", "(b0)"]
    for _, label in cases:
        header += [f"({label})", "Δa", "Δ0", "mm", "affine s", "total s"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def cells(values):
        out = [
            f"{values['dice_before']:.4f}",
            f"{values['dice_a']:.4f}",
            f"{values['seconds_a']:.1f}",
            f"{values['dice_b_unperturbed']:.4f}",
        ]
        for key, _ in cases:
            out += [
                f"{values[f'dice_{key}']:.4f}",
                f"{values[f'dice_{key}'] - values['dice_a']:+.4f}",
                f"{values[f'dice_{key}'] - values['dice_b_unperturbed']:+.4f}",
                f"{values[f'error_mm_{key}']:.3f}",
                f"{values[f'affine_seconds_{key}']:.1f}",
                f"{values[f'seconds_{key}']:.1f}",
            ]
        return out

    for r in rows:
        lines.append("| " + " | ".join([r["name"], *cells(r)]) + " |")
    mean = {
        k: float(np.mean([r[k] for r in rows]))
        for k in rows[0]
        if k.startswith(("dice_", "seconds_", "affine_seconds_", "error_mm_"))
    }
    lines.append("| **mean** | " + " | ".join(cells(mean)) + " |")
    lines.append("")
    for key, label in cases:
        deltas = np.array([r[f"dice_{key}"] - r["dice_a"] for r in rows])
        zero = np.array([r[f"dice_{key}"] - r["dice_b_unperturbed"] for r in rows])
        later = rows[1:] or rows
        lines.append(
            f"- ({label}): Δa mean {deltas.mean():+.4f}, worst {deltas.min():+.4f} "
            f"({int((deltas >= -0.02).sum())}/{len(rows)} pairs at most 0.02 below (a)); "
            f"Δ0 mean {zero.mean():+.4f}, worst {zero.min():+.4f}; "
            f"seconds (pairs 2+) affine median "
            f"{np.median([r[f'affine_seconds_{key}'] for r in later]):.1f}, register median "
            f"{np.median([r[f'seconds_{key}'] for r in later]):.1f}"
        )
    lines.append(
        "- (b) unperturbed pair (the affine stage on the aligned pair): Dice mean "
        f"{np.mean([r['dice_b_unperturbed'] for r in rows]):.4f}; affine stage alone on the "
        f"perturbed images: same {np.mean([r['dice_affine_only_same'] for r in rows]):.4f}, "
        f"other {np.mean([r['dice_affine_only_other'] for r in rows]):.4f}"
    )
    if meta.get("cli_timing"):
        # Measured outside this script (`time python -m vxmtf.register ... --affine`).
        lines += ["", f"Whole command with process start: {meta['cli_timing']}"]
    return "\n".join(lines) + "\n"


def markdown(rows, capture, ants_check, meta):
    lines = [
        "# Affine stage on LPBA40 (known random affines)",
        "",
        f"Machine: {meta['cpus']} CPUs, load average before {meta['load_before']}, "
        f"after {meta['load_after']}; TF threads default; ANTs threads {meta['threads']}.",
        "",
    ]
    if rows:
        lines += [
            "Error: mean |T_est(x) - T_true(x)| (mm) over the fixed brain; `self`: truth exact; "
            "`pair`: truth `S @ T0` (T0 = the method's own result on the unperturbed pair).",
            "",
        ]
    methods = sorted({r["method"] for r in rows}, key=lambda m: m != "vxmtf")
    header = "| pair | case | grid | " + " | ".join(f"{m} mm | {m} s" for m in methods) + " |"
    lines += [header, "|" + "---|" * (3 + 2 * len(methods))] if rows else []
    keys = sorted({(r["pair"], r["name"], r["case"], r["grid"]) for r in rows})
    for key in keys:
        cells = [str(key[1]), key[2], key[3]]
        for method in methods:
            match = [r for r in rows if (r["pair"], r["name"], r["case"], r["grid"]) == key]
            match = [r for r in match if r["method"] == method]
            if match:
                cells += [f"{match[0]['mean_error_mm']:.3f}", f"{match[0]['seconds']:.2f}"]
            else:
                cells += ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for method in methods:
        sub = [r for r in rows if r["method"] == method]
        errors = np.array([r["mean_error_mm"] for r in sub])
        seconds = np.array([r["seconds"] for r in sub])
        lines.append(
            f"- {method}: error mean {errors.mean():.3f} mm, max {errors.max():.3f} mm; "
            f"seconds median {np.median(seconds):.2f}, max {seconds.max():.2f} "
            f"({len(sub)} runs)"
        )
    if ants_check:
        lines += [
            "",
            "ANTs applying our ITK file vs our resampling (brain voxels): max |diff| "
            f"{ants_check['max_abs_difference_in_brain']:.2e}, mean "
            f"{ants_check['mean_abs_difference_in_brain']:.2e}; max |diff| where the sample "
            "lies at least 1 voxel inside the moving grid "
            f"({ants_check['interior_share_of_brain']:.1%} of the brain) "
            f"{ants_check['max_abs_difference_interior']:.2e} "
            f"(intensity range {ants_check['intensity_range']:.3g}).",
        ]
    if capture:
        lines += ["", "## Capture range (self case, error < 1 mm = converged)", ""]
        lines += ["| motion | axis | amount | error mm |", "|---|---|---|---|"]
        for c in capture:
            if c["kind"] == "rotation":
                amount = f"{c['degrees']} deg"
            else:
                amount = f"{c['mm']} mm (init {c['init']})"
            lines.append(f"| {c['kind']} | {c['axis']} | {amount} | {c['error']:.3f} |")
    return "\n".join(lines) + "\n"


def write_report(out, report):
    """`affine.json` and `affine.md` in `out` from the report dict `main` builds."""
    (out / "affine.json").write_text(json.dumps(report, indent=1))
    text = markdown(
        report["rows"], report["capture"], report["ants_reads_our_file"], report["meta"]
    )
    if report.get("model_rows"):
        text += "\n" + model_markdown(report["model_rows"], report["meta"])
    (out / "affine.md").write_text(text)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_affine", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--data", required=True, type=Path, help="Learn2Reg dataset JSON")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--pairs", type=int, default=3, help="registration_val pairs to use")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random affines")
    parser.add_argument("--metric", default="ncc", choices=("ncc", "mse", "mi"))
    parser.add_argument("--transform", default="affine", choices=("affine", "rigid", "similarity"))
    parser.add_argument("--ants", action="store_true", help="also run ANTs Affine (antspyx)")
    parser.add_argument("--threads", type=int, default=2, help="ITK threads for ANTs")
    parser.add_argument("--capture", action="store_true", help="measure the capture range")
    parser.add_argument("--no-pairs", action="store_true", help="skip the pair table")
    parser.add_argument(
        "--model", help="also measure Dice of the affine stage + this deformable model (.keras)"
    )
    parser.add_argument(
        "--save-moving",
        type=Path,
        help="with --model: write the first pair's perturbed moving images and labels here",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    dataset = json.loads(args.data.read_text())
    root = args.data.parent
    pairs = dataset["registration_val"][: args.pairs]
    args.out.mkdir(parents=True, exist_ok=True)

    def log(message):
        print(message, flush=True)

    meta = {
        "command": " ".join(sys.argv),
        "cpus": os.cpu_count(),
        "load_before": [round(v, 2) for v in os.getloadavg()],
        "threads": args.threads,
        "metric": args.metric,
        "transform": args.transform,
        "seed": args.seed,
    }
    methods = [Ours(metric=args.metric, transform=args.transform)]
    if args.ants:
        methods.append(Ants(args.threads))
    rows, ants_check = (
        ([], None) if args.no_pairs else run_pairs(pairs, root, methods, args.seed, log)
    )
    model_rows = []
    if args.model:
        labels = sorted(int(k) for k in dataset["labels"] if int(k) != 0)
        meta["model"] = args.model
        meta["labels"] = len(labels)
        defaults = args.metric == "ncc" and args.transform == "affine"
        options = None if defaults else {"metric": args.metric, "transform": args.transform}
        ants_method = None
        if args.ants:
            ants_method = methods[1] if len(methods) > 1 else Ants(args.threads)
        model_rows = run_model(
            pairs,
            root,
            labels,
            args.model,
            options,
            args.seed,
            ants_method,
            args.save_moving,
            log,
            checkpoint=lambda done: (args.out / "affine.partial.json").write_text(
                json.dumps({"meta": meta, "model_rows": done}, indent=1)
            ),
        )
    capture = []
    if args.capture:
        identity = Ours(metric=args.metric, transform=args.transform, init="identity")
        capture = run_capture(pairs[0], root, methods[0], identity, log)
    meta["load_after"] = [round(v, 2) for v in os.getloadavg()]
    report = {
        "meta": meta,
        "rows": rows,
        "capture": capture,
        "ants_reads_our_file": ants_check,
        "model_rows": model_rows,
    }
    write_report(args.out, report)
    (args.out / "affine.partial.json").unlink(missing_ok=True)
    log(f"wrote {args.out / 'affine.md'} and {args.out / 'affine.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
