"""Tests for vxmtf.data.learn2reg: the 2020/2021 submission format, the evaluation's upsampling."""

import os
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from vxmtf.data.learn2reg import (
    l2r_case_id,
    l2r_displacement_name,
    load_l2r_displacement,
    save_l2r_displacement,
    to_l2r_displacement,
)

SHAPE = (48, 40, 32)


def grid(shape):
    return np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij")


def smooth_field(x):
    """An analytic field (X, Y, Z, 3): wavelengths 32-48 voxels, up to 3 voxels."""
    return np.stack(
        [
            3.0 * np.sin(2 * np.pi * x[1] / 40 + 0.3) * np.cos(2 * np.pi * x[2] / 32),
            2.0 * np.cos(2 * np.pi * x[0] / 48 + 1.0) + 0.5 * x[2] / 32,
            1.5 * np.sin(2 * np.pi * (x[0] + x[1]) / 36),
        ],
        axis=-1,
    )


def evaluation_upsampling(path):
    """The 2021 Learn2Reg evaluation, verbatim in effect: load, cast, zoom each channel by 2."""
    disp = np.load(path)["arr_0"].astype("float32")
    return np.array([ndimage.zoom(disp[i], 2, order=2) for i in range(3)])


# ---------------------------------------------------------------------------------------------
# Format


def test_array_is_channels_first_float16_half_resolution():
    u = np.zeros((*SHAPE, 3), np.float32)
    u[..., 0], u[..., 1], u[..., 2] = 1.5, -2.25, 7.0
    out = to_l2r_displacement(u)
    assert out.dtype == np.float16
    assert out.shape == (3, 24, 20, 16)
    # Values stay in voxels of the full-resolution grid: not halved by the downsampling.
    np.testing.assert_array_equal(out[0], 1.5)
    np.testing.assert_array_equal(out[1], -2.25)
    np.testing.assert_array_equal(out[2], 7.0)


def test_full_resolution_keeps_the_grid():
    u = smooth_field(grid(SHAPE))
    out = to_l2r_displacement(u, half_resolution=False)
    assert out.shape == (3, *SHAPE) and out.dtype == np.float16
    np.testing.assert_array_equal(out, np.moveaxis(u, -1, 0).astype(np.float16))


