"""`python -m vxmtf.register` on NIfTI files, with a model whose displacement is a known shift.

The flow head of a tiny `VxmDense` gets a zero kernel and bias `SHIFT`, so the displacement is
`SHIFT` at every voxel whatever the images: `moved[x] = moving[x + SHIFT]`. Oracles: SciPy's
`ndimage.shift` (border `nearest`, like the model's clamped warp), `np.roll` for labels, nibabel's
`apply_affine` for millimetre vectors and, when installed, SimpleITK resampling the moving file
with the written ITK displacement field.
"""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import shift_model
from nibabel.affines import apply_affine
from scipy import ndimage

from vxmtf.register import main

#: The model's displacement in voxels, component k along voxel axis k.
SHIFT = np.array([1.0, -2.0, 0.0], np.float32)
#: Fixed grid; not a multiple of the model's 4, so the pair is padded and cropped back.
SHAPE = (18, 13, 10)
DESCRIP = b"vxmtf test: fixed"


def _rotation(axis, angle):
    axis = np.asarray(axis, np.float64) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k  # Rodrigues


def _affine():
    """An oblique, anisotropic voxel-to-world matrix (rotation times spacing, plus origin)."""
    affine = np.eye(4)
    affine[:3, :3] = _rotation((1.0, 2.0, 3.0), 0.5) @ np.diag([1.2, 0.9, 2.0])
    affine[:3, 3] = (-10.0, 20.0, 5.0)
    return affine


def _save(path, array, affine, descrip=b"", units=("mm", "sec")):
    image = nib.Nifti1Image(array, affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=2)
    image.header["descrip"] = descrip
    image.header.set_xyzt_units(*units)
    nib.save(image, path)
    return path


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    model = shift_model(SHIFT)
    path = tmp_path_factory.mktemp("model") / "shift.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def volumes():
    rng = np.random.default_rng(0)
    moving = ndimage.gaussian_filter(rng.uniform(0, 1000, SHAPE), 1.5).astype(np.int16)
    fixed = ndimage.gaussian_filter(rng.uniform(0, 1000, SHAPE), 1.5).astype(np.int16)
    labels = np.zeros(SHAPE, np.int16)  # int16 on purpose: values < 256 must stay int16
    labels[4:10, 4:9, 2:7] = 3
    labels[10:14, 6:11, 3:8] = 200
    return moving, fixed, labels


@pytest.fixture
def pair(tmp_path, volumes):
    """Moving image and labels, fixed image: NIfTI files on one oblique grid."""
    moving, fixed, labels = volumes
    affine = _affine()
    return {
        "moving": _save(tmp_path / "moving.nii.gz", moving, affine, b"moving"),
        "fixed": _save(tmp_path / "fixed.nii.gz", fixed, affine, DESCRIP),
        "labels": _save(tmp_path / "moving_seg.nii.gz", labels, affine, b"labels"),
        "dir": tmp_path,
    }


def _run(model_path, pair, *extra, moving=None, labels=None):
    out = pair["dir"]
    argv = ["--model", str(model_path), "--moving", str(moving or pair["moving"])]
    argv += ["--fixed", str(pair["fixed"]), "--moved", str(out / "moved.nii.gz")]
    argv += ["--warp", str(out / "warp.nii.gz"), "--warp-mm", str(out / "warp_mm.nii.gz")]
    argv += ["--moving-labels", str(labels or pair["labels"])]
    argv += ["--moved-labels", str(out / "moved_seg.nii.gz"), *extra]
    return main(argv)


def _shifted(array, order=1):
    """`out[x] = array[x + SHIFT]`, border voxels repeated (the model's clamped warp)."""
    return ndimage.shift(array.astype(np.float64), -SHIFT, order=order, mode="nearest")


def _interior():
    """Voxels `x` with `x + SHIFT` inside the volume and not next to its border."""
    return tuple(
        slice(max(0, -int(s)) + 1, n - max(0, int(s)) - 1)
        for s, n in zip(SHIFT, SHAPE, strict=True)
    )


