"""Non-finite voxels in the images given to registration are refused, not normalised away.

One infinite voxel used to become the min-max maximum (every other voxel scaled to ~0, a
different field, exit 0) and NaNs passed into `moved`. Files: `vxmtf.data.io.load_volume` names
the file; arrays given to `Registrator`: its preprocessing refuses them.
"""

import nibabel as nib
import numpy as np
import pytest
from helpers import shift_model

from vxmtf.register import main
from vxmtf.registration import Registrator

SHAPE = (12, 10, 8)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "shift.keras"
    shift_model((1.0, 0.0, 0.0)).save(path)
    return path


def _image(seed):
    return np.random.default_rng(seed).uniform(0, 100, SHAPE).astype(np.float32)


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_registrator_refuses_a_non_finite_array(bad):
    registrator = Registrator(shift_model((1.0, 0.0, 0.0)))
    moving = _image(0)
    moving[2, 3, 4] = bad
    with pytest.raises(ValueError, match=r"1 of 960 voxels are not finite \(NaN or Inf\)"):
        registrator.register(moving, _image(1))


@pytest.mark.parametrize("role", ["moving", "fixed"])
def test_register_command_names_the_non_finite_file(model_path, tmp_path, capsys, role):
    paths = {}
    for name, seed in (("moving", 0), ("fixed", 1)):
        array = _image(seed)
        if name == role:
            array[0, 0, 0], array[5, 5, 5], array[6, 6, 6] = np.inf, -np.inf, np.nan
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(array, np.eye(4)), paths[name])
    moved = tmp_path / "moved.nii.gz"
    argv = ["--model", str(model_path), "--moving", str(paths["moving"])]
    argv += ["--fixed", str(paths["fixed"]), "--moved", str(moved)]
    argv += ["--warp", str(tmp_path / "warp.nii.gz")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"error: {paths[role]}: 3 of 960 voxels are not finite (NaN or Inf)" in err
    assert not moved.exists() and not (tmp_path / "warp.nii.gz").exists()
