"""Tests for vxmtf.data.io: NIfTI/npy/npz round trips, header-only shapes, errors, atomic saves."""

import gzip

import nibabel as nib
import numpy as np
import pytest

from vxmtf.data import io


def _header(shape, affine):
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_zooms((2.0, 3.0, 4.0)[: len(shape)])
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=4)
    header.set_xyzt_units("mm", "sec")
    header["descrip"] = b"vxmtf test"
    return header


def _affine():
    # A rotation about the third axis, anisotropic voxels and a shift.
    c, s = np.cos(0.3), np.sin(0.3)
    affine = np.array(
        [[2 * c, -3 * s, 0, 10.0], [2 * s, 3 * c, 0, -5.0], [0, 0, 4.0, 7.0], [0, 0, 0, 1.0]]
    )
    return affine


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_nifti_round_trip_keeps_data_affine_and_header(tmp_path, suffix):
    rng = np.random.default_rng(0)
    array = rng.random((5, 6, 7)).astype(np.float32)
    affine = _affine()
    path = io.save_volume(tmp_path / f"x{suffix}", array, affine, _header(array.shape, affine))

    volume = io.load_volume(path)
    np.testing.assert_array_equal(volume.array, array)
    assert volume.array.dtype == np.float32
    np.testing.assert_allclose(volume.affine, affine, atol=1e-5)
    assert volume.path == path
    header = volume.header
    np.testing.assert_allclose(header.get_zooms(), (2.0, 3.0, 4.0))
    assert int(header["qform_code"]) == 1
    assert int(header["sform_code"]) == 4
    assert header.get_xyzt_units() == ("mm", "sec")
    assert bytes(header["descrip"]).rstrip(b"\0") == b"vxmtf test"
    # Independent reader: nibabel on the written file.
    np.testing.assert_allclose(nib.load(path).affine, affine, atol=1e-5)


def test_new_affine_overrides_header_transform_but_keeps_codes(tmp_path):
    affine = _affine()
    header = _header((4, 4, 4), affine)
    moved = affine.copy()
    moved[:3, 3] += [1.0, 2.0, 3.0]
    path = io.save_volume(tmp_path / "x.nii.gz", np.zeros((4, 4, 4)), moved, header)
    image = nib.load(path)
    np.testing.assert_allclose(image.affine, moved, atol=1e-5)
    assert (int(image.header["qform_code"]), int(image.header["sform_code"])) == (1, 4)


def test_header_affine_used_when_no_affine_given(tmp_path):
    affine = _affine()
    path = io.save_volume(
        tmp_path / "x.nii.gz", np.ones((3, 4, 5)), header=_header((3, 4, 5), affine)
    )
    np.testing.assert_allclose(io.load_volume(path).affine, affine, atol=1e-5)


@pytest.mark.parametrize(
    ("values", "stored"),
    [
        (np.array([0, 3, 255]), np.uint8),
        (np.array([-1, 0, 300]), np.int16),
        (np.array([0, 70000]), np.int32),
        (np.array([True, False]), np.uint8),
        (np.array([0.5, 1.5]), np.float32),
    ],
)
def test_nifti_storage_dtype(tmp_path, values, stored):
    array = np.resize(values, (2, 3, 4))
    path = io.save_volume(tmp_path / "x.nii.gz", array)
    image = nib.load(path)
    assert image.get_data_dtype() == stored
    np.testing.assert_array_equal(np.asanyarray(image.dataobj), array.astype(stored))
    np.testing.assert_array_equal(image.affine, np.eye(4))


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.int32, np.float64])
def test_nifti_storage_dtype_can_be_chosen(tmp_path, dtype):
    array = np.resize(np.array([0, 3, 200], np.uint8), (2, 3, 4))  # would be stored as uint8
    path = io.save_volume(tmp_path / "x.nii.gz", array, dtype=dtype)
    image = nib.load(path)
    assert image.get_data_dtype() == dtype
    np.testing.assert_array_equal(np.asanyarray(image.dataobj), array)


