"""`vxmtf.affine`: affine registration in world coordinates on tiny synthetic volumes."""

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage
from scipy.spatial.transform import Rotation

from vxmtf.affine import AffineResult, apply_affine, register_affine
from vxmtf.affine._metrics import mi_loss, mse_loss, ncc_loss
from vxmtf.affine._parameters import NumpyOps, rotation

# Smooth, asymmetric content defined in world mm, so that both images of a pair are exact samples.
_RNG = np.random.default_rng(7)
BLOB_CENTRES = {3: _RNG.uniform(-14, 14, (7, 3)), 2: _RNG.uniform(-14, 14, (7, 2))}
BLOB_SIGMAS = _RNG.uniform(3.0, 6.0, 7)
BLOB_AMPLITUDES = _RNG.uniform(0.5, 1.5, 7)


def world_points(shape, affine):
    """World coordinates `(*shape, ndim)` of every voxel centre."""
    ndim = len(shape)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    return grid @ affine[:ndim, :ndim].T + affine[:ndim, ndim]


def scene(points):
    """Sum of Gaussian blobs at world points `(..., ndim)`."""
    ndim = points.shape[-1]
    out = np.zeros(points.shape[:-1])
    for centre, sigma, amplitude in zip(
        BLOB_CENTRES[ndim], BLOB_SIGMAS, BLOB_AMPLITUDES, strict=True
    ):
        out += amplitude * np.exp(-np.sum((points - centre) ** 2, -1) / (2 * sigma**2))
    return out.astype(np.float32)


def make_pair(truth, fixed_shape, fixed_affine, moving_shape, moving_affine):
    """Fixed = scene on its grid; moving(y) = scene(inv(truth) y), so moving(truth x) = fixed(x)."""
    ndim = len(fixed_shape)
    inverse = np.linalg.inv(truth)
    moving_world = world_points(moving_shape, moving_affine)
    moving = scene(moving_world @ inverse[:ndim, :ndim].T + inverse[:ndim, ndim])
    fixed = scene(world_points(fixed_shape, fixed_affine))
    return moving, fixed


def grid_affine(spacing, shape, centre=0.0, linear=None):
    """A voxel-to-world affine whose field of view is centred on `centre`."""
    ndim = len(shape)
    linear = np.diag(spacing) if linear is None else np.asarray(linear, float)
    affine = np.eye(ndim + 1)
    affine[:ndim, :ndim] = linear
    affine[:ndim, ndim] = centre - linear @ ((np.asarray(shape) - 1) / 2.0)
    return affine


def world_map(degrees, shift, scale=1.0):
    ndim = len(shift)
    out = np.eye(ndim + 1)
    if ndim == 3:
        rotation = Rotation.from_euler("xyz", degrees, degrees=True).as_matrix()
    else:
        angle = np.radians(degrees)
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    out[:ndim, :ndim] = rotation * scale
    out[:ndim, ndim] = shift
    return out


def mean_error(result, truth, fixed_shape, fixed_affine):
    points = world_points(fixed_shape, fixed_affine).reshape(-1, len(fixed_shape))
    ndim = len(fixed_shape)
    expected = points @ truth[:ndim, :ndim].T + truth[:ndim, ndim]
    return float(np.linalg.norm(result.transform_points(points) - expected, axis=-1).mean())


FIXED_SHAPE = (28, 28, 28)
FIXED_AFFINE = grid_affine([1.5, 1.5, 1.5], FIXED_SHAPE)
TRUTH = world_map([9.0, -7.0, 11.0], [3.0, -2.5, 2.0])
FAST = {"levels": (6.0, 3.0), "iterations": (60, 30)}


