"""`vxmtf.export`: TF Serving layout, signatures, loading without vxmtf and through the C API."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import scipy_warp_batch
from scipy import ndimage
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import op_def_registry

import vxmtf
from vxmtf.export import export_saved_model, main, padding_multiple
from vxmtf.networks import Unet, VxmDense

SMALL = {"enc_features": (4, 8, 8, 8), "dec_features": (8, 8, 8, 8, 8, 4, 4)}
CONFIG = {"int_steps": 3, "int_resolution": 2, **SMALL}  # pads to multiples of 16
LOADER = Path(__file__).with_name("export_cpp_loader.py")


def make_model(inshape=(16, 16, 16), seed=0, **config):
    """A tiny VxmDense whose flow head gives displacements of a few voxels (not ~1e-5)."""
    model = VxmDense(inshape, **(config or CONFIG))
    rng = np.random.default_rng(seed)
    kernel, bias = model.get_layer("flow").get_weights()
    model.get_layer("flow").set_weights(
        [rng.normal(0, 0.1, kernel.shape), rng.normal(0, 1.0, bias.shape)]
    )
    return model


def volumes(rng, batch, shape):
    """A smooth-ish random (moving, fixed) pair, float32 `(batch, *shape, 1)`."""
    pair = [
        ndimage.gaussian_filter(rng.uniform(size=(batch, *shape, 1)), (0, 1, 1, 1, 0)) for _ in "mf"
    ]
    return [p.astype(np.float32) for p in pair]


def keras_reference(model, moving, fixed, pads):
    """The Keras model on the zero-padded pair, the displacement cropped back.

    `pads` lists (before, after) per spatial axis, computed by hand in the tests.
    """
    widths = [(0, 0), *pads, (0, 0)]
    padded_shape = [m + a + b for m, (a, b) in zip(moving.shape[1:-1], pads, strict=True)]
    reference = VxmDense(tuple(padded_shape), **CONFIG)
    reference.set_weights(model.get_weights())
    out = reference([np.pad(moving, widths), np.pad(fixed, widths)])
    crop = tuple(slice(a, a + n) for (a, _), n in zip(pads, moving.shape[1:-1], strict=True))
    return out["displacement"].numpy()[(slice(None), *crop)]


def signature_tensors(export_dir, signature):
    """Graph tensor names of a signature, read from saved_model.pb (as TF Serving does)."""
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((Path(export_dir) / "saved_model.pb").read_bytes())
    (meta_graph,) = [m for m in saved_model.meta_graphs if "serve" in m.meta_info_def.tags]
    sig = meta_graph.signature_def[signature]
    return {
        "inputs": {k: v.name for k, v in sig.inputs.items()},
        "outputs": {k: v.name for k, v in sig.outputs.items()},
    }


def run_with_c_api(export_dir, inputs, tmp_path):
    """Run signatures through TF's C library in a process without TensorFlow's Python package."""
    library = sorted(Path(tf.__file__).parent.glob("libtensorflow_cc.*"))
    if not library:
        pytest.skip(
            f"TensorFlow's C library (libtensorflow_cc.*) not found in {Path(tf.__file__).parent}"
        )
    spec = {name: signature_tensors(export_dir, name) for name in {k.split(".")[0] for k in inputs}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    np.savez(tmp_path / "c_inputs.npz", **inputs)
    args = [sys.executable, str(LOADER), str(library[0]), str(export_dir)]
    args += [str(tmp_path / n) for n in ("spec.json", "c_inputs.npz", "c_outputs.npz")]
    result = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    with np.load(tmp_path / "c_outputs.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def model():
    return make_model()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    return export_saved_model(model, tmp_path_factory.mktemp("models"))


# --- layout and versions -------------------------------------------------------------------


def test_layout_versions_and_refusal(tmp_path):
    model = make_model((16, 16), int_steps=0, **SMALL)
    (tmp_path / "vxm" / "notes").mkdir(parents=True)  # non-numeric folders are not versions
    first = export_saved_model(model, tmp_path)
    assert first == tmp_path / "vxm" / "1"
    assert (first / "saved_model.pb").is_file() and (
        first / "variables" / "variables.index"
    ).is_file()
    assert export_saved_model(model, tmp_path, version=7) == tmp_path / "vxm" / "7"
    assert export_saved_model(model, tmp_path) == tmp_path / "vxm" / "8"
    seven = tmp_path / "vxm" / "7"
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in seven.rglob("*") if p.is_file()}
    with pytest.raises(FileExistsError, match=re.escape(str(seven))):
        export_saved_model(model, tmp_path, version=7)
    # Nothing half-written or hidden is left behind, and the refused version is untouched.
    assert sorted(p.name for p in (tmp_path / "vxm").iterdir()) == ["1", "7", "8", "notes"]
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in seven.rglob("*") if p.is_file()}
    assert after == before
    other = export_saved_model(model, tmp_path, model_name="other")
    assert other == tmp_path / "other" / "1"


def test_failed_write_leaves_no_version(tmp_path, monkeypatch):
    model = make_model((16, 16), int_steps=0, **SMALL)

    def crash(module, path, signatures):
        Path(path, "variables").mkdir(parents=True)
        Path(path, "saved_model.pb").write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        export_saved_model(model, tmp_path)
    assert list((tmp_path / "vxm").iterdir()) == []


# --- signatures and numerics ---------------------------------------------------------------


def test_signatures(exported):
    loaded = tf.saved_model.load(str(exported))
    assert set(loaded.signatures) == {"serving_default", "warp"}
    serve = loaded.signatures["serving_default"]
    inputs = serve.structured_input_signature[1]
    assert set(inputs) == {"moving", "fixed"}
    for spec in inputs.values():
        assert spec.shape.as_list() == [None, None, None, None, 1] and spec.dtype == tf.float32
    outputs = serve.structured_outputs
    assert set(outputs) == {"moved", "displacement"}
    assert outputs["displacement"].shape.as_list() == [None, None, None, None, 3]
    assert all(o.dtype == tf.float32 for o in outputs.values())
    warp = loaded.signatures["warp"]
    inputs = warp.structured_input_signature[1]
    assert inputs["image"].shape.as_list() == [None] * 5
    assert inputs["displacement"].shape.as_list() == [None, None, None, None, 3]
    assert set(warp.structured_outputs) == {"warped"}
    small, large = (
        np.zeros((1, 16, 16, 16, 1), np.float32),
        np.zeros((1, 32, 16, 16, 1), np.float32),
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="`moving` and `fixed` differ"):
        serve(moving=small, fixed=large)
    image = np.zeros((1, 16, 16, 16, 2), np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="differ in batch or spatial shape"):
        warp(image=image, displacement=np.zeros((1, 16, 16, 8, 3), np.float32))


def test_graph_uses_only_standard_ops(exported):
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((exported / "saved_model.pb").read_bytes())
    graph = saved_model.meta_graphs[0].graph_def
    functions = {f.signature.name for f in graph.library.function}
    ops = {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}
    unknown = {op for op in ops - functions if op_def_registry.get(op) is None}
    assert not unknown
    assert not ops & {"PyFunc", "PyFuncStateless", "EagerPyFunc"}
    # No XLA unless asked for (TF Serving builds need not include it).
    assert not any(f.attr["_XlaMustCompile"].b for f in graph.library.function)


def test_outputs_match_keras_in_a_process_without_vxmtf(model, exported, tmp_path):
    rng = np.random.default_rng(1)
    cases = {  # name: (batch, spatial shape, hand-computed (before, after) padding to 16s)
        "exact": (1, (16, 16, 16), [(0, 0)] * 3),
        "padded": (3, (20, 18, 22), [(6, 6), (7, 7), (5, 5)]),
        "odd": (1, (21, 16, 17), [(5, 6), (0, 0), (7, 8)]),
    }
    inputs = {}
    for name, (batch, shape, _) in cases.items():
        inputs[f"{name}.moving"], inputs[f"{name}.fixed"] = volumes(rng, batch, shape)
    labels = rng.integers(0, 5, size=(2, 20, 18, 22, 2)).astype(np.float32)
    # Displacements at least 0.1 voxel away from half-voxels, where rounding is ambiguous.
    shift = rng.integers(-3, 4, size=(2, 20, 18, 22, 3)) + rng.uniform(
        -0.4, 0.4, (2, 20, 18, 22, 3)
    )
    inputs["warp.image"], inputs["warp.displacement"] = labels, shift.astype(np.float32)
    np.savez(tmp_path / "inputs.npz", **inputs)

    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        import tensorflow as tf

        export_dir, inputs_npz, outputs_npz = sys.argv[1:]
        loaded = tf.saved_model.load(export_dir)
        serve, warp = loaded.signatures["serving_default"], loaded.signatures["warp"]
        data = dict(np.load(inputs_npz))
        outputs = {}
        for name in ("exact", "padded", "odd"):
            out = serve(moving=data[name + ".moving"], fixed=data[name + ".fixed"])
            outputs.update({name + "." + k: v.numpy() for k, v in out.items()})
        out = warp(image=data["warp.image"], displacement=data["warp.displacement"])
        outputs["warp.warped"] = out["warped"].numpy()
        np.savez(outputs_npz, **outputs)
        assert "vxmtf" not in sys.modules, sorted(m for m in sys.modules if "vxmtf" in m)
        """
    )
    args = [sys.executable, "-c", script, str(exported), "inputs.npz", "outputs.npz"]
    result = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    served = dict(np.load(tmp_path / "outputs.npz"))

    # Already a multiple of 16: exactly the Keras model's outputs.
    direct = model([inputs["exact.moving"], inputs["exact.fixed"]])
    assert np.abs(direct["displacement"].numpy()).max() > 0.5  # a non-trivial field
    np.testing.assert_allclose(served["exact.displacement"], direct["displacement"], atol=1e-5)
    np.testing.assert_allclose(served["exact.moved"], direct["moved"], atol=1e-5)
    for name, (batch, shape, pads) in cases.items():
        moving, fixed = inputs[f"{name}.moving"], inputs[f"{name}.fixed"]
        displacement = served[f"{name}.displacement"]
        assert displacement.shape == (batch, *shape, 3)
        # Padded by hand, run through Keras, cropped: the same field, in input-grid voxels.
        expected = keras_reference(model, moving, fixed, pads)
        np.testing.assert_allclose(displacement, expected, atol=1e-5)
        # `moved` is the input warped by that field, moved[x] = moving[x + u(x)].
        np.testing.assert_allclose(
            served[f"{name}.moved"], scipy_warp_batch(moving, displacement, order=1), atol=1e-5
        )
    warped = served["warp.warped"]
    np.testing.assert_array_equal(warped, scipy_warp_batch(labels, inputs["warp.displacement"], 0))


