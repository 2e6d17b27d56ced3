"""`python -m train` (train/__main__.py): command-line options reach the run."""

import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest

from train.__main__ import build_parser, config_from_args, main
from vxmtf.training import DataConfig, RunConfig, TrainConfig, TrainResult
from vxmtf.training.run_folder import RunFolder

ROOT = Path(__file__).resolve().parents[1]


def parse(*argv):
    return config_from_args(build_parser().parse_args(list(argv)))


def test_warmup_steps_option(tmp_path, capsys):
    assert parse().train.warmup_steps == 0
    assert parse("--warmup-steps", "50").train.warmup_steps == 50
    run = tmp_path / "run"
    assert main(["--warmup-steps", "-3", "--model-dir", str(run)]) == 2
    assert "argument --warmup-steps" in capsys.readouterr().err
    # Longer than the run: refused before anything is written.
    args = ["--warmup-steps", "10", "--epochs", "1", "--steps-per-epoch", "10"]
    assert main([*args, "--model-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert "warmup_steps" in err and "1 x 10 = 10" in err and "Received: warmup_steps=10" in err
    assert not run.exists()


def test_recompute_flag_sets_the_train_config():
    assert parse().train.recompute is False
    assert parse("--recompute").train.recompute is True
    # A switch of how gradients are computed, not of the architecture.
    assert parse("--recompute").model == parse().model


def test_lr_schedule_option(tmp_path, capsys):
    # The data's defaults: the first run's tuned cosine on the synthetic data, VoxelMorph's
    # constant rate with files; an explicit option wins over either.
    assert parse().train.lr_schedule == "cosine"
    assert parse("--data", "d.json").train.lr_schedule == "constant"
    assert parse("--lr-schedule", "constant").train.lr_schedule == "constant"
    assert parse("--data", "d.json", "--lr-schedule", "cosine").train.lr_schedule == "cosine"
    run = tmp_path / "run"
    assert main(["--lr-schedule", "linear", "--model-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert "argument --lr-schedule" in err and "'linear'" in err and "cosine" in err
    assert not run.exists()


def test_synthetic_deformation_options_reach_the_generator():
    from vxmtf.training.data import synthetic_source

    default = synthetic_source(parse("--synthetic-shape", "40", "32", "48"))
    assert default.deformation == pytest.approx(0.044 * 32)  # of the smallest size
    assert default.smoothness == pytest.approx(16.0)
    chosen = parse("--synthetic-deformation", "2.5", "--synthetic-smoothness", "6")
    source = synthetic_source(chosen)
    assert (source.deformation, source.smoothness) == (2.5, 6.0)
    assert (chosen.data.synthetic_deformation, chosen.data.synthetic_smoothness) == (2.5, 6.0)
    with pytest.raises(ValueError, match="synthetic_smoothness.*Received: synthetic_smoothness=0"):
        DataConfig(synthetic_smoothness=0)
    with pytest.raises(ValueError, match="synthetic_deformation.*Received"):
        DataConfig(synthetic_deformation=float("nan"))


def test_recompute_flag_reaches_the_trained_model(tmp_path, monkeypatch):
    # main() sets these only when unset; pin them so that the test leaves the environment as
    # it found it.
    for name, default in (("TF_ENABLE_ONEDNN_OPTS", "1"), ("TF_CPP_MIN_LOG_LEVEL", "1")):
        monkeypatch.setenv(name, os.environ.get(name, default))
    run = tmp_path / "run"
    argv = ["--synthetic-shape", "32", "32", "--enc", "4", "8", "--dec", "8", "8", "4"]
    argv += ["--int-steps", "2", "--epochs", "1", "--steps-per-epoch", "2", "--no-export"]
    argv += ["--recompute", "--model-dir", str(run)]
    assert main(argv) == 0
    assert RunConfig.load(run / "config.json").train.recompute is True
    model = keras.models.load_model(run / "last.keras")
    assert model.recompute is True and model.get_layer("unet").recompute is True


TINY_ARGS = ["--synthetic-shape", "32", "32", "--enc", "4", "8", "--dec", "8", "8", "4"]
TINY_ARGS += ["--int-steps", "2", "--epochs", "1", "--steps-per-epoch", "2", "--no-export"]


@pytest.mark.parametrize(
    ("argv", "option", "expected"),
    [
        (["--lr", "nan"], "--lr", "finite number > 0"),
        (["--lr", "inf"], "--lr", "finite number > 0"),
        (["--lr", "0"], "--lr", "finite number > 0"),
        (["--lr=-1e-4"], "--lr", "finite number > 0"),
        (["--save-every", "-5"], "--save-every", "integer >= 0"),
        (["--lambda", "nan"], "--lambda", "finite number >= 0"),
        (["--seg-weight", "-1"], "--seg-weight", "finite number >= 0"),
        (["--synthetic-deformation", "-1"], "--synthetic-deformation", "finite number >= 0"),
        (["--synthetic-smoothness", "0"], "--synthetic-smoothness", "finite number > 0"),
    ],
)
def test_bad_numbers_are_usage_errors(tmp_path, capsys, argv, option, expected):
    run = tmp_path / "run"
    assert main([*argv, "--model-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and expected in err
    assert not run.exists()


def test_library_configs_refuse_the_same_numbers():
    for values in ({"lr": float("nan")}, {"lr": float("inf")}, {"save_every": -5}):
        with pytest.raises(ValueError, match=next(iter(values))):
            TrainConfig(**values)
    with pytest.raises(ValueError, match="Loss weights"):
        TrainConfig(reg_weight=float("nan"))


@pytest.mark.parametrize("option", ["--atlas", "--labels"])
def test_atlas_or_labels_without_data_is_an_error(tmp_path, capsys, option):
    run = tmp_path / "run"
    assert main([option, "somewhere", "--model-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and option in err and "--data" in err
    assert "Received: " + option + "=somewhere" in err
    assert not run.exists()


def test_an_unwritable_model_dir_is_reported_before_the_data(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    # A path under a regular file cannot be created, not even by root.
    code = main(["--data", str(tmp_path / "missing"), "--model-dir", str(blocker / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Cannot write the model folder") and str(blocker / "run") in err
    assert "Traceback" not in err and "missing" not in err.split("Received")[0]


def test_a_held_model_dir_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    with RunFolder(run).claim():  # another training (another open file: flock refuses it)
        assert main([*TINY_ARGS, "--model-dir", str(run)]) == 2
        assert sorted(p.name for p in run.iterdir()) == [".lock"]
    err = capsys.readouterr().err
    assert "another training holds it" in err and str(run) in err
    assert not run.exists()


def test_the_best_model_is_printed_only_when_written(tmp_path, capsys, monkeypatch):
    import vxmtf.training

    run = tmp_path / "run"
    run.mkdir()
    (run / "last.keras").write_bytes(b"")
    result = TrainResult(None, {}, run, None, 0, 1.0, best_path=None)
    monkeypatch.setattr(vxmtf.training, "train", lambda config: result)
    assert main(["--model-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"Trained model: {run / 'last.keras'}" in out and "(best:" not in out
    result.best_path = run / "best.keras"
    assert main(["--model-dir", str(run)]) == 0
    assert f"(best: {run / 'best.keras'})" in capsys.readouterr().out


@pytest.mark.slow
def test_two_trainings_started_together_into_one_folder(tmp_path):
    run = tmp_path / "run"
    args = [sys.executable, "-m", "train", *TINY_ARGS, "--model-dir", str(run)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    processes = [
        subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=600), *p.communicate()) for p in processes]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, _, err in results if code == 2)
    assert "another training holds it" in refused and str(run) in refused
    assert (run / "last.keras").is_file() and not (run / ".lock").exists()