def test_same_grid_recovers_rotation_and_shift():
    moving, fixed = make_pair(TRUTH, FIXED_SHAPE, FIXED_AFFINE, FIXED_SHAPE, FIXED_AFFINE)
    result = register_affine(moving, FIXED_AFFINE, fixed, FIXED_AFFINE, **FAST)
    assert isinstance(result, AffineResult)
    assert mean_error(result, TRUTH, FIXED_SHAPE, FIXED_AFFINE) < 0.3
    assert result.parameters.shape == (12,)
    assert result.iterations == 90
    assert result.loss < -0.99
    assert result.seconds > 0 and result.overlap > 0.9


@pytest.mark.parametrize("metric", ["ncc", "mi"])
def test_other_grid_recovers_rotation_and_shift(metric):
    """Moving on another voxel size, shape, origin and axis order; world positions agree."""
    moving_shape = (26, 30, 24)
    swap = [[-1.3, 0.0, 0.0], [0.0, 0.0, 1.4], [0.0, 1.2, 0.0]]  # i -> -x, j -> z, k -> y
    moving_affine = grid_affine(None, moving_shape, centre=[2.0, -1.0, 1.5], linear=swap)
    moving, fixed = make_pair(TRUTH, FIXED_SHAPE, FIXED_AFFINE, moving_shape, moving_affine)
    result = register_affine(moving, moving_affine, fixed, FIXED_AFFINE, metric=metric, **FAST)
    assert mean_error(result, TRUTH, FIXED_SHAPE, FIXED_AFFINE) < 0.4

    # The direction: moving resampled through the result lies on the fixed image.
    moved = result.resample(moving, FIXED_SHAPE)
    inside = ndimage.binary_erosion(moved != 0, iterations=2)
    assert np.corrcoef(moved[inside], fixed[inside])[0, 1] > 0.995


def test_mi_aligns_an_inverted_contrast():
    """Mutual information aligns images whose intensities are related by a decreasing map."""
    moving, fixed = make_pair(TRUTH, FIXED_SHAPE, FIXED_AFFINE, FIXED_SHAPE, FIXED_AFFINE)
    inverted = (moving.max() - moving) ** 2
    result = register_affine(
        inverted, FIXED_AFFINE, fixed, FIXED_AFFINE, metric="mi", init="identity", **FAST
    )
    assert mean_error(result, TRUTH, FIXED_SHAPE, FIXED_AFFINE) < 0.6  # ~0.3 measured


def test_voxel_matrix_and_resample_agree_with_scipy():
    moving_affine = grid_affine([1.2, 1.1, 1.3], (20, 22, 18), centre=[1.0, 0.0, -1.0])
    result = AffineResult(
        matrix=world_map([5.0, 0.0, -4.0], [1.0, 2.0, -1.0], scale=1.02),
        moving_affine=moving_affine,
        fixed_affine=FIXED_AFFINE,
        initial_matrix=np.eye(4),
        transform="affine",
        metric="ncc",
        parameters=np.zeros(12),
        centre=np.zeros(3),
        loss=0.0,
        level_losses=[0.0],
        iterations=0,
        seconds=0.0,
        overlap=1.0,
    )
    voxel = result.voxel_matrix()
    np.testing.assert_allclose(
        voxel, np.linalg.inv(moving_affine) @ result.matrix @ FIXED_AFFINE, atol=1e-12
    )
    moving = scene(world_points((20, 22, 18), moving_affine))
    oracle = ndimage.affine_transform(
        moving, voxel[:3, :3], voxel[:3, 3], output_shape=FIXED_SHAPE, order=1, mode="constant"
    )
    ours = result.resample(moving, FIXED_SHAPE)
    coords = world_points(FIXED_SHAPE, voxel)
    inside = np.all((coords >= 0) & (coords <= np.array([19, 21, 17])), axis=-1)
    np.testing.assert_allclose(ours[inside], oracle[inside], atol=1e-4)
    nearest = apply_affine(
        moving, moving_affine, FIXED_SHAPE, FIXED_AFFINE, result.matrix, "nearest"
    )
    assert nearest.shape == FIXED_SHAPE