def test_c_api_loader_gives_the_python_outputs(exported, tmp_path):
    rng = np.random.default_rng(2)
    moving, fixed = volumes(rng, 2, (20, 18, 22))
    labels = rng.integers(0, 4, size=(2, 20, 18, 22, 1)).astype(np.float32)
    shift = rng.normal(0, 2, size=(2, 20, 18, 22, 3)).astype(np.float32)
    inputs = {
        "serving_default.moving": moving,
        "serving_default.fixed": fixed,
        "warp.image": labels,
        "warp.displacement": shift,
    }
    c_out = run_with_c_api(exported, inputs, tmp_path)

    loaded = tf.saved_model.load(str(exported))
    py_out = loaded.signatures["serving_default"](moving=moving, fixed=fixed)
    for key in ("moved", "displacement"):
        assert c_out[f"serving_default.{key}"].shape == py_out[key].shape
        np.testing.assert_allclose(c_out[f"serving_default.{key}"], py_out[key], atol=1e-5)
    warped = loaded.signatures["warp"](image=labels, displacement=shift)["warped"]
    np.testing.assert_array_equal(c_out["warp.warped"], warped)


@pytest.mark.slow
def test_xla_export_matches_and_loads_through_the_c_api(model, exported, tmp_path):
    path = export_saved_model(model, tmp_path, jit_compile=True)
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((path / "saved_model.pb").read_bytes())
    functions = saved_model.meta_graphs[0].graph_def.library.function
    assert any(f.attr["_XlaMustCompile"].b for f in functions)

    moving, fixed = volumes(np.random.default_rng(3), 2, (20, 18, 22))
    plain = tf.saved_model.load(str(exported)).signatures["serving_default"]
    expected = plain(moving=moving, fixed=fixed)
    xla = tf.saved_model.load(str(path)).signatures["serving_default"]
    out = xla(moving=moving, fixed=fixed)
    for key in ("moved", "displacement"):
        np.testing.assert_allclose(out[key], expected[key], atol=1e-4)
    c_out = run_with_c_api(
        path, {"serving_default.moving": moving, "serving_default.fixed": fixed}, tmp_path
    )
    np.testing.assert_allclose(
        c_out["serving_default.displacement"], expected["displacement"], atol=1e-4
    )


