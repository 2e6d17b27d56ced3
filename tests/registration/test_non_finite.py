"""`Registrator.register` refuses a non-finite displacement (a model with NaN weights, e.g. from
a diverged training run) with an error naming the model, instead of returning a NaN field."""

import numpy as np
import pytest
from helpers import shift_model

from vxmtf.registration import Registrator, register_files
from vxmtf.training.config import RunConfig


def nan_model(layer="flow", value=np.nan):
    """A tiny `VxmDense` (zero field) with every weight of one layer set to `value`."""
    model = shift_model([0.0, 0.0, 0.0])
    target = model.get_layer(layer)
    target.set_weights([np.full_like(w, value) for w in target.get_weights()])
    return model


def _pair(shape=(16, 16, 16)):
    rng = np.random.default_rng(0)
    return (rng.uniform(size=shape).astype(np.float32) for _ in range(2))


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("tiled", [True, False])
def test_a_model_with_non_finite_weights_is_refused_by_name(tmp_path, value, tiled):
    path = tmp_path / "diverged.keras"
    nan_model(value=value).save(path)
    registrator = Registrator(path, config=RunConfig(), tiled=tiled)
    moving, fixed = _pair()
    with pytest.raises(ValueError, match="non-finite displacement") as error:
        registrator.register(moving, fixed)
    message = str(error.value)
    assert f"The model {path} gave" in message and "weights are probably not finite" in message
    assert f"Received: {16**3 * 3} of {16**3 * 3} displacement values NaN or Inf" in message


def test_an_in_memory_model_is_named():
    model = nan_model("flow")
    registrator = Registrator(model, config=RunConfig())
    with pytest.raises(ValueError, match=rf"The model {model.name} gave a non-finite"):
        registrator.register(*_pair())


def test_register_files_writes_nothing_for_a_nan_model(tmp_path):
    moving, fixed = _pair()
    np.save(tmp_path / "moving.npy", moving)
    np.save(tmp_path / "fixed.npy", fixed)
    nan_model().save(tmp_path / "nan.keras")
    outputs = {"moved": tmp_path / "moved.npy", "warp": tmp_path / "warp.npy"}
    with pytest.raises(ValueError, match="nan.keras gave a non-finite displacement"):
        register_files(
            tmp_path / "nan.keras", tmp_path / "moving.npy", tmp_path / "fixed.npy", **outputs
        )
    assert not any(path.exists() for path in outputs.values())