def test_half_grid_samples_the_corner_aligned_points():
    # Sample i along an axis of size X is the field at i * (X - 1) / (X / 2 - 1): the points
    # the evaluation's corner-aligned zoom(., 2) maps back onto the full grid.
    out = to_l2r_displacement(smooth_field(grid(SHAPE))).astype(np.float64)
    points = np.meshgrid(
        *[np.arange(s // 2) * (s - 1) / (s // 2 - 1) for s in SHAPE], indexing="ij"
    )
    expected = np.moveaxis(smooth_field(points), -1, 0)
    np.testing.assert_allclose(out, expected, atol=5e-3)


def test_saved_file_name_key_dtype_and_shape(tmp_path):
    u = smooth_field(grid(SHAPE))
    path = save_l2r_displacement(
        u, tmp_path / "task_03", "imagesTr/LPBA40_0006_0000.nii.gz", "LPBA40_0007_0000.nii.gz"
    )
    assert path == tmp_path / "task_03" / "disp_0006_0007.npz"
    with np.load(path) as archive:
        assert list(archive.keys()) == ["arr_0"]
        array = archive["arr_0"]
    assert array.dtype == np.float16 and array.shape == (3, 24, 20, 16)
    np.testing.assert_array_equal(array, to_l2r_displacement(u))
    # Written atomically: nothing but the file is left in the folder.
    assert sorted(os.listdir(path.parent)) == ["disp_0006_0007.npz"]


def test_saving_again_replaces_the_file(tmp_path):
    first = save_l2r_displacement(np.zeros((4, 4, 4, 3)), tmp_path, 1, 2)
    second = save_l2r_displacement(np.ones((4, 4, 4, 3)), tmp_path, 1, 2)
    assert first == second
    np.testing.assert_array_equal(np.load(second)["arr_0"], 1.0)


# ---------------------------------------------------------------------------------------------
# Round trip through the evaluation's upsampling


def test_load_upsamples_exactly_as_the_evaluation(tmp_path):
    path = save_l2r_displacement(smooth_field(grid(SHAPE)), tmp_path, 1, 2)
    loaded = load_l2r_displacement(path, SHAPE)
    assert loaded.dtype == np.float32 and loaded.shape == (*SHAPE, 3)
    np.testing.assert_array_equal(loaded, np.moveaxis(evaluation_upsampling(path), 0, -1))


def test_round_trip_of_an_analytic_smooth_field(tmp_path):
    u = smooth_field(grid(SHAPE))
    path = save_l2r_displacement(u, tmp_path, 1, 2)
    error = np.linalg.norm(load_l2r_displacement(path, SHAPE) - u, axis=-1)
    # Away from the outer two half-resolution cells the evaluation's spline follows the field
    # closely; near the edge it is mirror-symmetric (flat) and misses the field's slope there.
    interior = error[4:-4, 4:-4, 4:-4]
    assert interior.mean() < 0.005
    assert interior.max() < 0.05
    assert error.max() < 0.25


def test_round_trip_of_a_field_flat_at_the_border_is_accurate_everywhere(tmp_path):
    # cos(pi x / (X - 1)) has zero slope at both ends of every axis, like the evaluation's spline.
    x = grid(SHAPE)
    half_waves = [np.cos(np.pi * xi / (s - 1)) for xi, s in zip(x, SHAPE, strict=True)]
    u = np.stack(
        [
            2.0 * half_waves[0] * half_waves[1],
            -1.5 * half_waves[2],
            1.0 + half_waves[0] * half_waves[2],
        ],
        axis=-1,
    )
    path = save_l2r_displacement(u, tmp_path, 1, 2)
    error = np.linalg.norm(load_l2r_displacement(path, SHAPE) - u, axis=-1)
    assert error.max() < 0.05


@pytest.mark.parametrize("seed", [0, 1])
def test_round_trip_of_a_smooth_random_field(tmp_path, seed):
    rng = np.random.default_rng(seed)
    u = np.stack(
        [ndimage.gaussian_filter(rng.standard_normal(SHAPE), 8, mode="wrap") for _ in range(3)],
        axis=-1,
    )
    u *= 2.0 / u.std()
    path = save_l2r_displacement(u, tmp_path, 1, 2)
    error = np.linalg.norm(load_l2r_displacement(path, SHAPE) - u, axis=-1)
    interior = error[4:-4, 4:-4, 4:-4]
    assert interior.mean() < 0.01
    assert interior.max() < 0.05
    assert error.max() < 0.5


def test_full_resolution_file_is_only_cast(tmp_path):
    u = smooth_field(grid(SHAPE))
    path = save_l2r_displacement(u, tmp_path, 1, 2, half_resolution=False)
    loaded = load_l2r_displacement(path, SHAPE)
    np.testing.assert_array_equal(loaded, u.astype(np.float16).astype(np.float32))


def test_convention_matches_the_evaluation_warp(tmp_path):
    # The evaluation warps with map_coordinates(moving, identity + disp, order=0), i.e.
    # warped[x] = moving[x + disp(x)]: vxmtf's convention. A constant integer shift (2, 0, -1)
    # must therefore read moving two voxels ahead along axis 0 and one behind along axis 2.
    shape = (12, 10, 8)
    u = np.zeros((*shape, 3))
    u[..., 0], u[..., 2] = 2.0, -1.0
    disp = evaluation_upsampling(save_l2r_displacement(u, tmp_path, 1, 2))
    moving = np.random.default_rng(0).integers(1, 9, size=shape).astype(np.float64)
    identity = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    warped = ndimage.map_coordinates(moving, identity + disp, order=0)
    np.testing.assert_array_equal(warped[:-2, :, 1:], moving[2:, :, :-1])


# ---------------------------------------------------------------------------------------------
# Names


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("LPBA40_0006_0000.nii.gz", "0006"),
        ("OASIS_0395_0000.nii.gz", "0395"),
        (Path("/data/LPBA40/imagesTr/LPBA40_0040_0000.nii.gz"), "0040"),
        ("NLST_0001_0001.nii.gz", "0001"),
        ("AbdomenMRCT_0012_0001.NII.GZ", "0012"),
        ("LPBA40_0006_0000", "0006"),
        ("LPBA40_0006_0000.npz", "0006"),
        (6, "0006"),
        (np.int64(123), "0123"),
        ("6", "0006"),
        ("0395", "0395"),
        ("sub-07_T1w.nii.gz", "sub-07_T1w"),
        ("case_12345_0000.nii.gz", "case_12345_0000"),
    ],
)
def test_case_id(name, expected):
    assert l2r_case_id(name) == expected


