"""`vxmtf.training.run_folder`: what a run folder holds, and finding a model and its config."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vxmtf.training.config import RunConfig, TrainConfig
from vxmtf.training.run_folder import (
    RunFolder,
    RunFolderBusyError,
    RunFolderError,
    find_run_config,
    resolve_model_path,
)

ROOT = Path(__file__).resolve().parents[2]


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


def test_claim_locks_the_folder_until_released(tmp_path):
    folder = tmp_path / "a" / "run"
    run = RunFolder(folder)
    with run.claim():
        assert run.lock.is_file() and str(os.getpid()) in run.lock.read_text()
        with pytest.raises(RunFolderBusyError, match="another training holds it") as error:
            with RunFolder(folder).claim():
                pass
        assert str(folder) in str(error.value) and "pid" in str(error.value)
        run.config.write_text("{}")  # the run writes
    assert not run.lock.exists()
    assert run.config.is_file()  # a folder with a run stays
    with RunFolder(folder).claim():  # free again
        pass


def test_claim_leaves_nothing_when_the_run_writes_nothing(tmp_path):
    with RunFolder(tmp_path / "a" / "b").claim():
        assert (tmp_path / "a" / "b").is_dir()
    assert list(tmp_path.iterdir()) == []  # the folders it created are gone
    (tmp_path / "kept").mkdir()
    with RunFolder(tmp_path / "kept").claim():
        pass
    assert (tmp_path / "kept").is_dir() and list((tmp_path / "kept").iterdir()) == []


def test_a_lock_file_left_by_a_killed_run_does_not_block(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    run.lock.write_text("pid 1 on elsewhere\n")  # what SIGKILL leaves: a file nobody locks
    with run.claim():
        assert str(os.getpid()) in run.lock.read_text()


def test_claim_of_an_unwritable_folder_names_it(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    for path in (blocker / "sub", blocker):  # under a file (fails for root too); a file
        with pytest.raises(RunFolderError, match="model folder") as error:
            with RunFolder(path).claim():
                pass
        assert str(path) in str(error.value)
        assert not isinstance(error.value, RunFolderBusyError)
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    try:
        if os.access(readonly, os.W_OK):
            pytest.skip("running as root: a read-only folder stays writable")
        with pytest.raises(RunFolderError, match="Permission denied"):
            with RunFolder(readonly / "run").claim():
                pass
    finally:
        readonly.chmod(0o755)


@pytest.mark.slow  # two Python processes importing TensorFlow
def test_a_second_process_cannot_claim_a_held_folder(tmp_path):
    code = (
        "import sys\n"
        "from vxmtf.training.run_folder import RunFolder, RunFolderBusyError\n"
        "try:\n"
        "    with RunFolder(sys.argv[1]).claim():\n"
        "        print('claimed')\n"
        "except RunFolderBusyError as error:\n"
        "    print('busy:', error)\n"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    folder = tmp_path / "run"

    def claim_in_another_process():
        return subprocess.run(
            [sys.executable, "-c", code, str(folder)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    with RunFolder(folder).claim():
        held = claim_in_another_process()
    assert "busy:" in held.stdout and "another training holds it" in held.stdout, held.stderr
    free = claim_in_another_process()
    assert free.stdout.strip() == "claimed", free.stderr
