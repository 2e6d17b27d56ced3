"""`vxmtf.training.run_folder`: what a run folder holds, and finding a model and its config."""

import json

import pytest

from vxmtf.training.config import RunConfig, TrainConfig
from vxmtf.training.run_folder import RunFolder, find_run_config, resolve_model_path


def test_layout_config_and_history(tmp_path):
    run = RunFolder(tmp_path / "run")
    assert not run.holds_run() and run.model() is None
    run.path.mkdir()
    run.save_config(RunConfig(train=TrainConfig(steps_per_epoch=7)))
    assert run.holds_run() and run.load_config().train.steps_per_epoch == 7
    run.history.write_text("epoch,loss,val_loss\n0,-0.5,\n1,-0.6,-0.55\n")
    steps, columns = run.read_history()
    assert steps == [7, 14]
    assert columns["loss"] == [-0.5, -0.6]
    assert columns["val_loss"][0] != columns["val_loss"][0] and columns["val_loss"][1] == -0.55
    run.last.write_bytes(b"")
    assert run.model() == run.last
    run.best.write_bytes(b"")
    assert run.model() == run.best == resolve_model_path(run.path)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "Could not read the run configuration"),
        (json.dumps({"training": {}}), "Unknown sections"),
        (json.dumps({"train": {"epochs": 0}}), "epochs"),
        (json.dumps({"data": {"bogus": 1}}), "bogus"),
        (json.dumps([1, 2]), "Could not read the run configuration"),
    ],
)
def test_bad_configs_are_named(tmp_path, content, expected):
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=expected) as error:
        RunConfig.load(path)
    assert str(path) in str(error.value)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        RunConfig.load(tmp_path / "missing.json")


def test_config_is_found_above_a_saved_model_export(tmp_path):
    version = tmp_path / "run" / "export" / "vxm" / "3"
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"")
    assert find_run_config(version) is None
    RunFolder(tmp_path / "run").save_config(RunConfig())
    assert find_run_config(version) == tmp_path / "run" / "config.json"
    assert resolve_model_path(tmp_path / "run" / "export" / "vxm") == version


def test_preprocess_comes_from_the_data_config():
    config = RunConfig.from_dict({"data": {"downsample": 2, "normalize": "percentile"}})
    preprocess = config.preprocess()
    assert (preprocess.downsample, preprocess.normalize) == (2, "percentile")
    assert preprocess.multiple == config.model.size_multiple == 16
    assert config.data.preprocess(1).multiple == 1