def test_displacement_name():
    assert l2r_displacement_name("LPBA40_0006_0000.nii.gz", 7) == "disp_0006_0007.npz"
    assert l2r_displacement_name(1, 2) == "disp_0001_0002.npz"


@pytest.mark.parametrize(
    ("name", "error"), [(None, TypeError), (True, TypeError), (-1, ValueError)]
)
def test_case_id_errors(name, error):
    with pytest.raises(error, match="Received: name="):
        l2r_case_id(name)


# ---------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    "shape",
    [(8, 8, 8), (3, 8, 8, 8), (8, 8, 8, 2), (8, 8, 3), (1, 8, 8, 8, 3)],
)
def test_wrong_field_shape_names_what_was_received(shape):
    received = re.escape(f"Received: displacement.shape={shape}")
    with pytest.raises(ValueError, match=r"\(X, Y, Z, 3\).*" + received):
        to_l2r_displacement(np.zeros(shape))


def test_batched_field_gets_a_hint():
    with pytest.raises(ValueError, match="drop the batch axis"):
        to_l2r_displacement(np.zeros((1, 8, 8, 8, 3)))


def test_odd_sizes_need_full_resolution():
    with pytest.raises(ValueError, match=r"even.*Received: displacement.shape=\(8, 7, 8, 3\)"):
        to_l2r_displacement(np.zeros((8, 7, 8, 3)))
    assert to_l2r_displacement(np.zeros((8, 7, 8, 3)), half_resolution=False).shape == (3, 8, 7, 8)


def test_non_finite_and_too_large_values():
    u = np.zeros((4, 4, 4, 3))
    u[1, 2, 3, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        to_l2r_displacement(u)
    with pytest.raises(ValueError, match="float16.*Received: max"):
        to_l2r_displacement(np.full((4, 4, 4, 3), 1e5))


@pytest.mark.parametrize("dtype", [bool, complex])
def test_non_real_fields(dtype):
    with pytest.raises(TypeError, match="Received: displacement.dtype="):
        to_l2r_displacement(np.zeros((4, 4, 4, 3), dtype))


def test_load_rejects_a_field_of_the_wrong_shape(tmp_path):
    path = save_l2r_displacement(np.zeros((10, 10, 10, 3)), tmp_path, 1, 2)
    with pytest.raises(
        ValueError, match=r"Received: shape=\(3, 5, 5, 5\) for image shape=\(8, 8, 8\)"
    ):
        load_l2r_displacement(path, (8, 8, 8))


def test_load_rejects_other_dtypes_and_archives(tmp_path):
    np.savez(tmp_path / "float32.npz", np.zeros((3, 4, 4, 4), np.float32))
    with pytest.raises(ValueError, match="float16.*Received: dtype=float32"):
        load_l2r_displacement(tmp_path / "float32.npz", (8, 8, 8))
    np.savez(tmp_path / "two.npz", a=np.zeros(3), b=np.zeros(3))
    with pytest.raises(ValueError, match=r"Received: keys=\['a', 'b'\]"):
        load_l2r_displacement(tmp_path / "two.npz", (8, 8, 8))
    with pytest.raises(FileNotFoundError):
        load_l2r_displacement(tmp_path / "missing.npz", (8, 8, 8))


@pytest.mark.parametrize("shape", [(8, 8), (8, 8, 0), (8.5, 8, 8), "abc"])
def test_load_rejects_an_invalid_image_shape(tmp_path, shape):
    with pytest.raises(ValueError, match="Received: shape="):
        load_l2r_displacement(tmp_path / "disp_0001_0002.npz", shape)
