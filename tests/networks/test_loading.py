"""`vxmtf.networks.loading`: one loader for `.keras` VxmDense files, one error for other models,
and the float32 free-shape clone."""

import zipfile

import keras
import numpy as np
import pytest

from vxmtf.networks.loading import NotVxmDenseError, inference_clone, load_vxm_dense
from vxmtf.networks.vxm_dense import VxmDense

SMALL = {"enc_features": (4, 4), "dec_features": (4, 4, 4)}


def test_loads_a_saved_model_and_names_bad_files(tmp_path):
    model = VxmDense((16, 16), int_steps=0, **SMALL)
    model.save(tmp_path / "m.keras")
    loaded = load_vxm_dense(tmp_path / "m.keras")
    assert isinstance(loaded, VxmDense)
    for a, b in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError, match="nope.keras"):
        load_vxm_dense(tmp_path / "nope.keras")
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"The model file .*junk.keras exists but is not a"):
        load_vxm_dense(junk)
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    other.save(tmp_path / "dense.keras")
    with pytest.raises(NotVxmDenseError, match=r"VxmDense.*Received: a model of type Sequential"):
        load_vxm_dense(tmp_path / "dense.keras")
    assert issubclass(NotVxmDenseError, TypeError)


@pytest.mark.parametrize("inshape", [None, (24, 8)])
def test_inference_clone_has_free_or_given_sizes_and_the_weights(inshape):
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = VxmDense((16, 16), int_steps=3, bidir=True, **SMALL)
    finally:
        keras.config.set_dtype_policy(policy)
    clone = inference_clone(model, inshape)
    assert clone.inshape == (tuple(inshape) if inshape else (None, None))
    assert not clone.bidir and "inverse_moved" not in clone.output
    assert all(w.dtype == "float32" for w in clone.weights)
    assert keras.config.dtype_policy().name == policy.name  # the caller's policy is restored
    for a, b in zip(clone.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b.astype(np.float32))
    rng = np.random.default_rng(0)
    pair = [rng.uniform(size=(1, 32, 16, 1)).astype("float32") for _ in range(2)]
    if inshape is None:
        assert clone(pair)["displacement"].shape == (1, 32, 16, 2)


def _saved(tmp_path):
    path = tmp_path / "m.keras"
    VxmDense((16, 16), int_steps=0, **SMALL).save(path)
    return path


@pytest.mark.parametrize("corruption", ["garbage", "truncated", "empty", "no config"])
def test_a_corrupt_file_is_said_to_exist_not_to_be_missing(tmp_path, corruption):
    good = _saved(tmp_path).read_bytes()
    bad = tmp_path / "bad.keras"
    if corruption == "garbage":
        bad.write_bytes(b"not a zip")
    elif corruption == "truncated":
        bad.write_bytes(good[: len(good) // 2])
    elif corruption == "empty":
        bad.write_bytes(b"")
    else:
        with zipfile.ZipFile(bad, "w") as archive:
            archive.writestr("metadata.json", "{}")
    with pytest.raises(ValueError) as raised:
        load_vxm_dense(bad)
    message = str(raised.value)
    assert f"The model file {bad} exists but is not a readable Keras model" in message
    assert "Received: error=" in message
    assert "not found" not in message.lower()


def test_a_folder_is_not_a_model_file(tmp_path):
    with pytest.raises(ValueError, match=r"is a folder, not a .keras model file"):
        load_vxm_dense(tmp_path)