def test_chosen_storage_dtype_is_checked(tmp_path):
    with pytest.raises(ValueError, match=r"do not fit the storage dtype int8 .*max=200"):
        io.save_volume(tmp_path / "x.nii.gz", np.array([[[0, 200]]]), dtype=np.int8)
    with pytest.raises(TypeError, match="integer storage dtype needs an integer array"):
        io.save_volume(tmp_path / "x.nii.gz", np.array([[[0.5]]]), dtype=np.int16)
    with pytest.raises(TypeError, match="integer or floating storage dtype"):
        io.save_volume(tmp_path / "x.nii.gz", np.array([[[1]]]), dtype=np.complex64)


def test_integer_labels_beyond_int32_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="int32"):
        io.save_volume(tmp_path / "x.nii.gz", np.array([[[2**40]]]))


def test_two_dimensional_nifti(tmp_path):
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = io.save_volume(tmp_path / "x.nii.gz", array)
    assert io.read_shape(path) == (3, 4)
    np.testing.assert_array_equal(io.load_volume(path).array, array)


def test_trailing_singleton_axis_is_squeezed(tmp_path):
    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4, 1)
    path = tmp_path / "x.nii.gz"
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)
    assert io.read_shape(path) == (2, 3, 4)
    np.testing.assert_array_equal(io.load_volume(path).array, array[..., 0])


def test_nifti_scaling_is_applied(tmp_path):
    image = nib.Nifti1Image(np.array([[[1, 2], [3, 4]]], dtype=np.int16), np.eye(4))
    image.header.set_slope_inter(0.5, 10.0)
    path = tmp_path / "x.nii"
    nib.save(image, path)
    np.testing.assert_allclose(io.load_volume(path).array, [[[10.5, 11.0], [11.5, 12.0]]])


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_numpy_round_trip(tmp_path, suffix):
    array = np.random.default_rng(1).integers(0, 9, (4, 5, 6)).astype(np.int16)
    path = io.save_volume(tmp_path / f"x{suffix}", array)
    volume = io.load_volume(path)
    np.testing.assert_array_equal(volume.array, array)
    assert volume.array.dtype == np.int16
    assert volume.header is None
    np.testing.assert_array_equal(volume.affine, np.eye(4))
    assert io.read_shape(path) == (4, 5, 6)


def test_npz_affine_round_trip(tmp_path):
    path = io.save_volume(tmp_path / "x.npz", np.zeros((2, 3)), affine=_affine())
    with np.load(path) as archive:
        assert sorted(archive.files) == ["affine", "vol"]
    np.testing.assert_array_equal(io.load_volume(path).affine, _affine())


def test_npz_single_array_under_any_key(tmp_path):
    array = np.arange(6.0).reshape(2, 3)
    path = tmp_path / "x.npz"
    np.savez(path, image=array)
    np.testing.assert_array_equal(io.load_volume(path).array, array)
    assert io.read_shape(path) == (2, 3)


def test_npz_ambiguous_keys(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, a=np.zeros(2), b=np.zeros(3))
    for reader in (io.load_volume, io.read_shape):
        with pytest.raises(ValueError, match=r"x\.npz.*'vol'"):
            reader(path)


@pytest.mark.parametrize("reader", [io.load_volume, io.read_shape])
def test_missing_file(tmp_path, reader):
    path = tmp_path / "absent.nii.gz"
    with pytest.raises(FileNotFoundError, match="absent.nii.gz"):
        reader(path)


@pytest.mark.parametrize("name", ["x.nii.gz", "x.nii", "x.npy", "x.npz"])
@pytest.mark.parametrize("reader", [io.load_volume, io.read_shape])
def test_garbage_file(tmp_path, reader, name):
    path = tmp_path / name
    path.write_bytes(b"this is not a volume" * 20)
    with pytest.raises(ValueError, match=rf"{name.replace('.', '[.]')}.*expected"):
        reader(path)


def test_truncated_nifti_data(tmp_path):
    # Incompressible data so that half the gzip stream holds a complete header but not the data.
    array = np.random.default_rng(0).random((16, 16, 16)).astype(np.float32)
    path = io.save_volume(tmp_path / "x.nii.gz", array)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert io.read_shape(path) == (16, 16, 16)  # the header is intact
    with pytest.raises(ValueError, match="x.nii.gz"):
        io.load_volume(path)


