"""`python -m vxmtf.register --affine`: raw scans on different grids, an affine stage in world
coordinates, then the deformable model; outputs on the fixed grid hold the composed transform.

The deformable model is a tiny `VxmDense` whose field is the constant `SHIFT` (helpers), so the
composition is known: fixed voxel `x` reads the moving image at world point
`T(A_fixed (x + SHIFT))`, `T` the affine stage's map. Oracles: SimpleITK reading the ITK
transform file and the millimetre warp (as antsApplyTransforms would), and SciPy applying the
affine and then the shift one after the other.
"""

import nibabel as nib
import numpy as np
import pytest
from helpers import shift_model
from scipy import ndimage

from vxmtf.register import main

SHIFT = np.array([1.0, -1.0, 0.5], np.float32)
FIXED_SHAPE = (30, 28, 26)
MOVING_SHAPE = (26, 30, 22)
LPS = np.diag([-1.0, -1.0, 1.0])


def _rotation(axis, degrees):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = np.deg2rad(degrees)
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _grid(spacing, origin, rotation=None):
    affine = np.eye(4)
    affine[:3, :3] = (np.eye(3) if rotation is None else rotation) @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def _save(path, array, affine):
    image = nib.Nifti1Image(array, affine)
    image.header.set_sform(affine, code=2)
    image.header.set_qform(affine, code=1)
    nib.save(image, path)
    return path


def _anatomy(shape, rng):
    """Smooth, asymmetric blobs on a dark background: something an affine can lock onto."""
    volume = np.zeros(shape)
    for _ in range(7):
        centre = rng.uniform(0.25, 0.75, 3) * np.array(shape)
        radius = rng.uniform(2.5, 5.0)
        grid = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), -1)
        volume += rng.uniform(0.5, 1.0) * np.exp(-np.sum((grid - centre) ** 2, -1) / radius**2)
    return ndimage.gaussian_filter(volume, 1.0).astype(np.float32)


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """A fixed scan, and the same anatomy moved by a known world map `T` (rotation about an
    oblique axis and a shift) on another grid (voxel size, shape, origin, orientation)."""
    folder = tmp_path_factory.mktemp("affine")
    rng = np.random.default_rng(3)
    fixed = _anatomy(FIXED_SHAPE, rng)
    fixed_affine = _grid((1.0, 1.0, 1.0), (-15.0, -14.0, -13.0))
    moving_affine = _grid((1.2, 0.9, 1.3), (-14.0, -12.0, -15.0), _rotation((0, 0, 1), 10))
    truth = np.eye(4)  # fixed world -> moving world
    truth[:3, :3] = _rotation((1.0, 0.5, 0.2), 7.0)
    truth[:3, 3] = (2.0, -1.5, 1.0)
    # moving[y] = fixed at world T^-1 (A_moving y): fixed voxel inv(A_f) T^-1 A_m y.
    to_fixed = np.linalg.inv(fixed_affine) @ np.linalg.inv(truth) @ moving_affine
    moving = ndimage.affine_transform(
        fixed, to_fixed[:3, :3], to_fixed[:3, 3], output_shape=MOVING_SHAPE, order=3
    )
    labels = (moving > 0.35).astype(np.uint8) + (moving > 0.6).astype(np.uint8)
    model = folder / "shift.keras"
    shift_model(SHIFT).save(model)
    return {
        "dir": folder,
        "model": model,
        "fixed": _save(folder / "fixed.nii.gz", fixed, fixed_affine),
        "moving": _save(folder / "moving.nii.gz", moving, moving_affine),
        "labels": _save(folder / "moving_seg.nii.gz", labels, moving_affine),
        "truth": truth,
        "arrays": (moving, fixed, labels),
        "affines": (moving_affine, fixed_affine),
    }


@pytest.fixture(scope="module")
def outputs(scans):
    out = scans["dir"]
    argv = ["--model", scans["model"], "--moving", scans["moving"], "--fixed", scans["fixed"]]
    argv += ["--moved", out / "moved.nii.gz", "--warp", out / "warp.nii.gz"]
    argv += ["--warp-mm", out / "warp_mm.nii.gz", "--affine-transform", out / "affine.txt"]
    argv += ["--moving-labels", scans["labels"], "--moved-labels", out / "moved_seg.nii.gz"]
    assert main([str(a) for a in [*argv, "--affine"]]) == 0
    return out


def _fixed_points():
    return np.stack(np.meshgrid(*(np.arange(n) for n in FIXED_SHAPE), indexing="ij"), -1)


def _world(affine, points):
    return points @ affine[:3, :3].T + affine[:3, 3]


def _itk_map(transform, points_ras):
    """SimpleITK's transform applied to RAS points (it works in LPS)."""
    flat = points_ras.reshape(-1, 3) @ LPS
    mapped = np.array([transform.TransformPoint(tuple(p)) for p in flat])
    return (mapped @ LPS).reshape(points_ras.shape)


def test_the_itk_file_holds_the_recovered_affine(scans, outputs):
    sitk = pytest.importorskip("SimpleITK")
    transform = sitk.ReadTransform(str(outputs / "affine.txt"))
    fixed_affine = scans["affines"][1]
    points = _world(fixed_affine, _fixed_points()[::3, ::3, ::3].reshape(-1, 3))
    expected = _world(scans["truth"], points)
    error = np.linalg.norm(_itk_map(transform, points) - expected, axis=-1)
    assert error.mean() < 0.5, error.mean()  # mm, over the fixed field of view


