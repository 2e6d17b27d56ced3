"""Tests for vxmtf.metrics.jacobian: analytic determinants, folding and SDlogJ."""

import math

import numpy as np
import pytest

from vxmtf.metrics import folding_fraction, jacobian_determinant, sdlogj

SHAPES = {2: (7, 6), 3: (6, 5, 4)}


def affine_displacement(matrix, offset, shape):
    """u(x) = (A - I) x + b on the voxel grid, shape (*shape, ndim), "ij" ordering."""
    ndim = len(shape)
    grid = np.indices(shape, dtype=np.float64)  # (ndim, *shape), grid[l] = x_l
    u = np.tensordot(matrix - np.eye(ndim), grid, axes=([1], [0]))  # (ndim, *shape)
    u += np.reshape(offset, (ndim,) + (1,) * ndim)
    return np.moveaxis(u, 0, -1)


def profile_field(shape, axis, profile):
    """Field whose only nonzero component is `axis`, varying along `axis` as `profile`."""
    u = np.zeros(shape + (len(shape),))
    index = [np.newaxis] * len(shape)
    index[axis] = slice(None)
    u[..., axis] = np.asarray(profile)[tuple(index)]
    return u


# phi_0(i) = i + u_0(i) takes the values 0 1 2 3 2 1 6 7, so np.gradient's central/one-sided
# differences give by hand: 1, (2-0)/2, (3-1)/2, (2-2)/2, (1-3)/2, (6-2)/2, (7-1)/2, 7-6.
FOLD_PROFILE = [0, 0, 0, 0, -2, -4, 0, 0]
FOLD_DETERMINANT = [1, 1, 1, 0, -1, 2, 3, 1]


@pytest.mark.parametrize("ndim", [2, 3])
def test_zero_displacement_gives_ones(ndim):
    shape = SHAPES[ndim]
    jacdet = jacobian_determinant(np.zeros(shape + (ndim,), dtype=np.float32))
    assert jacdet.shape == shape
    assert jacdet.dtype == np.float64
    np.testing.assert_array_equal(jacdet, np.ones(shape))


@pytest.mark.parametrize("ndim", [2, 3])
def test_translation_gives_ones(ndim):
    shape = SHAPES[ndim]
    u = affine_displacement(np.eye(ndim), [2.5, -1.0, 7.0][:ndim], shape)
    np.testing.assert_allclose(jacobian_determinant(u), 1.0, rtol=0, atol=1e-12)


def test_hand_computed_affine_2d():
    # det [[2, 1], [0.5, 1]] = 2 * 1 - 1 * 0.5.
    u = affine_displacement(np.array([[2.0, 1.0], [0.5, 1.0]]), [3.0, -2.0], (5, 6))
    np.testing.assert_allclose(jacobian_determinant(u), 1.5, rtol=1e-12)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_affine_gives_det_a_everywhere(ndim, seed):
    rng = np.random.default_rng(seed)
    matrix = np.eye(ndim) + 0.2 * rng.normal(size=(ndim, ndim))
    offset = rng.normal(size=ndim)
    u = affine_displacement(matrix, offset, SHAPES[ndim])
    expected = np.linalg.det(matrix)
    np.testing.assert_allclose(jacobian_determinant(u), expected, rtol=1e-10)
    assert sdlogj(jacobian_determinant(u)) == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("ndim", [2, 3])
def test_reflecting_affine_folds_everywhere(ndim):
    rng = np.random.default_rng(3)
    matrix = np.diag([-1.0] + [1.0] * (ndim - 1)) @ (
        np.eye(ndim) + 0.1 * rng.normal(size=(ndim,) * 2)
    )
    assert np.linalg.det(matrix) < 0
    jacdet = jacobian_determinant(affine_displacement(matrix, np.zeros(ndim), SHAPES[ndim]))
    np.testing.assert_allclose(jacdet, np.linalg.det(matrix), rtol=1e-10)
    assert folding_fraction(jacdet) == 1.0


