"""`vxmtf.data.itk`: ITK transform files, checked against SimpleITK and SciPy."""

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from vxmtf.data.itk import (
    itk_geometry,
    lps_to_ras,
    ras_to_lps,
    read_itk_affine,
    write_itk_affine,
)

sitk = pytest.importorskip("SimpleITK")


def random_map(rng, ndim):
    """A random well-conditioned world map (homogeneous)."""
    matrix = np.eye(ndim + 1)
    matrix[:ndim, :ndim] = np.eye(ndim) + rng.uniform(-0.2, 0.2, (ndim, ndim))
    matrix[:ndim, ndim] = rng.uniform(-10, 10, ndim)
    return matrix


def sitk_image(array, affine):
    """A SimpleITK image of a nibabel-ordered array `a[i, j(, k)]` with a RAS affine."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose()))
    origin, spacing, direction = itk_geometry(affine)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


def blobs(shape, seed=0):
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=shape)
    return ndimage.gaussian_filter(noise, 2.0).astype(np.float64)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("suffix", [".txt", ".tfm", ".mat"])
@pytest.mark.parametrize("with_center", [False, True])
def test_round_trip(tmp_path, ndim, suffix, with_center):
    rng = np.random.default_rng(ndim)
    matrix = random_map(rng, ndim)
    center = rng.uniform(-50, 50, ndim) if with_center else None
    path = write_itk_affine(tmp_path / f"t{suffix}", matrix, center=center)
    np.testing.assert_allclose(read_itk_affine(path), matrix, atol=1e-12)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("suffix", [".txt", ".mat"])
def test_simpleitk_reads_the_same_map(tmp_path, ndim, suffix):
    rng = np.random.default_rng(10 + ndim)
    matrix = random_map(rng, ndim)
    path = write_itk_affine(tmp_path / f"t{suffix}", matrix, center=rng.uniform(-5, 5, ndim))
    transform = sitk.ReadTransform(str(path))
    points_ras = rng.uniform(-80, 80, (5, ndim))
    lps = ras_to_lps(matrix)
    for point in points_ras:
        point_lps = point * np.where(np.arange(ndim) < 2, -1.0, 1.0)
        expected = lps[:ndim, :ndim] @ point_lps + lps[:ndim, ndim]
        np.testing.assert_allclose(transform.TransformPoint(point_lps.tolist()), expected)


@pytest.mark.parametrize("with_center", [False, True])
def test_reads_simpleitk_files(tmp_path, with_center):
    transform = sitk.AffineTransform(3)
    transform.SetMatrix([1.1, 0.1, 0.0, -0.05, 0.9, 0.2, 0.0, 0.1, 1.0])
    transform.SetTranslation([3.0, -2.0, 5.0])
    if with_center:
        transform.SetCenter([10.0, 20.0, -30.0])
    sitk.WriteTransform(transform, str(tmp_path / "s.txt"))
    matrix = read_itk_affine(tmp_path / "s.txt")
    point_ras = np.array([12.0, -7.0, 33.0])
    flip = np.array([-1.0, -1.0, 1.0])
    moved_lps = np.array(transform.TransformPoint((point_ras * flip).tolist()))
    np.testing.assert_allclose(matrix[:3, :3] @ point_ras + matrix[:3, 3], moved_lps * flip)


def test_ras_lps_is_an_involution():
    matrix = random_map(np.random.default_rng(3), 3)
    np.testing.assert_allclose(lps_to_ras(ras_to_lps(matrix)), matrix)
    assert ras_to_lps(matrix)[0, 2] == -matrix[0, 2]
    assert ras_to_lps(matrix)[2, 2] == matrix[2, 2]


def test_geometry_matches_the_nifti_reader(tmp_path):
    affine = np.array(
        [[0.0, 0.0, -1.5, 20.0], [1.2, 0.0, 0.0, -30.0], [0.0, -2.0, 0.0, 15.0], [0, 0, 0, 1]]
    )
    array = np.zeros((4, 5, 6), np.float32)
    nib.save(nib.Nifti1Image(array, affine), tmp_path / "v.nii.gz")
    image = sitk.ReadImage(str(tmp_path / "v.nii.gz"))
    origin, spacing, direction = itk_geometry(affine)
    np.testing.assert_allclose(image.GetOrigin(), origin, atol=1e-5)
    np.testing.assert_allclose(image.GetSpacing(), spacing, atol=1e-5)
    np.testing.assert_allclose(image.GetDirection(), direction, atol=1e-5)
    assert image.GetSize() == (4, 5, 6)


def test_simpleitk_resampling_matches_the_voxel_map(tmp_path):
    """Our file + SimpleITK resampling == SciPy through inv(A_moving) @ T @ A_fixed."""
    moving = blobs((20, 24, 22))
    moving_affine = np.array(
        [[-1.2, 0.0, 0.0, 12.0], [0.0, 0.0, 1.1, -11.0], [0.0, 1.3, 0.0, -14.0], [0, 0, 0, 1]]
    )
    fixed_shape = (18, 20, 16)
    fixed_affine = np.diag([1.4, 1.25, 1.5, 1.0])
    fixed_affine[:3, 3] = [-12.0, -12.0, -11.0]
    world = np.eye(4)
    world[:3, :3] = Rotation.from_euler("xyz", [8, -5, 12], degrees=True).as_matrix() * 1.05
    world[:3, 3] = [2.0, -1.5, 1.0]

    path = write_itk_affine(tmp_path / "affine.txt", world, center=[3.0, 2.0, 1.0])
    transform = sitk.ReadTransform(str(path))
    moving_image = sitk_image(moving, moving_affine)
    fixed_image = sitk_image(np.zeros(fixed_shape), fixed_affine)
    resampled = sitk.Resample(moving_image, fixed_image, transform, sitk.sitkLinear, 0.0)
    ours_sitk = sitk.GetArrayFromImage(resampled).transpose()  # back to (i, j, k)

    voxel = np.linalg.inv(moving_affine) @ world @ fixed_affine
    oracle = ndimage.affine_transform(
        moving, voxel[:3, :3], voxel[:3, 3], output_shape=fixed_shape, order=1, cval=0.0
    )
    # Compare where the sample lies well inside the moving grid (borders differ by convention).
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in fixed_shape], indexing="ij"), -1)
    coords = grid @ voxel[:3, :3].T + voxel[:3, 3]
    inside = np.all((coords >= 0.5) & (coords <= np.array(moving.shape) - 1.5), axis=-1)
    assert inside.mean() > 0.3
    np.testing.assert_allclose(ours_sitk[inside], oracle[inside], atol=1e-5)


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="Received: shape=\\(3, 4\\)"):
        write_itk_affine(tmp_path / "t.txt", np.zeros((3, 4)))
    with pytest.raises(ValueError, match="must end with .txt, .tfm"):
        write_itk_affine(tmp_path / "t.json", np.eye(4))
    with pytest.raises(ValueError, match="3 coordinates.*Received: center=\\[1.0, 2.0\\]"):
        write_itk_affine(tmp_path / "t.txt", np.eye(4), center=[1.0, 2.0])
    with pytest.raises(ValueError, match="shear"):
        itk_geometry([[1, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    sitk.WriteTransform(sitk.Euler3DTransform(), str(tmp_path / "euler.txt"))
    with pytest.raises(ValueError, match="Euler3DTransform"):
        read_itk_affine(tmp_path / "euler.txt")
    (tmp_path / "bad.txt").write_text("hello\n")
    with pytest.raises(ValueError, match="#Insight Transform File"):
        read_itk_affine(tmp_path / "bad.txt")
