"""`vxmtf_cli`: `run_main` turns oneDNN on for `python -m vxmtf.<tool>` unless the user chose."""

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow  # noqa: F401  (as in `python -m vxmtf.<tool>`: imported before main)

import vxmtf_cli as launch

ROOT = Path(__file__).resolve().parents[1]


class Exec(Exception):
    """Raised by the fake `os.execv` so that the test sees the call and stops there."""


def fake_execv(path, args):
    raise Exec(path, args, os.environ.get(launch.ONEDNN))


@pytest.fixture
def argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["ignored", "--model", "m.keras"])
    monkeypatch.setattr(os, "execv", fake_execv)
    # `run_main` sets the defaults in `os.environ` itself (`prepare_environment`): record each
    # variable's state first, so that the test's changes are undone even for a variable that
    # was unset (a bare `delenv` of an unset variable records nothing to restore).
    for name in launch.ENVIRONMENT:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def test_restarts_with_onednn_when_it_is_off_and_unset(argv, monkeypatch):
    monkeypatch.setattr(launch, "onednn_enabled", lambda: False)
    with pytest.raises(Exec) as call:
        launch.run_main("vxmtf.register", lambda: pytest.fail("main ran before the restart"))
    path, args, value = call.value.args
    assert path == sys.executable
    assert args == [sys.executable, "-m", "vxmtf.register", "--model", "m.keras"]
    assert value == "1"


@pytest.mark.parametrize(("user", "enabled"), [("0", False), ("1", True), (None, True)])
def test_runs_main_in_place_otherwise(argv, monkeypatch, user, enabled):
    if user is not None:
        monkeypatch.setenv(launch.ONEDNN, user)
    monkeypatch.setattr(launch, "onednn_enabled", lambda: enabled)
    with pytest.raises(SystemExit) as exit_:
        launch.run_main("vxmtf.register", lambda: 3)
    assert exit_.value.code == 3
    assert os.environ.get(launch.ONEDNN) == user  # the user's choice is left as it was


def test_reports_this_process_setting(start_environment):
    # TensorFlow decided at import, from the environment this test process started with (not
    # today's `os.environ`: tests that run a tool's `main` set the variable since).
    expected = start_environment.get(launch.ONEDNN)
    enabled = launch.onednn_enabled()
    assert enabled in (True, False)
    if expected in ("0", "1"):
        assert enabled == (expected == "1")