def _check_outputs(out, volumes):
    moving, _, labels = volumes
    fixed = nib.load(out / "fixed.nii.gz")
    expected_affine = _affine()

    for name in ("moved", "warp", "moved_seg", "warp_mm"):
        image = nib.load(out / f"{name}.nii.gz")
        header = image.header
        np.testing.assert_allclose(image.affine, expected_affine, atol=1e-5, err_msg=name)
        assert header["descrip"] == DESCRIP, name
        np.testing.assert_allclose(header["pixdim"][1:4], fixed.header["pixdim"][1:4])
        assert header.get_xyzt_units() == ("mm", "sec"), name
        assert (int(header["qform_code"]), int(header["sform_code"])) == (1, 2), name
        assert image.shape[:3] == SHAPE, name

    moved = nib.load(out / "moved.nii.gz")
    assert moved.get_data_dtype() == np.float32
    np.testing.assert_allclose(moved.get_fdata(), _shifted(moving), atol=1e-3)

    warp = nib.load(out / "warp.nii.gz")
    assert warp.shape == (*SHAPE, 3) and warp.get_data_dtype() == np.float32
    np.testing.assert_allclose(warp.get_fdata(), np.broadcast_to(SHIFT, (*SHAPE, 3)), atol=1e-5)

    seg = nib.load(out / "moved_seg.nii.gz")
    assert seg.get_data_dtype() == np.int16
    inside = _interior()
    rolled = np.roll(labels, (-SHIFT).astype(int), axis=(0, 1, 2))
    np.testing.assert_array_equal(np.asanyarray(seg.dataobj)[inside], rolled[inside])
    assert set(np.unique(seg.dataobj)) == {0, 3, 200}

    field = nib.load(out / "warp_mm.nii.gz")
    assert field.shape == (*SHAPE, 1, 3)
    assert int(field.header["intent_code"]) == 1007
    assert field.get_data_dtype() == np.float32
    # Independent oracle: world position of x + u minus that of x, RAS, then LPS signs.
    index = np.stack(np.meshgrid(*map(np.arange, SHAPE), indexing="ij"), axis=-1)
    ras = apply_affine(expected_affine, index + SHIFT) - apply_affine(expected_affine, index)
    lps = ras * np.array([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(field.get_fdata()[:, :, :, 0, :], lps, atol=1e-4)
    assert np.abs(lps).max() > 1.0  # the oblique affine mixes components: not a trivial check


def test_register_writes_outputs_on_the_fixed_grid(model_path, pair, volumes, capsys):
    assert _run(model_path, pair) == 0
    _check_outputs(pair["dir"], volumes)
    line = capsys.readouterr().out
    assert "registered moving.nii.gz -> fixed.nii.gz on the 18x13x10 fixed grid in" in line
    assert " s (" in line and "moved_labels:" in line and "resampled" not in line


def test_moving_on_another_grid_is_resampled_through_the_affines(model_path, pair, volumes):
    """The moving data flipped along axis 0 and padded, with the affine that says so, must give
    exactly the outputs of the pair on one grid (the world mapping is a whole-voxel one)."""
    moving, _, labels = volumes
    pads = ((2, 3), (1, 0), (0, 2))
    # Moving voxel y = (n0 - 1 + 2 - x0, x1 + 1, x2) = flip @ x holds fixed voxel x's data.
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, SHAPE[0] - 1 + pads[0][0]
    flip[1, 3], flip[2, 3] = pads[1][0], pads[2][0]
    affine = _affine() @ np.linalg.inv(flip)
    out = pair["dir"]
    other = _save(out / "other.nii.gz", np.pad(moving[::-1], pads, mode="edge"), affine)
    other_labels = _save(out / "other_seg.nii.gz", np.pad(labels[::-1], pads), affine)
    assert _run(model_path, pair, moving=other, labels=other_labels) == 0
    _check_outputs(out, volumes)


def test_itk_reads_the_mm_warp_as_the_same_transform(model_path, pair, volumes):
    """SimpleITK resamples the moving file with warp_mm.nii.gz onto the fixed grid: the result
    must be the moved image (ITK's own reading of the affine, LPS frame and intent 1007)."""
    sitk = pytest.importorskip("SimpleITK")
    assert _run(model_path, pair) == 0
    out = pair["dir"]
    field = sitk.ReadImage(str(out / "warp_mm.nii.gz"), sitk.sitkVectorFloat64)
    assert field.GetNumberOfComponentsPerPixel() == 3 and field.GetDimension() == 3
    transform = sitk.DisplacementFieldTransform(field)
    fixed = sitk.ReadImage(str(pair["fixed"]))
    moving = sitk.Cast(sitk.ReadImage(str(pair["moving"])), sitk.sitkFloat64)
    itk_moved = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat64)
    itk_moved = sitk.GetArrayFromImage(itk_moved).transpose(2, 1, 0)  # (z, y, x) -> (x, y, z)
    moved = nib.load(out / "moved.nii.gz").get_fdata()
    inside = _interior()
    np.testing.assert_allclose(itk_moved[inside], moved[inside], atol=1e-2)
    np.testing.assert_allclose(itk_moved[inside], volumes[0][_shifted_index(inside)], atol=1e-2)


def _shifted_index(inside):
    return tuple(
        slice(s.start + int(k), s.stop + int(k)) for s, k in zip(inside, SHIFT, strict=True)
    )


# ----------------------------------------------------------------------------- errors


def _error(capsys, argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def _argv(model_path, pair, **override):
    out = pair["dir"]
    args = {
        "--model": model_path,
        "--moving": pair["moving"],
        "--fixed": pair["fixed"],
        "--moved": out / "moved.nii.gz",
        "--warp": out / "warp.nii.gz",
    }
    args.update(override)
    return [str(v) for item in args.items() if item[1] is not None for v in item]


def test_missing_and_corrupt_files(model_path, pair, capsys):
    missing = pair["dir"] / "nope.nii.gz"
    code, err = _error(capsys, _argv(model_path, pair, **{"--moving": missing}))
    assert code == 2 and str(missing) in err and "moving image file was not found" in err

    corrupt = pair["dir"] / "corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b\x08\x00 certainly not a NIfTI file")
    code, err = _error(capsys, _argv(model_path, pair, **{"--fixed": corrupt}))
    assert code == 2 and f"Could not read {corrupt}" in err and "expected a NIfTI" in err

    code, err = _error(capsys, _argv(model_path, pair, **{"--model": pair["dir"] / "m.keras"}))
    assert code == 2 and "Model not found" in err and "m.keras" in err
    assert not (pair["dir"] / "moved.nii.gz").exists()


@pytest.mark.parametrize("shape", [(18, 13), (18, 13, 10, 2)], ids=["2d", "4d"])
def test_image_of_the_wrong_rank(model_path, pair, capsys, shape):
    path = _save(pair["dir"] / "bad.nii.gz", np.zeros(shape, np.float32), _affine())
    code, err = _error(capsys, _argv(model_path, pair, **{"--moving": path}))
    assert code == 2
    assert f"The model registers 3D volumes: expected the moving image {path}" in err
    assert f"Received: shape={shape}" in err


def test_label_map_off_its_image_grid(model_path, pair, capsys):
    seg = _save(pair["dir"] / "seg.nii.gz", np.zeros((18, 13, 9), np.uint8), _affine())
    argv = _argv(model_path, pair, **{"--moving-labels": seg, "--moved-labels": "t.nii.gz"})
    code, err = _error(capsys, argv)
    assert code == 2 and str(seg) in err and "expected shape (18, 13, 10)" in err
    assert "Received: shape=(18, 13, 9)" in err


def test_labels_flags_go_together(model_path, pair, capsys):
    code, err = _error(capsys, _argv(model_path, pair, **{"--moved-labels": "t.nii.gz"}))
    assert code == 2 and "--moved-labels needs --moving-labels" in err
    code, err = _error(capsys, _argv(model_path, pair, **{"--moving-labels": pair["labels"]}))
    assert code == 2 and "--moving-labels needs --moved-labels" in err


def test_grids_that_cannot_be_mapped(model_path, pair, volumes, capsys):
    # A .npy file has no affine: a different shape cannot be placed on the fixed grid.
    flat = pair["dir"] / "moving.npy"
    np.save(flat, volumes[0][:16])
    code, err = _error(capsys, _argv(model_path, pair, **{"--moving": flat}))
    assert code == 2 and "Cannot map the moving image onto the fixed grid" in err
    assert f"{flat} carries none" in err and "shape (16, 13, 10)" in err

    far = _affine()
    far[:3, 3] += 1000.0
    away = _save(pair["dir"] / "away.nii.gz", volumes[0], far)
    code, err = _error(capsys, _argv(model_path, pair, **{"--moving": away}))
    assert code == 2 and f"{away} covers no voxel of {pair['fixed']}" in err


def test_same_shape_without_affine_is_used_voxel_for_voxel(model_path, pair, volumes):
    flat = pair["dir"] / "moving.npy"
    np.save(flat, volumes[0])
    assert main(_argv(model_path, pair, **{"--moving": flat})) == 0
    moved = nib.load(pair["dir"] / "moved.nii.gz").get_fdata()
    np.testing.assert_allclose(moved, _shifted(volumes[0]), atol=1e-3)


def test_mm_warp_must_be_nifti(model_path, pair, capsys):
    code, err = _error(capsys, _argv(model_path, pair, **{"--warp-mm": "w.npz"}))
    assert code == 2 and "expected a name ending in .nii or .nii.gz" in err
    assert "Received: warp_mm=w.npz" in err


# ------------------------------------------------------- outputs: collisions, overwrite


@pytest.mark.parametrize(
    "output, other, role",
    [
        ("--moved", "--moving", "input"),
        ("--warp", "--fixed", "input"),
        ("--warp", "--moved", "output"),
        ("--moved-labels", "--moving-labels", "input"),
        ("--warp-mm", "--warp", "output"),
    ],
)
def test_an_output_that_is_an_input_or_another_output_is_refused(
    model_path, pair, capsys, output, other, role
):
    """Each pair of paths is one file, spelt differently (through a linked folder): exit 2,
    both options named, and no file written or changed."""
    out = pair["dir"]
    (out / "link").symlink_to(out)
    argv = _argv(model_path, pair)
    argv += ["--moving-labels", str(pair["labels"]), "--moved-labels", str(out / "seg.nii.gz")]
    argv += ["--warp-mm", str(out / "mm.nii.gz")]
    target = argv[argv.index(other) + 1]
    argv[argv.index(output) + 1] = str(out / "link" / Path(target).name)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    code, err = _error(capsys, argv)
    assert code == 2 and err.startswith("error: ")
    assert f"The output {output} is the {role} {other}" in err
    assert f"{output}={out / 'link'}" in err and f"{other}={target}" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_an_existing_output_needs_overwrite(model_path, pair, volumes, capsys):
    out = pair["dir"]
    (out / "warp.nii.gz").write_bytes(b"an earlier result")
    code, err = _error(capsys, _argv(model_path, pair))
    assert code == 2 and "The output --warp exists" in err and "--overwrite to replace" in err
    assert f"Received: --warp={out / 'warp.nii.gz'}" in err
    assert (out / "warp.nii.gz").read_bytes() == b"an earlier result"
    assert not (out / "moved.nii.gz").exists()
    assert _run(model_path, pair, "--overwrite") == 0
    _check_outputs(out, volumes)


def test_an_unwritable_output_folder_writes_nothing(model_path, pair, capsys):
    """A file where the --warp folder should be: refused before registering, --moved not
    written (the same check names a read-only folder)."""
    out = pair["dir"]
    (out / "blocker").write_text("a file, not a folder")
    argv = _argv(model_path, pair, **{"--warp": out / "blocker" / "warp.nii.gz"})
    code, err = _error(capsys, argv)
    assert code == 2 and "Cannot write --warp" in err and "is a file, not a folder" in err
    assert not (out / "moved.nii.gz").exists()


def test_a_write_that_fails_half_way_leaves_no_output(model_path, pair, monkeypatch):
    """The last output fails while being written (a full disk): the others, written first to
    temporary files, are never moved into place, and no temporary is left."""
    from vxmtf.registration import files

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files, "save_itk_displacement", full_disk)
    before = sorted(p.name for p in pair["dir"].iterdir())
    assert _run(model_path, pair) == 2
    assert sorted(p.name for p in pair["dir"].iterdir()) == before


