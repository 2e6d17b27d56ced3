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
from vxmtf.data.preprocess import normalize_intensity
from vxmtf.export import (
    PREPROCESSING_ASSET,
    export_saved_model,
    main,
    padding_multiple,
    read_preprocessing,
)
from vxmtf.networks import Unet, VxmDense
from vxmtf.registration import Registrator
from vxmtf.training.config import DataConfig, ModelConfig, RunConfig

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
    """A smooth-ish random (moving, fixed) pair, float32 `(batch, *shape, 1)`, each sample
    min-max normalised (so the default export's normalisation leaves it as it is, to rounding)."""
    sigma = (0,) + (1,) * len(shape) + (0,)
    pair = [ndimage.gaussian_filter(rng.uniform(size=(batch, *shape, 1)), sigma) for _ in "mf"]
    return [np.stack([normalize_intensity(x) for x in p]) for p in pair]


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


def run_with_c_api(export_dir, inputs, tmp_path, fetch=None):
    """Run signatures through TF's C library in a process without TensorFlow's Python package.

    `inputs` maps `"<signature>.<key>"` to arrays; `fetch` maps more signatures (without
    inputs) to the outputs to fetch."""
    library = sorted(Path(tf.__file__).parent.glob("libtensorflow_cc.*"))
    if not library:
        pytest.skip(
            f"TensorFlow's C library (libtensorflow_cc.*) not found in {Path(tf.__file__).parent}"
        )
    spec = {name: signature_tensors(export_dir, name) for name in {k.split(".")[0] for k in inputs}}
    for name, keys in (fetch or {}).items():
        tensors = signature_tensors(export_dir, name)
        spec[name] = {
            "inputs": tensors["inputs"],
            "outputs": {k: tensors["outputs"][k] for k in keys},
        }
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
    assert set(loaded.signatures) == {"serving_default", "warp", "preprocessing"}
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
    path = export_saved_model(model, tmp_path, jit_compile=True, tiled=False)
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
    moving, fixed = volumes(np.random.default_rng(5), 2, (20, 18))
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


# --- raw inputs: the run's preprocessing inside the graph ----------------------------------

#: A run that normalises by percentiles and downsamples by 2 (pads the coarse grid to 16s).
RAW_CONFIG = RunConfig(
    data=DataConfig(downsample=2, normalize="percentile"), model=ModelConfig(**CONFIG)
)


def raw_volumes(rng, batch, shape):
    """A pair of raw scans: `volumes` scaled and offset, differently for each sample."""
    scale = np.array([1000.0, 3.0, 0.01][:batch]).reshape((batch,) + (1,) * (len(shape) + 1))
    offset = np.array([50.0, -7.0, 2.0][:batch]).reshape(scale.shape)
    return [(scale * x + offset).astype(np.float32) for x in volumes(rng, batch, shape)]


@pytest.fixture(scope="module")
def prepared(model, tmp_path_factory):
    """Exports of `model` that prepare raw inputs as RAW_CONFIG's run: tiled and whole."""
    base = tmp_path_factory.mktemp("prepared")
    return {
        tiled: export_saved_model(model, base, f"vxm_{tiled}", config=RAW_CONFIG, tiled=tiled)
        for tiled in (True, False)
    }


def registrator_outputs(model, config, moving, fixed):
    """`Registrator(model, config).register` of each sample: (displacement, moved) batched."""
    registrator = Registrator(model, config)
    results = [registrator.register(m[..., 0], f[..., 0]) for m, f in zip(moving, fixed)]  # noqa: B905
    return np.stack([r.displacement for r in results]), np.stack([r.moved for r in results])


@pytest.mark.parametrize("tiled", [True, False])
def test_serves_raw_volumes_as_the_registrator(model, prepared, tiled):
    serve = tf.saved_model.load(str(prepared[tiled])).signatures["serving_default"]
    rng = np.random.default_rng(6)
    for batch, shape in ((2, (21, 18, 23)), (1, (16, 24, 17))):
        moving, fixed = raw_volumes(rng, batch, shape)
        out = serve(moving=moving, fixed=fixed)
        displacement, moved = registrator_outputs(model, RAW_CONFIG, moving, fixed)
        assert np.abs(displacement).max() > 0.5  # a non-trivial field
        assert out["displacement"].shape == (batch, *shape, 3)
        np.testing.assert_allclose(out["displacement"], displacement, atol=1e-4)
        # Raw intensities reach ~1000: float32 sums in another order (oneDNN on or off, the
        # CPU) differ by about 1e-6 of the value, hence the relative tolerance.
        np.testing.assert_allclose(out["moved"][..., 0], moved, atol=1e-4, rtol=1e-5)