@pytest.mark.slow
@pytest.mark.parametrize("value", ["0", "1"])
def test_a_fresh_process_follows_the_variable(value):
    code = "from vxmtf_cli import onednn_enabled; print(onednn_enabled())"
    env = {**os.environ, launch.ONEDNN: value, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.stdout.strip().splitlines()[-1] == str(value == "1")


def test_help_shows_defaults_of_options_that_have_one():
    parser = argparse.ArgumentParser(formatter_class=launch.HelpFormatter)
    parser.add_argument("--out", default="runs/eval", help="output folder")
    parser.add_argument("--shape", type=int, nargs="+", default=[48, 48], help="size")
    parser.add_argument("--model", required=True, help="a model")
    parser.add_argument("--figures", action="store_true", help="figures")
    parser.add_argument("--config", help="a config")
    text = " ".join(parser.format_help().split())
    assert "output folder (default: runs/eval)" in text
    assert "size (default: 48 48)" in text
    assert "a model (default" not in text and "figures (default" not in text
    assert "a config (default" not in text


def _python(code, *argv):
    env = {k: v for k, v in os.environ.items() if k not in (launch.ONEDNN, launch.LOG_LEVEL)}
    return subprocess.run(
        [sys.executable, "-c", code, *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_normal_start_prints_nothing_of_tensorflow_and_verbose_shows_it():
    code = (
        "import sys, vxmtf_cli; vxmtf_cli.start(sys.argv[1:]);"
        "import tensorflow as tf; print(float(tf.reduce_sum(tf.ones(3))))"
    )
    quiet = _python(code)
    assert quiet.returncode == 0 and quiet.stdout.strip() == "3.0"
    assert quiet.stderr.strip() == "", quiet.stderr[-2000:]
    verbose = _python(code, "-v")
    assert verbose.returncode == 0 and "I0000" in verbose.stderr  # TensorFlow's own log


def test_console_scripts_are_installed_and_list_defaults():
    script = shutil.which("vxmtf-export")
    if script is None:
        pytest.skip("vxmtf is not installed with its console scripts (pip install -e .)")
    out = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0
    help_text = " ".join(out.stdout.split())
    assert "--base-dir" in help_text and "(default: vxm)" in help_text
    for name in ("vxmtf-train", "vxmtf-register", "vxmtf-evaluate"):
        assert shutil.which(name), name


def test_help_shows_no_default_for_flags():
    parser = argparse.ArgumentParser(formatter_class=launch.HelpFormatter)
    parser.add_argument("--no-export", dest="export", action="store_false", help="skip export")
    parser.add_argument("--fast", action="store_const", const=2, default=1, help="go fast")
    parser.add_argument("--loud", action="count", default=0, help="louder")
    parser.add_argument("--steps", type=int, default=3, help="steps")
    text = " ".join(parser.format_help().split())
    for help_text in ("skip export", "go fast", "louder"):
        assert f"{help_text} (default" not in text, help_text
    assert "steps (default: 3)" in text


@pytest.mark.parametrize(
    "module", ["train.__main__", "vxmtf.register", "evaluate.dice", "vxmtf.export"]
)
def test_no_command_prints_a_flag_default(module, capsys):
    import importlib

    main = importlib.import_module(module).main
    try:
        code = main(["--help"])
    except SystemExit as exit_:  # a tool that lets argparse exit
        code = exit_.code
    assert code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--help" in text or "usage:" in text
    assert "(default: True)" not in text and "(default: False)" not in text


@pytest.mark.parametrize("module", ["vxmtf.register", "vxmtf.export"])
def test_python_m_of_a_tool_inside_the_package_prints_nothing_of_tensorflow(module):
    # `python -m vxmtf.<tool>` imports `vxmtf` (and with it TensorFlow) before the tool's module
    env = {k: v for k, v in os.environ.items() if k not in (launch.ONEDNN, launch.LOG_LEVEL)}
    real = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert real.returncode == 0 and "usage:" in real.stdout
    assert real.stderr.strip() == "", real.stderr[-2000:]


@pytest.mark.parametrize("module", ["train.__main__", "vxmtf.register", "evaluate.dice"])
def test_every_option_with_a_default_shows_it_in_help(module):
    import importlib

    parser = importlib.import_module(module).build_parser()
    formatter = parser._get_formatter()
    for action in parser._actions:
        flag = isinstance(action, launch._FLAG_ACTIONS) or action.nargs == 0
        if flag or action.required or action.default in (None, argparse.SUPPRESS):
            continue
        text = formatter._expand_help(action) if action.help else ""
        assert "default" in text, f"{module} {action.option_strings}: {text!r}"


def test_precision_choices_are_the_library_precisions():
    # vxmtf_cli may not import Keras, so it spells the choices out; they must not drift apart
    from vxmtf.networks.loading import PRECISIONS

    parser = argparse.ArgumentParser()
    launch.add_registration_arguments(parser)
    action = next(a for a in parser._actions if a.dest == "precision")
    assert tuple(action.choices) == tuple(PRECISIONS)
    assert action.default in PRECISIONS


def test_refinement_options_reach_the_refine_config():
    parser = argparse.ArgumentParser()
    launch.add_registration_arguments(parser)
    args = parser.parse_args(
        "--refine-steps 50 --refine-full-steps 4 --refine-full-fine-steps 7 "
        "--refine-full-lambda 0.5 --refine-lr 0.2".split()
    )
    from vxmtf.refine import RefineConfig

    refine = RefineConfig(**launch.registration_options(args)["refine"])
    assert (refine.steps, refine.full_steps, refine.full_fine_steps) == (50, 4, 7)
    assert (refine.full_reg_weight, refine.learning_rate) == (0.5, 0.2)
    plain = RefineConfig(**launch.registration_options(parser.parse_args([]))["refine"])
    assert plain == RefineConfig() and not plain.enabled


@pytest.mark.parametrize(
    "option, value, expected",
    [
        ("--refine-steps", "-1", "an integer >= 0"),
        ("--refine-full-fine-steps", "2.5", "an integer >= 0"),
        ("--refine-lr", "0", "a finite number > 0"),
        ("--refine-full-lambda", "-0.5", "a finite number >= 0"),
        ("--refine-full-lambda", "nan", "a finite number >= 0"),
    ],
)
def test_bad_refinement_options_are_usage_errors_naming_the_option(option, value, expected, capsys):
    parser = argparse.ArgumentParser()
    launch.add_registration_arguments(parser)
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args([option, value])
    assert exit_.value.code == 2
    message = capsys.readouterr().err
    assert option in message and expected in message and repr(value) in message