def test_rigid_and_similarity_restrictions():
    truth = world_map([8.0, 6.0, -10.0], [2.0, 3.0, -1.0], scale=1.06)
    moving, fixed = make_pair(truth, FIXED_SHAPE, FIXED_AFFINE, FIXED_SHAPE, FIXED_AFFINE)
    rigid = register_affine(moving, FIXED_AFFINE, fixed, FIXED_AFFINE, transform="rigid", **FAST)
    linear = rigid.matrix[:3, :3]
    np.testing.assert_allclose(linear.T @ linear, np.eye(3), atol=1e-6)
    assert np.linalg.det(linear) == pytest.approx(1.0, abs=1e-6)
    assert rigid.parameters.shape == (6,)

    similar = register_affine(
        moving, FIXED_AFFINE, fixed, FIXED_AFFINE, transform="similarity", **FAST
    )
    linear = similar.matrix[:3, :3]
    scale = np.cbrt(np.linalg.det(linear))
    np.testing.assert_allclose(linear.T @ linear, scale**2 * np.eye(3), atol=1e-6)
    assert scale == pytest.approx(1.06, abs=0.01)
    assert similar.parameters.shape == (7,)
    assert mean_error(similar, truth, FIXED_SHAPE, FIXED_AFFINE) < 0.3


def test_2d_recovers_rotation_and_shift():
    shape = (32, 32)
    fixed_affine = grid_affine([1.25, 1.25], shape)
    moving_affine = grid_affine([1.0, 1.5], (36, 26), centre=[1.0, -2.0])
    truth = world_map(12.0, [2.5, -3.0])
    moving, fixed = make_pair(truth, shape, fixed_affine, (36, 26), moving_affine)
    # A 2D NIfTI affine comes as 4x4; it is reduced to 3x3.
    nifti = np.eye(4)
    nifti[np.ix_([0, 1, 3], [0, 1, 3])] = moving_affine
    result = register_affine(moving, nifti, fixed, fixed_affine, metric="mse", **FAST)
    assert result.matrix.shape == (3, 3)
    assert result.parameters.shape == (6,)
    assert mean_error(result, truth, shape, fixed_affine) < 0.3


def test_rotation_matches_scipy():
    rotvec = np.array([0.3, -0.2, 0.5])
    np.testing.assert_allclose(
        rotation(rotvec, 3, NumpyOps), Rotation.from_rotvec(rotvec).as_matrix(), atol=1e-10
    )
    np.testing.assert_allclose(rotation(np.zeros(3), 3, NumpyOps), np.eye(3), atol=1e-12)


def test_metric_values():
    rng = np.random.default_rng(0)
    f = rng.uniform(0.0, 1.0, 500).astype(np.float32)
    m = (2.0 * f + 1.0).astype(np.float32)
    w = np.ones(500, np.float32)
    assert float(ncc_loss(f, m, w, 32)) == pytest.approx(-1.0, abs=1e-5)
    np.testing.assert_allclose(float(mse_loss(f, m, w, 32)), np.mean((f - m) ** 2), rtol=1e-5)
    # Points of weight 0 do not count.
    w_half = np.where(np.arange(500) < 250, 1.0, 0.0).astype(np.float32)
    np.testing.assert_allclose(
        float(mse_loss(f, m, w_half, 32)), np.mean((f[:250] - m[:250]) ** 2), rtol=1e-5
    )
    related = float(mi_loss(f, 1.0 - f, w, 16))  # an inverted contrast: high MI
    unrelated = float(mi_loss(f, rng.permutation(f), w, 16))
    assert related < unrelated - 0.5
    # MI is differentiable in the sampled intensities.
    sampled = tf.Variable(1.0 - f)
    with tf.GradientTape() as tape:
        loss = mi_loss(f, sampled, w, 16)
    assert np.all(np.isfinite(tape.gradient(loss, sampled).numpy()))