def test_raw_serving_through_the_c_api(model, prepared, tmp_path):
    moving, fixed = raw_volumes(np.random.default_rng(7), 2, (21, 18, 23))
    labels = np.random.default_rng(8).integers(0, 5, size=(2, 21, 18, 23, 1)).astype(np.float32)
    displacement, moved = registrator_outputs(model, RAW_CONFIG, moving, fixed)
    inputs = {
        "serving_default.moving": moving,
        "serving_default.fixed": fixed,
        "warp.image": labels,
        "warp.displacement": displacement.astype(np.float32),
    }
    fetch = {"preprocessing": ["percentiles", "downsample", "multiple", "prepares_inputs"]}
    out = run_with_c_api(prepared[True], inputs, tmp_path, fetch)
    np.testing.assert_allclose(out["serving_default.displacement"], displacement, atol=1e-4)
    np.testing.assert_allclose(out["serving_default.moved"][..., 0], moved, atol=1e-4, rtol=1e-5)
    registrator = Registrator(model, RAW_CONFIG)
    expected = [registrator.warp_labels(x[..., 0], u) for x, u in zip(labels, displacement)]  # noqa: B905
    np.testing.assert_array_equal(out["warp.warped"][..., 0], np.stack(expected))
    np.testing.assert_array_equal(out["preprocessing.percentiles"], [1.0, 99.0])
    assert out["preprocessing.downsample"] == 2 and out["preprocessing.multiple"] == 16
    assert out["preprocessing.prepares_inputs"]


def test_the_export_records_its_preprocessing(prepared, exported):
    path = prepared[True]
    assert (path / "assets" / PREPROCESSING_ASSET).is_file()
    record = read_preprocessing(path)
    assert record == json.loads((path / "assets" / PREPROCESSING_ASSET).read_text())
    expected = {"normalize": "percentile", "percentiles": [1.0, 99.0], "downsample": 2}
    expected.update(multiple=16, prepares_inputs=True, ndim=3, tiled=True, resize="pad")
    assert {k: record[k] for k in expected} == expected
    values = tf.saved_model.load(str(path)).signatures["preprocessing"]()
    assert values["normalize"].numpy() == b"percentile"
    assert values["downsample"].numpy() == 2 and values["multiple"].numpy() == 16
    assert values["prepares_inputs"].numpy()
    # Without a run configuration: min-max and no downsampling, as Registrator assumes.
    default = read_preprocessing(exported)
    assert (default["normalize"], default["downsample"], default["config"]) == ("minmax", 1, None)


def test_a_registrator_on_the_export_prepares_nothing_twice(model, prepared):
    moving, fixed = raw_volumes(np.random.default_rng(9), 1, (21, 18, 23))
    expected = Registrator(model, RAW_CONFIG).register(moving[0, ..., 0], fixed[0, ..., 0])
    registrator = Registrator(prepared[True], config=RAW_CONFIG)
    assert registrator.predictor.prepares_inputs
    result = registrator.register(moving[0, ..., 0], fixed[0, ..., 0])
    np.testing.assert_allclose(result.displacement, expected.displacement, atol=1e-4)
    np.testing.assert_allclose(result.moved, expected.moved, atol=1e-4, rtol=1e-5)


def test_bare_and_old_exports_are_prepared_by_the_registrator(model, tmp_path):
    path = export_saved_model(model, tmp_path, config=RAW_CONFIG, preprocess=False)
    record = read_preprocessing(path)
    assert not record["prepares_inputs"] and record["downsample"] == 2
    moving, fixed = raw_volumes(np.random.default_rng(10), 1, (21, 18, 23))
    expected = Registrator(model, RAW_CONFIG).register(moving[0, ..., 0], fixed[0, ..., 0])
    for _ in ("bare", "old"):
        registrator = Registrator(path, config=RAW_CONFIG)
        assert not registrator.predictor.prepares_inputs
        result = registrator.register(moving[0, ..., 0], fixed[0, ..., 0])
        np.testing.assert_allclose(result.displacement, expected.displacement, atol=1e-4)
        np.testing.assert_allclose(result.moved, expected.moved, atol=1e-4, rtol=1e-5)
        # An export written before the record existed has no asset: the same path.
        (path / "assets" / PREPROCESSING_ASSET).unlink(missing_ok=True)
        assert read_preprocessing(path) is None


def test_configuration_sources(model, tmp_path):
    # A path of its config.json, and the one found beside a .keras file.
    RAW_CONFIG.save(tmp_path / "run.json")
    path = export_saved_model(model, tmp_path / "a", config=tmp_path / "run.json")
    assert read_preprocessing(path)["config"] == str(tmp_path / "run.json")
    model.save(tmp_path / "m.keras")
    RAW_CONFIG.save(tmp_path / "m.config.json")
    path = export_saved_model(tmp_path / "m.keras", tmp_path / "b")
    assert read_preprocessing(path)["downsample"] == 2
    # A model object exported into a run folder's export/ (as training does).
    (tmp_path / "run").mkdir()
    RAW_CONFIG.save(tmp_path / "run" / "config.json")
    path = export_saved_model(model, tmp_path / "run" / "export")
    assert read_preprocessing(path)["config"] == str(tmp_path / "run" / "config.json")
    with pytest.raises(TypeError, match="Received: config=42"):
        export_saved_model(model, tmp_path / "c", config=42)
    with pytest.raises(ValueError, match="Received: tiled=True, jit_compile=True"):
        export_saved_model(model, tmp_path / "c", jit_compile=True)
    with pytest.raises(TypeError, match="Received: tiled="):
        export_saved_model(model, tmp_path / "c", tiled="yes")
    (tmp_path / "bad" / "assets").mkdir(parents=True)
    (tmp_path / "bad" / "assets" / PREPROCESSING_ASSET).write_text("[1]")
    with pytest.raises(ValueError, match="Expected a vxmtf preprocessing record"):
        read_preprocessing(tmp_path / "bad")