# --- sources of the model ------------------------------------------------------------------


def test_from_keras_file_trained_under_mixed_precision(model, exported, tmp_path):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        mixed = VxmDense((16, 16, 16), **CONFIG)
        mixed.set_weights(model.get_weights())
        mixed.save(tmp_path / "mixed.keras")
        path = export_saved_model(str(tmp_path / "mixed.keras"), tmp_path / "models")
        assert keras.config.dtype_policy().name == "mixed_float16"  # the caller's policy is kept
    finally:
        keras.config.set_dtype_policy(previous)
    moving, fixed = volumes(np.random.default_rng(4), 1, (20, 18, 22))
    out = tf.saved_model.load(str(path)).signatures["serving_default"](moving=moving, fixed=fixed)
    expected = tf.saved_model.load(str(exported)).signatures["serving_default"](
        moving=moving, fixed=fixed
    )
    for key in ("moved", "displacement"):
        assert out[key].dtype == tf.float32
        np.testing.assert_allclose(out[key], expected[key], atol=1e-5)


def test_2d_bidirectional_model(tmp_path):
    config = {"int_steps": 0, "bidir": True, **SMALL}
    model = make_model((16, 16), **config)
    path = export_saved_model(model, tmp_path, model_name="vxm2d", version=3)
    assert path == tmp_path / "vxm2d" / "3"
    moving, fixed = (
        np.random.default_rng(5).uniform(size=(2, 20, 18, 1)).astype(np.float32) for _ in "mf"
    )
    out = tf.saved_model.load(str(path)).signatures["serving_default"](moving=moving, fixed=fixed)
    assert set(out) == {"moved", "displacement"}
    reference = VxmDense((32, 32), **config)
    reference.set_weights(model.get_weights())
    widths = [(0, 0), (6, 6), (7, 7), (0, 0)]
    expected = reference([np.pad(moving, widths), np.pad(fixed, widths)])["displacement"]
    np.testing.assert_allclose(out["displacement"], expected[:, 6:26, 7:25], atol=1e-5)