def test_float32_input_matches_float64():
    rng = np.random.default_rng(4)
    u = rng.normal(size=(5, 6, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(
        jacobian_determinant(u), jacobian_determinant(u.astype(np.float64)), rtol=0, atol=0
    )


@pytest.mark.parametrize(("ndim", "axis"), [(2, 0), (2, 1), (3, 0), (3, 1), (3, 2)])
def test_known_fold_region(ndim, axis):
    shape = [3] * ndim
    shape[axis] = len(FOLD_PROFILE)
    shape = tuple(shape)
    jacdet = jacobian_determinant(profile_field(shape, axis, FOLD_PROFILE))

    index = [np.newaxis] * ndim
    index[axis] = slice(None)
    expected = np.broadcast_to(np.array(FOLD_DETERMINANT, dtype=float)[tuple(index)], shape)
    np.testing.assert_allclose(jacdet, expected, rtol=0, atol=1e-12)
    # Rows 3 and 4 of 8 fold (det 0 counts as folded).
    assert folding_fraction(jacdet) == pytest.approx(2 / 8)
    # Restricted to rows 2..5: rows 3 and 4 of those 4.
    mask = np.zeros(shape, dtype=bool)
    sel = [slice(None)] * ndim
    sel[axis] = slice(2, 6)
    mask[tuple(sel)] = True
    assert folding_fraction(jacdet, mask=mask) == pytest.approx(2 / 4)


@pytest.mark.parametrize("ndim", [2, 3])
def test_displacement_across_its_own_axis_is_a_shear(ndim):
    # u_0 varying along axis 1 only puts the derivative off the diagonal: det J = 1.
    shape = (4, 8) if ndim == 2 else (4, 8, 3)
    u = np.zeros(shape + (ndim,))
    u[..., 0] = np.reshape(FOLD_PROFILE, (1, 8) + (1,) * (ndim - 2))
    np.testing.assert_allclose(jacobian_determinant(u), 1.0, rtol=0, atol=1e-12)


def test_quadratic_field_interior_and_borders():
    # u_0 = c x0^2, u_1 = d x1^2: central differences are exact for quadratics, so in the
    # interior det J = (1 + 2 c x0)(1 + 2 d x1); on the first voxel the one-sided difference of
    # c x^2 is c, on the last (index n-1) it is c ((n-1)^2 - (n-2)^2) = c (2n - 3).
    c, d = 0.05, -0.03
    n0, n1, n2 = 6, 7, 3
    x0, x1, _ = np.indices((n0, n1, n2), dtype=float)
    u = np.stack([c * x0**2, d * x1**2, np.zeros_like(x0)], axis=-1)
    jacdet = jacobian_determinant(u)

    def slope(coef, n):
        s = 2 * coef * np.arange(n, dtype=float)
        s[0], s[-1] = coef, coef * (2 * n - 3)
        return s

    expected = (1 + slope(c, n0))[:, None, None] * (1 + slope(d, n1))[None, :, None]
    np.testing.assert_allclose(jacdet, np.broadcast_to(expected, jacdet.shape), rtol=1e-12)


def test_folding_fraction_hand_made():
    jacdet = np.array([[-1.0, 0.0, 0.5], [2.0, 1e-12, -3.0]])
    assert folding_fraction(jacdet) == 3 / 6
    mask = np.array([[True, False, True], [True, True, False]])
    assert folding_fraction(jacdet, mask=mask) == 1 / 4


def test_sdlogj_matches_numpy_on_positive_values():
    jacdet = np.array([[0.5, 1.0, 2.0], [1.5, 0.8, 1.2]])
    assert sdlogj(jacdet) == pytest.approx(np.std(np.log(jacdet.ravel())), rel=1e-12)
    mask = np.array([[True, True, False], [False, True, True]])
    expected = np.std(np.log([0.5, 1.0, 0.8, 1.2]))
    assert sdlogj(jacdet, mask=mask) == pytest.approx(expected, rel=1e-12)


def test_sdlogj_clips_non_positive_and_huge_determinants():
    jacdet = np.array([-1.0, 0.0, 1.0, math.e, 1e12])
    logs = [math.log(1e-9), math.log(1e-9), 0.0, 1.0, math.log(1e9)]
    assert sdlogj(jacdet) == pytest.approx(np.std(logs), rel=1e-12)
    logs = [math.log(0.1)] * 2 + [0.0, 1.0, math.log(10.0)]
    assert sdlogj(jacdet, clip=(0.1, 10.0)) == pytest.approx(np.std(logs), rel=1e-12)
    assert math.isfinite(sdlogj(np.array([0.0, -5.0, 1.0])))


@pytest.mark.parametrize(
    "shape",
    [(6, 6, 3), (6, 6, 6, 2), (1, 6, 6, 2), (1, 4, 4, 4, 3), (8, 2), (5, 5, 5, 5, 4)],
)
def test_wrong_layout_raises_value_error(shape):
    with pytest.raises(ValueError, match=rf"displacement.shape=\({shape[0]}, "):
        jacobian_determinant(np.zeros(shape))


def test_too_small_axis_raises_value_error():
    with pytest.raises(ValueError, match="at least 2 voxels"):
        jacobian_determinant(np.zeros((5, 1, 2)))


@pytest.mark.parametrize("dtype", [np.complex64, np.bool_, object])
def test_non_real_displacement_raises_type_error(dtype):
    with pytest.raises(TypeError, match="displacement.dtype"):
        jacobian_determinant(np.zeros((4, 4, 2), dtype=dtype))


@pytest.mark.parametrize("metric", [folding_fraction, sdlogj])
def test_mask_errors(metric):
    jacdet = np.ones((3, 4))
    with pytest.raises(TypeError, match="mask.dtype=int64"):
        metric(jacdet, mask=np.ones((3, 4), dtype=np.int64))
    with pytest.raises(ValueError, match=r"mask.shape=\(4, 3\), jacdet.shape=\(3, 4\)"):
        metric(jacdet, mask=np.ones((4, 3), dtype=bool))
    with pytest.raises(ValueError, match="selected voxels=0"):
        metric(jacdet, mask=np.zeros((3, 4), dtype=bool))
    with pytest.raises(ValueError, match="selected voxels=0"):
        metric(np.ones((0, 4)))


@pytest.mark.parametrize("clip", [(0.0, 1.0), (2.0, 1.0), (-1.0, 1.0), (1e-9,), "ab", None])
def test_bad_clip_raises_value_error(clip):
    with pytest.raises(ValueError, match="clip="):
        sdlogj(np.ones(4), clip=clip)