def test_warp_is_the_composed_transform_as_itk_reads_it(scans, outputs):
    """--warp in fixed voxels: x + w(x) = A_f^-1 T (A_f (x + SHIFT)) with ITK's own T."""
    sitk = pytest.importorskip("SimpleITK")
    transform = sitk.ReadTransform(str(outputs / "affine.txt"))
    fixed_affine = scans["affines"][1]
    warp = nib.load(outputs / "warp.nii.gz").get_fdata()
    assert warp.shape == (*FIXED_SHAPE, 3)
    x = _fixed_points()[::2, ::2, ::2]
    target = _itk_map(transform, _world(fixed_affine, x + SHIFT))
    expected = _world(np.linalg.inv(fixed_affine), target) - x
    np.testing.assert_allclose(warp[::2, ::2, ::2], expected, atol=1e-3)


def test_the_mm_warp_alone_reproduces_moved_in_itk(scans, outputs):
    """What antsApplyTransforms -i moving -r fixed -t warp_mm.nii.gz computes."""
    sitk = pytest.importorskip("SimpleITK")
    field = sitk.ReadImage(str(outputs / "warp_mm.nii.gz"), sitk.sitkVectorFloat64)
    transform = sitk.DisplacementFieldTransform(field)
    fixed = sitk.ReadImage(str(scans["fixed"]))
    moving = sitk.Cast(sitk.ReadImage(str(scans["moving"])), sitk.sitkFloat64)
    resampled = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, -1.0, sitk.sitkFloat64)
    itk_moved = sitk.GetArrayFromImage(resampled).transpose(2, 1, 0)
    moved = nib.load(outputs / "moved.nii.gz").get_fdata()
    inside = itk_moved > -1.0  # ITK's default value marks points outside the moving scan
    assert inside.mean() > 0.6
    np.testing.assert_allclose(itk_moved[inside], moved[inside], atol=2e-3)


def test_affine_then_deformable_one_after_the_other(scans, outputs):
    """SciPy: the moving scan resampled onto the fixed grid by the recovered affine, then
    shifted by SHIFT: the same image as --moved (two interpolations: a loose tolerance)."""
    from vxmtf.data.itk import read_itk_affine

    moving, fixed, _ = scans["arrays"]
    moving_affine, fixed_affine = scans["affines"]
    matrix = read_itk_affine(outputs / "affine.txt")
    voxel_map = np.linalg.inv(moving_affine) @ matrix @ fixed_affine
    aligned = ndimage.affine_transform(
        moving, voxel_map[:3, :3], voxel_map[:3, 3], output_shape=FIXED_SHAPE, order=1
    )
    sequential = ndimage.shift(aligned, -SHIFT, order=1, mode="nearest")
    moved = nib.load(outputs / "moved.nii.gz").get_fdata()
    # Compare where both read the moving scan well inside its field of view.
    source = _world(voxel_map, _fixed_points() + SHIFT)
    inside = np.all((source > 2) & (source < np.array(MOVING_SHAPE) - 3), axis=-1)
    inside &= np.all(_fixed_points() + SHIFT < np.array(FIXED_SHAPE) - 2, axis=-1)
    inside &= np.all(_fixed_points() + SHIFT > 1, axis=-1)
    assert inside.mean() > 0.3
    assert np.abs(sequential - moved)[inside].max() < 0.03 * moved.max()
    core = tuple(slice(4, n - 4) for n in FIXED_SHAPE)
    # And the affine stage found the anatomy: the aligned scan matches the fixed one.
    assert np.corrcoef(aligned[core].ravel(), fixed[core].ravel())[0, 1] > 0.95


def test_labels_follow_the_composed_transform(scans, outputs):
    moving_affine, fixed_affine = scans["affines"]
    labels = scans["arrays"][2]
    moved_labels = np.asarray(nib.load(outputs / "moved_seg.nii.gz").dataobj)
    assert moved_labels.dtype == np.uint8 and moved_labels.shape == FIXED_SHAPE
    warp = nib.load(outputs / "warp.nii.gz").get_fdata()
    points = _world(np.linalg.inv(moving_affine) @ fixed_affine, _fixed_points() + warp)
    expected = ndimage.map_coordinates(labels, np.moveaxis(points, -1, 0), order=0, cval=0)
    assert (moved_labels == expected).mean() > 0.995  # ties at .5 may round either way


def test_bad_input_is_named(scans, tmp_path, capsys):
    base = ["--model", scans["model"], "--fixed", scans["fixed"]]
    base += ["--moved", tmp_path / "m.nii.gz", "--warp", tmp_path / "w.nii.gz"]
    flat = tmp_path / "moving.npy"
    np.save(flat, scans["arrays"][0])
    assert main([str(a) for a in [*base, "--moving", flat, "--affine"]]) == 2
    err = capsys.readouterr().err
    assert f"Received: {flat} carries none" in err and "world coordinates" in err
    argv = [*base, "--moving", scans["moving"], "--affine-transform", tmp_path / "a.txt"]
    assert main([str(a) for a in argv]) == 2
    assert "expected the affine stage on" in capsys.readouterr().err


def test_a_scan_far_away_in_the_world_is_found_from_its_centre_of_mass(scans, tmp_path):
    """Raw scans with unrelated origins (here 500 mm apart): the centre-of-mass start of the
    affine stage brings them together, so they register as the aligned pair does."""
    far = scans["affines"][0].copy()
    far[:3, 3] += 500.0
    away = _save(tmp_path / "away.nii.gz", scans["arrays"][0], far)
    argv = ["--model", scans["model"], "--fixed", scans["fixed"], "--moving", away]
    argv += ["--moved", tmp_path / "m.nii.gz", "--warp", tmp_path / "w.nii.gz", "--affine"]
    assert main([str(a) for a in argv]) == 0
    near = nib.load(scans["dir"] / "moved.nii.gz").get_fdata()
    np.testing.assert_allclose(nib.load(tmp_path / "m.nii.gz").get_fdata(), near, atol=0.05)