def test_errors():
    fixed = scene(world_points(FIXED_SHAPE, FIXED_AFFINE))
    eye = np.eye(4)
    names = ("mov.nii.gz", "fix.nii.gz")
    with pytest.raises(ValueError, match="same rank.*mov.nii.gz shape=\\(28, 28\\)"):
        register_affine(fixed[0], eye, fixed, eye, names=names)
    with pytest.raises(ValueError, match="2D or 3D.*Received: shape=\\(2, 28, 28, 28\\)"):
        register_affine(np.stack([fixed, fixed]), eye, fixed, eye)
    with pytest.raises(ValueError, match="initial_matrix must be a \\(3, 3\\).*shape=\\(4, 4\\)"):
        register_affine(fixed[0], np.eye(3), fixed[0], np.eye(3), initial_matrix=np.eye(4))
    broken = fixed.copy()
    broken[3, 4, 5] = np.nan
    with pytest.raises(ValueError, match="fix.nii.gz must be finite.*1 NaN"):
        register_affine(fixed, eye, broken, eye, names=names)
    singular = np.diag([1.0, 1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="mov.nii.gz affine must be invertible"):
        register_affine(fixed, singular, fixed, eye, names=names)
    with pytest.raises(ValueError, match="must end with the row"):
        register_affine(fixed, np.ones((4, 4)), fixed, eye)
    far = eye.copy()
    far[:3, 3] = 500.0
    with pytest.raises(ValueError, match="do not overlap.*0.0% .*min_overlap=25.0%"):
        register_affine(fixed, far, fixed, eye, init="identity", names=names)
    with pytest.raises(ValueError, match="constant"):
        register_affine(np.zeros_like(fixed), eye, fixed, eye)
    with pytest.raises(ValueError, match="`transform` must be one of.*'shear'"):
        register_affine(fixed, eye, fixed, eye, transform="shear")
    with pytest.raises(ValueError, match="`metric` must be one of"):
        register_affine(fixed, eye, fixed, eye, metric="cc")
    with pytest.raises(ValueError, match="same length"):
        register_affine(fixed, eye, fixed, eye, levels=(4.0, 2.0), iterations=(10,))
    coupled = np.eye(4)
    coupled[0, 2] = 0.5
    with pytest.raises(ValueError, match="must not mix the in-plane axes"):
        register_affine(fixed[0], coupled, fixed[0], eye)
    with pytest.raises(TypeError, match="numeric"):
        register_affine(np.full((4, 4), "a"), eye, fixed[0], eye)


@pytest.mark.slow
def test_lpba40_known_affine(lpba40_dir):
    """A known random affine applied to a real validation image is recovered within 1 mm."""
    nib = pytest.importorskip("nibabel")
    image = nib.load(lpba40_dir / "imagesTr" / "LPBA40_0006_0000.nii.gz")
    fixed = image.get_fdata(dtype=np.float32)
    affine = image.affine
    rng = np.random.default_rng(2026)
    centre = affine[:3, :3] @ ((np.array(fixed.shape) - 1) / 2.0) + affine[:3, 3]
    linear = Rotation.from_euler("xyz", rng.uniform(-15, 15, 3), degrees=True).as_matrix()
    linear = linear @ np.diag(rng.uniform(0.9, 1.1, 3))
    truth = np.eye(4)
    truth[:3, :3] = linear
    truth[:3, 3] = centre + rng.uniform(-15, 15, 3) - linear @ centre
    voxel = np.linalg.inv(affine) @ np.linalg.inv(truth) @ affine
    moving = ndimage.affine_transform(fixed, voxel[:3, :3], voxel[:3, 3], order=1)

    result = register_affine(moving, affine, fixed, affine)
    brain = np.argwhere(fixed > 0) @ affine[:3, :3].T + affine[:3, 3]
    expected = brain @ truth[:3, :3].T + truth[:3, 3]
    error = np.linalg.norm(result.transform_points(brain) - expected, axis=-1)
    assert error.mean() < 1.0, (error.mean(), result)