@pytest.mark.slow
def test_pretrained_lpba40_pair_through_the_c_api(lpba40_dir, tmp_path):
    """The shipped model on a real pair: raw scans (scaled, offset) through the C loader against
    `vxmtf.registration.register_files` on the files."""
    import nibabel as nib

    from vxmtf.metrics.dice import dice
    from vxmtf.registration import register_files

    root = Path(__file__).resolve().parents[1]
    model_path = root / "pretrained" / "vxm_lpba40.keras"
    moving_file, fixed_file = (
        lpba40_dir / "imagesTr" / f"LPBA40_{n:04d}_0000.nii.gz" for n in (1, 6)
    )
    labels_file, fixed_labels_file = (
        lpba40_dir / "labelsTr" / f.name for f in (moving_file, fixed_file)
    )
    files = register_files(
        model_path,
        moving_file,
        fixed_file,
        tmp_path / "moved.nii.gz",
        tmp_path / "warp.nii.gz",
        moving_labels=labels_file,
        moved_labels=tmp_path / "moved_labels.nii.gz",
    )
    assert not files.resampled
    reference = np.asarray(nib.load(tmp_path / "warp.nii.gz").dataobj, np.float32)
    reference_labels = np.asarray(nib.load(tmp_path / "moved_labels.nii.gz").dataobj)

    path = export_saved_model(model_path, tmp_path / "models")  # config found beside the model
    assert read_preprocessing(path)["downsample"] == 2
    moving, fixed = (np.asarray(nib.load(f).dataobj, np.float32) for f in (moving_file, fixed_file))
    assert moving.shape == (160, 192, 160)
    inputs = {
        "serving_default.moving": (3.0 * moving + 100.0)[None, ..., None],
        "serving_default.fixed": (0.5 * fixed - 20.0)[None, ..., None],
    }
    displacement = run_with_c_api(path, inputs, tmp_path)["serving_default.displacement"][0]
    assert np.abs(displacement - reference).mean() < 0.02
    labels = np.asarray(nib.load(labels_file).dataobj)
    warp_inputs = {
        "warp.image": labels.astype(np.float32)[None, ..., None],
        "warp.displacement": displacement[None],
    }
    warped = run_with_c_api(path, warp_inputs, tmp_path)["warp.warped"][0, ..., 0]
    fixed_labels = np.asarray(nib.load(fixed_labels_file).dataobj)
    served = np.nanmean(list(dice(warped.astype(labels.dtype), fixed_labels).values()))
    expected = np.nanmean(list(dice(reference_labels, fixed_labels).values()))
    assert abs(served - expected) < 0.003


# --- what --model accepts ------------------------------------------------------------------


def _small_2d():
    return make_model((16, 16), int_steps=0, enc_features=(4, 4), dec_features=(4, 4, 4))


def test_command_line_exports_a_run_folder_with_its_config(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    RAW_CONFIG.save(run / "config.json")
    model = _small_2d()
    model.save(run / "best.keras")
    base = tmp_path / "models"
    assert main(["--model", str(run), "--base-dir", str(base), "--untiled"]) == 0
    version = base / "vxm" / "1"
    assert capsys.readouterr().out.strip() == str(version)
    record = read_preprocessing(version)
    assert record["config"] == str(run / "config.json") and record["downsample"] == 2
    assert (version / "saved_model.pb").is_file()


def test_command_line_refuses_a_saved_model_and_corrupt_or_missing_files(tmp_path, capsys):
    export_dir = export_saved_model(_small_2d(), tmp_path / "first", tiled=False)
    capsys.readouterr()
    base = tmp_path / "models"
    for given in (export_dir, export_dir.parent):  # a version folder, a folder of versions
        assert main(["--model", str(given), "--base-dir", str(base)]) == 2
        err = capsys.readouterr().err
        assert f"error: {given} is a SavedModel export ({export_dir})" in err
        assert "needs the trained .keras model or the training run folder" in err
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"PK\x03\x04 truncated")
    assert main(["--model", str(corrupt), "--base-dir", str(base)]) == 2
    err = capsys.readouterr().err
    assert f"The model file {corrupt} exists but is not a readable Keras model" in err
    missing = tmp_path / "run"  # neither a file nor a folder
    assert main(["--model", str(missing), "--base-dir", str(base)]) == 2
    assert f"error: Model not found: {missing}" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--model", str(empty), "--base-dir", str(base)]) == 2
    assert f"error: {empty} is not a model" in capsys.readouterr().err
    assert not base.exists()