def test_gzipped_garbage_is_unreadable(tmp_path):
    path = tmp_path / "x.nii.gz"
    path.write_bytes(gzip.compress(b"\x01" * 500))
    with pytest.raises(ValueError, match="x.nii.gz"):
        io.load_volume(path)


@pytest.mark.parametrize("function", ["load", "shape", "save"])
def test_unknown_extension(tmp_path, function):
    path = tmp_path / "x.mha"
    path.write_bytes(b"0")
    with pytest.raises(ValueError, match=r"x\.mha.*\.nii\.gz"):
        if function == "load":
            io.load_volume(path)
        elif function == "shape":
            io.read_shape(path)
        else:
            io.save_volume(path, np.zeros((2, 2)))


def test_bad_affine_shape(tmp_path):
    with pytest.raises(ValueError, match=r"\(4, 4\) affine.*\(3, 3\)"):
        io.save_volume(tmp_path / "x.nii.gz", np.zeros((2, 2, 2)), affine=np.eye(3))


@pytest.mark.parametrize("suffix", [".nii.gz", ".npz", ".npy"])
def test_save_leaves_no_temporary_file(tmp_path, suffix):
    io.save_volume(tmp_path / f"x{suffix}", np.zeros((2, 3, 4)))
    io.save_volume(tmp_path / f"x{suffix}", np.ones((2, 3, 4)))  # overwrite
    assert [p.name for p in tmp_path.iterdir()] == [f"x{suffix}"]
    np.testing.assert_array_equal(io.load_volume(tmp_path / f"x{suffix}").array, 1)


@pytest.mark.parametrize(
    ("suffix", "writer"), [(".nii.gz", "_write_nifti"), (".npz", "_write_numpy")]
)
def test_failed_write_keeps_existing_file(tmp_path, monkeypatch, suffix, writer):
    path = tmp_path / f"x{suffix}"
    old = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    io.save_volume(path, old)

    def broken(target, *args):
        target.write_bytes(b"half a file")  # partial output, then a crash
        raise RuntimeError("disk full")

    monkeypatch.setattr(io, writer, broken)
    with pytest.raises(RuntimeError, match="disk full"):
        io.save_volume(path, np.zeros((2, 3, 4)))
    monkeypatch.undo()
    np.testing.assert_array_equal(io.load_volume(path).array, old)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_save_creates_folders(tmp_path):
    path = io.save_volume(tmp_path / "a" / "b" / "x.nii.gz", np.zeros((2, 2, 2)))
    assert path.is_file()


def test_non_numeric_array_rejected(tmp_path):
    with pytest.raises(TypeError, match="dtype"):
        io.save_volume(tmp_path / "x.nii.gz", np.array([["a"]]))
    assert list(tmp_path.iterdir()) == []


# Non-finite voxels


@pytest.mark.parametrize("suffix", [".nii.gz", ".npy", ".npz"])
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_non_finite_voxels_are_refused_naming_the_file(tmp_path, suffix, bad):
    array = np.random.default_rng(0).normal(size=(6, 5, 4)).astype(np.float32)
    array[1, 2, 3] = bad
    array[0, 0, 0] = bad
    path = io.save_volume(tmp_path / f"image{suffix}", array)
    with pytest.raises(ValueError) as raised:
        io.load_volume(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: 2 of 120 voxels are not finite (NaN or Inf)")
    # Opting out reads the voxels as stored.
    loaded = io.load_volume(path, finite=False).array
    np.testing.assert_array_equal(loaded, array)


def test_finite_and_integer_volumes_are_read(tmp_path):
    path = io.save_volume(
        tmp_path / "labels.nii.gz", np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    )
    assert io.load_volume(path).array.sum() == sum(range(24))


def test_label_map_with_nan_keeps_its_own_message(tmp_path):
    image = io.save_volume(tmp_path / "image.nii.gz", np.ones((4, 4, 4), np.float32))
    labels = np.zeros((4, 4, 4), np.float32)
    labels[1, 1, 1] = np.nan
    path = io.save_volume(tmp_path / "labels.nii.gz", labels)
    with pytest.raises(ValueError, match="moving label map .* must hold integer labels"):
        io.load_label_map(path, io.load_volume(image), "moving label map")