@pytest.mark.parametrize(
    ("config", "multiple"),
    [
        ({"int_steps": 0, "int_resolution": 3, "enc_features": (4, 4, 4)}, 8),
        ({"int_steps": 2, "int_resolution": 3, "enc_features": (4, 4, 4)}, 24),
        ({"int_steps": 2, "int_resolution": 4, "enc_features": (4, 4, 4)}, 8),
        ({"int_steps": 2, "int_resolution": 1, "enc_features": (4, 4, 4, 4)}, 16),
    ],
)
def test_padding_multiple(config, multiple):
    model = VxmDense((None, None), dec_features=(4,) * 5, **config)
    assert padding_multiple(model) == multiple


# --- errors and command line ---------------------------------------------------------------


def test_rejects_other_models(tmp_path):
    with pytest.raises(TypeError, match="Expected a vxmtf.networks.VxmDense.*Sequential"):
        export_saved_model(keras.Sequential([keras.layers.Dense(1)]), tmp_path)
    unet = Unet((16, 16), 2, (4,), (4,))
    unet.save(tmp_path / "unet.keras")
    with pytest.raises(TypeError, match="Expected a vxmtf.networks.VxmDense.*Unet"):
        export_saved_model(tmp_path / "unet.keras", tmp_path)
    assert not (tmp_path / "vxm").exists()


@pytest.mark.parametrize("version", [-1, "2", 1.0, True])
def test_rejects_bad_versions(model, tmp_path, version):
    with pytest.raises(ValueError, match="Received: version="):
        export_saved_model(model, tmp_path, version=version)


@pytest.mark.parametrize("name", ["", "a/b", "..", ".hidden"])
def test_rejects_bad_model_names(model, tmp_path, name):
    with pytest.raises(ValueError, match="Received: model_name="):
        export_saved_model(model, tmp_path, model_name=name)


def test_unwritable_base_dir_raises_oserror_naming_it(model, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError) as error:
        export_saved_model(model, blocker / "models")
    assert str(blocker) in str(error.value)


def test_command_line(model, tmp_path, capsys):
    model.save(tmp_path / "model.keras")
    base = tmp_path / "models"
    args = ["--model", str(tmp_path / "model.keras"), "--base-dir", str(base), "--version", "4"]
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == str(base / "vxm" / "4")
    assert (base / "vxm" / "4" / "saved_model.pb").is_file()
    assert main(args) == 2  # version 4 exists: refused, reported, nothing overwritten
    assert f"already exists: '{base / 'vxm' / '4'}'" in capsys.readouterr().err
    assert main([*args[:4], "--name", "small", "--xla"]) == 0
    assert (base / "small" / "1" / "saved_model.pb").is_file()


@pytest.mark.slow
def test_python_dash_m(model, tmp_path):
    model.save(tmp_path / "model.keras")
    args = [sys.executable, "-m", "vxmtf.export", "--model", "model.keras", "--base-dir", "out"]
    env = {**os.environ, "PYTHONPATH": str(Path(vxmtf.__file__).parents[1])}
    result = subprocess.run(
        args, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip() == str(Path("out") / "vxm" / "1")
    assert (tmp_path / "out" / "vxm" / "1" / "saved_model.pb").is_file()
