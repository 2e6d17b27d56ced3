"""`python -m train` (train/__main__.py): command-line options reach the run."""

import os

import keras

from train.__main__ import build_parser, config_from_args, main
from vxmtf.training import RunConfig


def parse(*argv):
    return config_from_args(build_parser().parse_args(list(argv)))


def test_recompute_flag_sets_the_train_config():
    assert parse().train.recompute is False
    assert parse("--recompute").train.recompute is True
    # A switch of how gradients are computed, not of the architecture.
    assert parse("--recompute").model == parse().model


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
