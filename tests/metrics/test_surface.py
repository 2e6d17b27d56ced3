"""Tests for vxmtf.metrics.surface: hand-derived HD95 values and a brute-force cdist oracle."""

import math
import time

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from vxmtf.metrics import hd95, surface_distances


def oracle_boundary(mask):
    """Voxels of `mask` with a face neighbour outside it (outside the array counts), by shifts."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = np.ones_like(mask)
    core = tuple(slice(1, -1) for _ in range(mask.ndim))
    for axis in range(mask.ndim):
        for step in (-1, 1):
            neighbour = list(core)
            neighbour[axis] = slice(1 + step, padded.shape[axis] - 1 + step)
            interior &= padded[tuple(neighbour)]
    return mask & ~interior


def oracle_directed(mask_a, mask_b, spacing):
    """Every pairwise distance between boundary voxel centres (in mm), minimum over the other."""
    points_a = np.argwhere(oracle_boundary(mask_a)) * np.asarray(spacing, float)
    points_b = np.argwhere(oracle_boundary(mask_b)) * np.asarray(spacing, float)
    pairwise = cdist(points_a, points_b)
    return pairwise.min(axis=1), pairwise.min(axis=0)


def oracle_hd(mask_a, mask_b, spacing, percentile=95.0):
    d_ab, d_ba = oracle_directed(mask_a, mask_b, spacing)
    return max(np.percentile(d_ab, percentile), np.percentile(d_ba, percentile))


def box(shape, start, size):
    mask = np.zeros(shape, bool)
    mask[tuple(slice(s, s + n) for s, n in zip(start, size, strict=True))] = True
    return mask


def ball(shape, centre, radius):
    grid = np.indices(shape)
    squared = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True))
    return squared <= radius**2


# ---------------------------------------------------------------------------------------------
# Hand-derived values


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("spacing", [None, 0.5, (0.7, 1.3, 2.0)])
def test_parallel_plates_are_their_gap_apart(ndim, axis, spacing):
    # Two one-voxel-thick plates (lines in 2D) with the same extent, `gap` voxels apart along
    # `axis`: every voxel is on the surface and its nearest point on the other plate is the one
    # opposite, so every distance (and HD95) is gap * spacing[axis].
    shape, gap = (12,) * ndim, 5
    start, size = [2] * ndim, [7] * ndim
    size[axis] = 1
    a = box(shape, start, size)
    start[axis] += gap
    b = box(shape, start, size)
    if spacing is None:
        sp, step = None, 1.0
    elif np.ndim(spacing) == 0:
        sp, step = spacing, spacing
    else:
        sp, step = spacing[:ndim], spacing[axis]
    labels_a, labels_b = a.astype(np.uint8) * 3, b.astype(np.uint8) * 3
    assert hd95(labels_a, labels_b, spacing=sp) == {3: pytest.approx(gap * step, abs=1e-12)}
    d_ab, d_ba = surface_distances(a, b, sp)
    assert d_ab.size == a.sum() and d_ba.size == b.sum()
    np.testing.assert_allclose(d_ab, gap * step, atol=1e-12)
    np.testing.assert_allclose(d_ba, gap * step, atol=1e-12)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.0, 0.5, 0.75)])
def test_disjoint_cubes_match_hand_counted_distances(spacing):
    # A = [0, n)^3 (offset), B = A shifted by D >= n along axis 0. B's near face x' = D covers
    # every (y, z) of A, so the surface voxel (x, y, z) of A is exactly (D - x) * s0 from B's
    # surface; slice x of A's surface holds n^2 voxels on the two end faces, 4(n - 1) elsewhere.
    # By symmetry B -> A gives the same multiset.
    n, shift = 5, 8
    shape = (2 + n + shift + 2, n + 4, n + 4)
    a = box(shape, (2, 2, 2), (n, n, n))
    b = box(shape, (2 + shift, 2, 2), (n, n, n))
    counts = [n * n if x in (0, n - 1) else 4 * (n - 1) for x in range(n)]
    distances = np.sort(np.repeat([(shift - x) * spacing[0] for x in range(n)], counts))
    expected = float(np.percentile(distances, 95))
    labels_a = a.astype(np.int16) * 7
    labels_b = b.astype(np.int16) * 7
    assert hd95(labels_a, labels_b, spacing=spacing)[7] == pytest.approx(expected, rel=1e-12)
    assert hd95(labels_a, labels_b, spacing=spacing, percentile=100)[7] == pytest.approx(
        shift * spacing[0], rel=1e-12
    )
    d_ab, d_ba = surface_distances(a, b, spacing)
    np.testing.assert_allclose(np.sort(d_ab), distances, rtol=1e-12)
    np.testing.assert_allclose(np.sort(d_ba), distances, rtol=1e-12)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("shift", [1, 2, 3])
def test_cube_shifted_by_an_integer_has_hd95_equal_to_the_shift(axis, shift):
    # The translated surface of A is the surface of B, so no distance exceeds the shift; the
    # n^2 voxels of A's trailing face are exactly `shift` from B (and vice versa): more than 5% of
    # the 6n^2 - 12n + 8 surface voxels, so the 95th percentile is the shift itself.
    n = 8
    start = [3, 3, 3]
    a = box((18, 18, 18), start, (n, n, n))
    start[axis] += shift
    b = box((18, 18, 18), start, (n, n, n))
    spacing = (0.9, 1.1, 1.7)
    assert hd95(a, b, spacing=spacing)[1] == pytest.approx(shift * spacing[axis], rel=1e-12)


@pytest.mark.parametrize("shift", [1, 2])
def test_shifted_ball_matches_the_brute_force_oracle(shift):
    shape = (20, 20, 20)
    a = ball(shape, (9, 9, 9), 5)
    b = ball(shape, (9 + shift, 9, 9), 5)
    result = hd95(a, b)[1]
    assert result == pytest.approx(oracle_hd(a, b, (1, 1, 1)), rel=1e-12)
    # The translation maps one surface onto the other: no surface voxel is farther than it.
    assert 0 < result <= shift
    assert hd95(a, b, percentile=100)[1] == pytest.approx(shift, rel=1e-12)


def test_isotropic_spacing_scales_the_result():
    a = ball((16, 18, 14), (7, 8, 6), 4)
    b = ball((16, 18, 14), (8, 7, 7), 5)
    unit = hd95(a, b)[1]
    assert hd95(a, b, spacing=2.5)[1] == pytest.approx(2.5 * unit, rel=1e-12)
    assert hd95(a, b, spacing=(2.5, 2.5, 2.5))[1] == pytest.approx(2.5 * unit, rel=1e-12)


def test_anisotropic_spacing_matches_the_oracle():
    a = ball((16, 18, 14), (7, 8, 6), 4)
    b = ball((16, 18, 14), (9, 8, 6), 4)
    spacing = (3.0, 1.0, 0.5)
    result = hd95(a, b, spacing=spacing)[1]
    assert result == pytest.approx(oracle_hd(a, b, spacing), rel=1e-12)
    # Every pairwise distance is at most its value with 3 mm voxels along every axis, so the
    # result is at most 3x the 1 mm one; the finer axes 1 and 2 let surfaces meet sideways, so
    # it is not simply 3x.
    unit = hd95(a, b)[1]
    assert result <= 3.0 * unit
    assert result != pytest.approx(3.0 * unit) and result != pytest.approx(unit)


def test_directions_are_reduced_separately_then_maximised_not_pooled():
    # MONAI / DeepMind (Learn2Reg) convention: max(P95(a -> b), P95(b -> a)). MedPy instead
    # pools both directions; for a small ball against a large, off-centre one the two differ.
    a = ball((21, 21, 21), (10, 10, 10), 3)
    b = ball((21, 21, 21), (12, 10, 10), 7)
    d_ab, d_ba = surface_distances(a, b)
    separate = max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))
    pooled = np.percentile(np.concatenate([d_ab, d_ba]), 95)
    assert separate != pytest.approx(pooled)
    assert hd95(a, b)[1] == pytest.approx(separate, rel=1e-12)


@pytest.mark.parametrize("ndim", [2, 3])
def test_identical_maps_give_zero(ndim):
    rng = np.random.default_rng(ndim)
    labels = rng.integers(0, 5, size=(9,) * ndim)
    assert hd95(labels, labels, spacing=0.8) == {k: 0.0 for k in (1, 2, 3, 4)}


def test_two_dimensional_squares():
    # 2D analogue of the cube case: 4x4 squares, the second shifted by 2 along axis 1.
    a = box((10, 10), (3, 2), (4, 4))
    b = box((10, 10), (3, 4), (4, 4))
    assert hd95(a, b, spacing=(1.0, 0.5))[1] == pytest.approx(1.0, rel=1e-12)
    assert hd95(a, b)[1] == pytest.approx(oracle_hd(a, b, (1, 1)), rel=1e-12)


# ---------------------------------------------------------------------------------------------
# Independent oracle on random masks


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ndim", [2, 3])
def test_random_label_maps_match_the_brute_force_oracle(seed, ndim):
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(5, 12, size=ndim))
    labels_a = rng.integers(0, 4, size=shape)
    labels_b = rng.integers(0, 4, size=shape)
    spacing = tuple(rng.uniform(0.5, 2.0, size=ndim))
    for percentile in (95.0, 50.0, 100.0):
        result = hd95(labels_a, labels_b, spacing=spacing, percentile=percentile)
        for k in (1, 2, 3):
            expected = oracle_hd(labels_a == k, labels_b == k, spacing, percentile)
            assert result[k] == pytest.approx(expected, rel=1e-12, abs=1e-12), (k, percentile)


@pytest.mark.parametrize("seed", range(4))
def test_surface_distances_match_the_oracle_per_voxel(seed):
    rng = np.random.default_rng(seed)
    a = rng.random((8, 9, 7)) < 0.4
    b = rng.random((8, 9, 7)) < 0.4
    spacing = (1.5, 0.5, 1.0)
    d_ab, d_ba = surface_distances(a, b, spacing)
    e_ab, e_ba = oracle_directed(a, b, spacing)
    # Both list the surface voxels in C order (np.argwhere order).
    np.testing.assert_allclose(d_ab, e_ab, rtol=1e-12)
    np.testing.assert_allclose(d_ba, e_ba, rtol=1e-12)


def test_small_structures_on_a_large_grid_are_cropped_correctly():
    # Two far-apart small structures of one label: the crop must cover the union of both.
    shape = (40, 30, 30)
    a = box(shape, (1, 2, 3), (3, 3, 3)) | box(shape, (30, 20, 20), (2, 4, 3))
    b = box(shape, (2, 2, 3), (3, 3, 3)) | box(shape, (33, 24, 25), (4, 3, 3))
    labels_a, labels_b = a * 5, b * 5
    assert hd95(labels_a, labels_b, spacing=(1, 2, 3))[5] == pytest.approx(
        oracle_hd(a, b, (1, 2, 3)), rel=1e-12
    )


def test_masks_touching_the_array_border_have_a_surface_there():
    # A mask filling the array: its outer layer is its surface (outside counts as background).
    full = np.ones((4, 5, 6), bool)
    inner = box((4, 5, 6), (1, 1, 1), (2, 3, 4))
    d_full, d_inner = surface_distances(full, inner)
    assert d_full.size == full.size - 2 * 3 * 4
    assert hd95(full, inner)[1] == pytest.approx(oracle_hd(full, inner, (1, 1, 1)), rel=1e-12)


# ---------------------------------------------------------------------------------------------
# Labels, absent structures, empty input


def test_absent_labels_give_nan_or_inf_and_requested_order_is_kept():
    a = np.zeros((6, 6, 6), np.uint8)
    b = np.zeros((6, 6, 6), np.uint8)
    a[1:3, 1:3, 1:3] = 1
    b[1:3, 1:3, 1:3] = 1
    a[4, 4, 4] = 2  # only in a
    b[0, 5, 5] = 3  # only in b
    result = hd95(a, b, labels=[9, 3, 1, 2])
    assert list(result) == [9, 3, 1, 2]
    assert math.isnan(result[9])
    assert result[3] == math.inf and result[2] == math.inf
    assert result[1] == 0.0
    # Default: every label present in either map, background excluded, increasing.
    assert list(hd95(a, b)) == [1, 2, 3]


def test_result_types_are_python_int_and_float():
    a = np.zeros((5, 5), np.int64)
    a[1:3, 1:3] = 2
    result = hd95(a, np.roll(a, 1, axis=0), labels=[np.int64(2)])
    assert [type(k) for k in result] == [int]
    assert [type(v) for v in result.values()] == [float]


def test_surface_distances_with_empty_masks():
    empty = np.zeros((4, 4, 4), bool)
    cube = box((4, 4, 4), (1, 1, 1), (2, 2, 2))
    d_ab, d_ba = surface_distances(cube, empty)
    assert d_ab.size == 8 and np.all(d_ab == np.inf) and d_ba.size == 0
    d_ab, d_ba = surface_distances(empty, empty)
    assert d_ab.size == 0 and d_ba.size == 0


def test_empty_arrays():
    empty = np.zeros((0, 4, 4), np.uint8)
    assert hd95(empty, empty) == {}
    assert math.isnan(hd95(empty, empty, labels=[1])[1])


def test_large_label_values_are_renumbered():
    a = ball((12, 12, 12), (5, 5, 5), 3)
    b = ball((12, 12, 12), (6, 5, 5), 3)
    big = 10**7
    result = hd95(a.astype(np.int64) * big, b.astype(np.int64) * big, labels=[big, 5])
    assert result[big] == pytest.approx(hd95(a, b)[1], rel=1e-12)
    assert math.isnan(result[5])
    assert list(hd95(a.astype(np.int64) * big, b.astype(np.int64) * big)) == [big]


def test_bool_and_integral_float_maps_are_accepted():
    a = box((8, 8), (1, 1), (3, 3))
    b = box((8, 8), (2, 1), (3, 3))
    expected = hd95(a, b)[1]
    assert hd95(a.astype(np.float32), b.astype(np.float64))[1] == expected
    assert surface_distances(a.astype(np.uint8), b.astype(np.float32))[0].size == 8


# ---------------------------------------------------------------------------------------------
# Errors


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"labels_a.shape=\(4, 4\), labels_b.shape=\(4, 5\)"):
        hd95(np.zeros((4, 4), int), np.zeros((4, 5), int))
    with pytest.raises(ValueError, match=r"mask_a.shape=\(3,\), mask_b.shape=\(4,\)"):
        surface_distances(np.zeros(3, bool), np.zeros(4, bool))


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (1.0, 0.0, 1.0), -1.0, (1, 1, np.nan), "a"])
def test_invalid_spacing(spacing):
    with pytest.raises(ValueError, match="Expected `spacing`.*Received: spacing="):
        hd95(np.ones((3, 3, 3), int), np.ones((3, 3, 3), int), spacing=spacing)


@pytest.mark.parametrize("percentile", [-1, 100.5])
def test_invalid_percentile(percentile):
    with pytest.raises(ValueError, match=r"percentile.*Received: percentile="):
        hd95(np.ones((3, 3), int), np.ones((3, 3), int), percentile=percentile)


def test_invalid_labels():
    maps = np.ones((3, 3), int), np.ones((3, 3), int)
    with pytest.raises(ValueError, match="Received: label=0"):
        hd95(*maps, labels=[1, 0])
    with pytest.raises(TypeError, match=r"Received: label=1.5"):
        hd95(*maps, labels=[1.5])
    with pytest.raises(TypeError, match="Received: label=True"):
        hd95(*maps, labels=[True])


def test_invalid_maps():
    with pytest.raises(TypeError, match="labels_a"):
        hd95(np.full((3, 3), 0.5), np.ones((3, 3), int))
    with pytest.raises(ValueError, match="non-negative"):
        hd95(-np.ones((3, 3), int), np.ones((3, 3), int))
    with pytest.raises(TypeError, match=r"mask_a.*Received: mask_a.dtype=int64 with values"):
        surface_distances(np.full((3, 3), 2, np.int64), np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="at least one axis"):
        hd95(np.int64(1), np.int64(1))


# ---------------------------------------------------------------------------------------------
# Real data


@pytest.mark.slow
def test_lpba40_pair_is_fast_and_matches_the_uncropped_computation(lpba40_dir):
    nib = pytest.importorskip("nibabel")
    files = sorted((lpba40_dir / "labelsTr").glob("*.nii.gz"))[:2]
    image_a, image_b = nib.load(files[0]), nib.load(files[1])
    a, b = np.asarray(image_a.dataobj), np.asarray(image_b.dataobj)
    spacing = image_a.header.get_zooms()[:3]
    start = time.perf_counter()
    result = hd95(a, b, spacing=spacing)
    elapsed = time.perf_counter() - start
    assert len(result) == 56
    assert elapsed < 10.0
    assert all(0 < v < 50 for v in result.values())
    # The per-label crop changes nothing: compare a few labels with distance maps computed over
    # the whole volume.
    for k in list(result)[::14]:
        surface_a, surface_b = oracle_boundary(a == k), oracle_boundary(b == k)
        d_ab = ndimage.distance_transform_edt(~surface_b, sampling=spacing)[surface_a]
        d_ba = ndimage.distance_transform_edt(~surface_a, sampling=spacing)[surface_b]
        expected = max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))
        assert result[k] == pytest.approx(expected, rel=1e-12)