def test_register_files_checks_its_outputs_too(model_path, pair):
    """The library: the same refusals, named by keyword; existing outputs are replaced by
    default (overwrite=True, as Keras's Model.save), refused with overwrite=False."""
    from vxmtf.registration import register_files

    out = pair["dir"]
    files = [pair["moving"], pair["fixed"], out / "moved.nii.gz"]
    with pytest.raises(ValueError, match=r"The output `warp` is the output `moved`.*warp="):
        register_files(model_path, *files, out / "moved.nii.gz")
    with pytest.raises(ValueError, match=r"The output `moved` is the input `fixed`"):
        register_files(model_path, pair["moving"], pair["fixed"], pair["fixed"], out / "w.npy")
    result = register_files(model_path, *files, out / "warp.npy")
    assert result.paths == {"moved": out / "moved.nii.gz", "warp": out / "warp.npy"}
    first = np.load(out / "warp.npy")
    register_files(model_path, *files, out / "warp.npy")  # replaced
    np.testing.assert_array_equal(np.load(out / "warp.npy"), first)
    with pytest.raises(FileExistsError, match=r"`moved` exists: .*overwrite=True to replace"):
        register_files(model_path, *files, out / "warp2.npy", overwrite=False)
    assert not (out / "warp2.npy").exists()
