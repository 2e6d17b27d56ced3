"""`vxmtf.training.train`: outputs, resume, atomic files, distribution."""

import csv
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import keras
import nibabel as nib
import numpy as np
import pytest

from vxmtf.networks import VxmDense
from vxmtf.training import DataConfig, ModelConfig, RunConfig, TrainConfig, train
from vxmtf.training.checkpoint import NonFiniteError, TrainingState, atomic_save_model
from vxmtf.training.trainer import build_training_model

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("run_worker.py")
TINY = ModelConfig(enc_features=(4, 8, 8, 8), dec_features=(8, 8, 8, 8, 8, 4, 4), int_steps=3)


def tiny_config(model_dir, **train_kwargs):
    values = {"model_dir": str(model_dir), "epochs": 2, "steps_per_epoch": 3, "lr": 1e-3}
    values.update(train_kwargs)
    return RunConfig(
        data=DataConfig(synthetic_shape=(32, 32), val_pairs=2),
        model=TINY,
        train=TrainConfig(**values),
    )


def test_train_writes_models_logs_config_and_export(tmp_path):
    result = train(tiny_config(tmp_path / "run"))
    run = tmp_path / "run"
    for name in ("config.json", "last.keras", "best.keras", "history.csv", "best.json"):
        assert (run / name).is_file(), name
    assert (run / "logs").is_dir()
    assert result.export_path is not None and (result.export_path / "saved_model.pb").is_file()
    assert result.export_path.parent.name == "vxm" and result.export_path.name == "1"
    rows = list(csv.DictReader((run / "history.csv").read_text().splitlines()))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert {"loss", "val_loss", "moved_loss", "preint_flow_loss"} <= set(rows[0])
    assert RunConfig.load(run / "config.json") == tiny_config(run)
    loaded = keras.models.load_model(run / "last.keras")
    x = [np.random.default_rng(0).uniform(size=(1, 32, 32, 1)).astype(np.float32)] * 2
    np.testing.assert_allclose(
        loaded(x)["displacement"].numpy(), result.model(x)["displacement"].numpy(), atol=1e-6
    )


def test_semi_supervised_and_bidirectional(tmp_path):
    config = tiny_config(tmp_path / "run", seg_weight=0.5, epochs=1, export=False)
    config.model = ModelConfig(**{**TINY.__dict__, "bidir": True})
    result = train(config)
    assert {"moved_seg_loss", "inverse_moved_loss"} <= set(result.history)
    assert np.isfinite(result.history["loss"]).all()


def test_refuses_to_overwrite_and_checks_architecture(tmp_path):
    train(tiny_config(tmp_path / "run", epochs=1, export=False))
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_config(tmp_path / "run", epochs=1, export=False))
    other = tiny_config(tmp_path / "run", epochs=2, export=False, resume=True)
    other.model = ModelConfig(**{**TINY.__dict__, "int_steps": 0})
    with pytest.raises(ValueError, match="architecture"):
        train(other)


def test_resume_restores_weights_and_optimizer(tmp_path):
    run = tmp_path / "run"
    first = train(tiny_config(run, epochs=1, export=False))
    state = TrainingState(run / "state")
    epoch, step, _ = state.latest()
    assert (epoch, step) == (1, 3)
    resumed = train(tiny_config(run, epochs=3, export=False, resume=True))
    assert resumed.initial_epoch == 1
    assert state.latest()[:2] == (3, 3 + 2 * 3)  # optimizer iterations continued from 3
    assert len(resumed.history["loss"]) == 2
    rows = list(csv.DictReader((run / "history.csv").read_text().splitlines()))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert not np.allclose(first.model.get_layer("flow").get_weights()[0], 0)


def test_cosine_schedule_falls_from_lr_to_a_hundredth_over_the_run(tmp_path):
    config = tiny_config(tmp_path / "run", epochs=4, steps_per_epoch=5, lr_schedule="cosine")
    optimizer = build_training_model(config, (32, 32)).compile().optimizer
    total = 4 * 5
    for step in (0, 5, 10, 19, 20, 35):
        optimizer.iterations.assign(step)
        # Half cosine from 1e-3 to 1e-5 at step 20, then constant (written out, not Keras').
        t = min(step, total) / total
        expected = 1e-3 * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t)))
        assert float(optimizer.learning_rate) == pytest.approx(expected, rel=1e-5), step
    constant_config = tiny_config(tmp_path / "c", lr_schedule="constant")
    constant = build_training_model(constant_config, (32, 32)).compile().optimizer
    constant.iterations.assign(15)
    assert float(constant.learning_rate) == pytest.approx(1e-3, rel=1e-6)
    with pytest.raises(ValueError, match="lr_schedule.*Received: lr_schedule='linear'"):
        TrainConfig(lr_schedule="linear")


def test_warmup_rises_linearly_then_follows_the_schedule_over_the_remaining_steps(tmp_path):
    # Written out, not Keras': lr * t / W for t < W, then the constant rate or the half cosine
    # from lr at step W to lr / 100 at the run's last step T.
    lr, warmup, total = 1e-3, 4, 4 * 5
    for schedule in ("cosine", "constant"):
        config = tiny_config(
            tmp_path / schedule,
            epochs=4,
            steps_per_epoch=5,
            lr_schedule=schedule,
            warmup_steps=warmup,
        )
        optimizer = build_training_model(config, (32, 32)).compile().optimizer
        for step in (0, 1, 3, 4, 5, 12, 19, 20, 30):
            optimizer.iterations.assign(step)
            if step < warmup:
                expected = lr * step / warmup
            elif schedule == "constant":
                expected = lr
            else:
                t = min(step - warmup, total - warmup) / (total - warmup)
                expected = lr * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t)))
            got = float(optimizer.learning_rate)
            assert got == pytest.approx(expected, rel=1e-5, abs=1e-12), (schedule, step)
    assert RunConfig.from_dict(config.to_dict()).train.warmup_steps == warmup


def test_warmup_steps_must_be_an_int_below_the_run_length(tmp_path):
    with pytest.raises(ValueError, match="warmup_steps.*int >= 0.*Received: warmup_steps=-1"):
        TrainConfig(warmup_steps=-1)
    with pytest.raises(ValueError, match="warmup_steps.*Received: warmup_steps=2.5"):
        TrainConfig(warmup_steps=2.5)
    with pytest.raises(ValueError, match=r"fewer than the run's steps.*2 x 3 = 6.*warmup_steps=6"):
        tiny_config(tmp_path, warmup_steps=6)
    assert tiny_config(tmp_path, warmup_steps=5).train.warmup_steps == 5


def test_defaults_depend_on_the_data_and_yield_to_explicit_values():
    # Files: VoxelMorph's recipe (Balakrishnan et al., TMI 2019: Adam 1e-4, lambda 1 with NCC,
    # 0.01 with MSE). The synthetic data: the first run's tuned recipe.
    files = RunConfig(data=DataConfig(data="d.json")).train
    assert (files.lr, files.lr_schedule, files.steps_per_epoch) == (1e-4, "constant", 50)
    assert files.reg_weight == 1.0
    mse = RunConfig(data=DataConfig(data="d.json"), train=TrainConfig(image_loss="mse")).train
    assert mse.reg_weight == 0.01
    synthetic = RunConfig().train
    assert (synthetic.lr, synthetic.lr_schedule, synthetic.steps_per_epoch) == (2e-3, "cosine", 300)
    assert synthetic.reg_weight == 0.3
    assert RunConfig(train=TrainConfig(image_loss="mse")).train.reg_weight == 0.01
    explicit = TrainConfig(lr=5e-4, lr_schedule="constant", steps_per_epoch=7, reg_weight=2.0)
    chosen = RunConfig(train=explicit).train
    assert (chosen.lr, chosen.lr_schedule, chosen.steps_per_epoch) == (5e-4, "constant", 7)
    assert chosen.reg_weight == 2.0
    assert RunConfig(train=TrainConfig(reg_weight=0.0)).train.reg_weight == 0.0  # not "unset"


def test_a_run_saved_before_lr_schedule_existed_resumes_at_a_constant_rate(tmp_path):
    saved = RunConfig().to_dict()
    del saved["train"]["lr_schedule"]  # the config.json of a run from before the option
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert RunConfig.load(tmp_path / "config.json").train.lr_schedule == "constant"
    RunConfig().save(tmp_path / "new.json")  # today's synthetic default is saved and kept
    assert RunConfig.load(tmp_path / "new.json").train.lr_schedule == "cosine"


def test_a_synthetic_run_saved_before_the_deformation_options_keeps_its_data(tmp_path):
    from vxmtf.training.data import synthetic_source

    saved = RunConfig(data=DataConfig(synthetic_shape=(40, 32, 48))).to_dict()
    del saved["data"]["synthetic_deformation"], saved["data"]["synthetic_smoothness"]
    (tmp_path / "old.json").write_text(json.dumps(saved))
    old = synthetic_source(RunConfig.load(tmp_path / "old.json"))
    # The generator's defaults of then: 0.056 and 1/4 of the smallest size (32).
    assert old.deformation == pytest.approx(1.792) and old.smoothness == pytest.approx(8.0)
    RunConfig(data=DataConfig(synthetic_shape=(40, 32, 48))).save(tmp_path / "new.json")
    new = synthetic_source(RunConfig.load(tmp_path / "new.json"))
    assert new.deformation == pytest.approx(0.044 * 32) and new.smoothness == pytest.approx(16.0)
    files = RunConfig(data=DataConfig(data="d.json")).to_dict()
    del files["data"]["synthetic_deformation"]
    (tmp_path / "files.json").write_text(json.dumps(files))
    assert RunConfig.load(tmp_path / "files.json").data.synthetic_deformation is None


def test_init_weights_starts_a_diffeomorphic_run_from_a_plain_model(tmp_path):
    plain = tiny_config(tmp_path / "plain", epochs=1, export=False)
    plain.model = ModelConfig(**{**TINY.__dict__, "int_steps": 0})
    plain_model = train(plain).model
    source = plain_model.get_weights()
    # Adam moves each weight by about lr per step: with lr 1e-9 the run keeps its start.
    run = train(
        tiny_config(
            tmp_path / "diffeo",
            epochs=1,
            export=False,
            lr=1e-9,
            init_weights=str(tmp_path / "plain" / "last.keras"),
        )
    )
    assert run.model.int_steps == TINY.int_steps
    for got, want in zip(run.model.get_weights(), source, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)
    fresh = train(tiny_config(tmp_path / "fresh", epochs=1, export=False, lr=1e-9)).model
    want = plain_model.get_layer("flow").get_weights()[0]
    assert not np.allclose(fresh.get_layer("flow").get_weights()[0], want, atol=1e-6)


def test_init_weights_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.keras"
    with pytest.raises(FileNotFoundError, match="nope.keras"):
        train(tiny_config(tmp_path / "a", epochs=1, export=False, init_weights=str(missing)))
    wide = tiny_config(tmp_path / "wide", epochs=1, export=False)
    wide.model = ModelConfig(**{**TINY.__dict__, "enc_features": (4, 8, 8, 16)})
    train(wide)
    with pytest.raises(ValueError, match="do not fit"):
        train(
            tiny_config(
                tmp_path / "b",
                epochs=1,
                export=False,
                init_weights=str(tmp_path / "wide" / "last.keras"),
            )
        )
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.keras"):
        train(tiny_config(tmp_path / "c", epochs=1, export=False, init_weights=str(junk)))


def test_atomic_writes_keep_the_good_file(tmp_path, monkeypatch):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    path = tmp_path / "m.keras"
    atomic_save_model(model, path)
    good = path.read_bytes()

    def broken_save(self, filepath, *args, **kwargs):
        Path(filepath).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(keras.Model, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save_model(model, path)
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keras"]


def run_worker(out, model_dir, which, batch, env=None):
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(out), str(model_dir), which, str(batch)],
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process, timeout=600):
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]


def weights(path):
    data = np.load(path)
    return int(data["replicas"]), [data[k] for k in data.files if k.startswith("arr_")]


@pytest.mark.slow
def test_mirrored_two_replicas_match_one(tmp_path):
    """2 replicas x batch 1 == 1 replica x batch 2 after 4 steps, same seed and global batch."""
    two = run_worker(tmp_path / "two.npz", tmp_path / "two", "two-cpus", 1)
    finish(two)
    one = run_worker(tmp_path / "one.npz", tmp_path / "one", "one-cpu", 2)
    finish(one)
    replicas_two, w_two = weights(tmp_path / "two.npz")
    replicas_one, w_one = weights(tmp_path / "one.npz")
    assert (replicas_two, replicas_one) == (2, 1)
    moved = 0.0
    for a, b in zip(w_two, w_one, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
        moved = max(moved, float(np.abs(a).max()))
    assert moved > 0


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_multi_worker_mirrored_on_localhost(tmp_path):
    ports = [free_port(), free_port()]
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    workers = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        workers.append(
            run_worker(
                tmp_path / f"w{index}.npz",
                tmp_path / f"w{index}",
                "auto",
                1,
                {"TF_CONFIG": tf_config},
            )
        )
    for process in workers:
        finish(process)
    replicas0, w0 = weights(tmp_path / "w0.npz")
    replicas1, w1 = weights(tmp_path / "w1.npz")
    assert replicas0 == replicas1 == 2
    for a, b in zip(w0, w1, strict=True):
        np.testing.assert_array_equal(a, b)
    assert (tmp_path / "w0" / "last.keras").is_file()  # the chief writes
    assert not (tmp_path / "w1" / "last.keras").exists()  # the other worker does not


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_state(tmp_path):
    run = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "train",
        "--synthetic-shape",
        "32",
        "32",
        "--enc",
        "4",
        "8",
        "8",
        "8",
        "--dec",
        "8",
        "8",
        "8",
        "8",
        "8",
        "4",
        "4",
        "--int-steps",
        "3",
        "--epochs",
        "4",
        "--steps-per-epoch",
        "6",
        "--save-every",
        "2",
        "--no-export",
        "--model-dir",
        str(run),
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    state = TrainingState(run / "state")
    deadline = time.time() + 300
    while time.time() < deadline:
        latest = state.latest()
        if latest is not None and latest[0] >= 1:  # at least one whole epoch saved
            break
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    epoch, step, _ = state.latest()
    assert epoch < 4, "the run finished before it could be killed"
    for _, _, path in state.checkpoints():  # every file under a final name is complete
        with h5py.File(path, "r") as f:
            assert len(f.keys()) > 0
    resumed = subprocess.run(args + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final_epoch, final_step, _ = state.latest()
    assert final_epoch == 4
    # Optimizer iterations restored, not restarted; a mid-epoch state resumes at its step, so
    # the killed run takes as many steps as one that was not killed.
    assert final_step == 4 * 6
    rows = list(csv.DictReader((run / "history.csv").read_text().splitlines()))
    assert [int(r["epoch"]) for r in rows][-1] == 3
    keras.models.load_model(run / "last.keras")


class Killed(Exception):
    """Stands for the process being killed, right after a state was saved."""


def kill_after_step(monkeypatch, kill_step):
    save = TrainingState.save

    def save_then_die(self, model, epoch, step, batch=0):
        path = save(self, model, epoch, step, batch)
        if step == kill_step:
            raise Killed(step)
        return path

    monkeypatch.setattr(TrainingState, "save", save_then_die)


@pytest.mark.parametrize(("kill_step", "old_name"), [(2, False), (6, True)])
def test_a_run_killed_mid_epoch_resumes_at_its_step(tmp_path, monkeypatch, kill_step, old_name):
    """2 epochs of 4 steps, killed right after the state of step 2 (in epoch 1) or 6 (in epoch
    2): the resumed run takes the steps left, 8 in all, as an unkilled run does (not 8 + the
    steps of the interrupted epoch done before the kill)."""
    run = tmp_path / "run"

    def config(**kwargs):
        config = tiny_config(run, export=False, save_every=2, steps_per_epoch=4, **kwargs)
        config.data.val_pairs = 0
        return config

    kill_after_step(monkeypatch, kill_step)
    with pytest.raises(Killed):
        train(config())
    monkeypatch.undo()
    assert not (run / ".lock").exists()  # released by the failed run
    state = TrainingState(run / "state")
    epoch, step, path = state.latest()
    assert (epoch, step, TrainingState.batches_done(path)) == (kill_step // 4, kill_step, 2)
    if old_name:  # as versions before the batch was recorded named it
        path.rename(path.with_name(f"epoch-{epoch:06d}-step-{step:07d}.weights.h5"))
    resumed = train(config(resume=True))
    assert (resumed.initial_epoch, resumed.initial_batch) == (kill_step // 4, 2)
    assert state.latest()[:2] == (2, 8)
    rows = list(csv.DictReader((run / "history.csv").read_text().splitlines()))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert len(resumed.history["loss"]) == 2 - kill_step // 4


def test_a_non_finite_loss_stops_the_run_and_saves_nothing_bad(tmp_path):
    run = tmp_path / "run"
    # Adam's first steps move each weight by about lr: 1e30 overflows by the second step.
    config = tiny_config(run, epochs=2, steps_per_epoch=4, save_every=1, lr=1e30)
    config.data.val_pairs = 0
    with pytest.raises(NonFiniteError, match=r"Training stopped at step (\d+)") as error:
        train(config)
    step = int(re.search(r"step (\d+)", str(error.value)).group(1))
    assert 1 < step <= 8 and "loss=" in str(error.value)
    for name in ("last.keras", "best.keras", "best.json", "export"):
        assert not (run / name).exists(), name
    for _, saved, path in TrainingState(run / "state").checkpoints():
        assert saved < step
        with h5py.File(path, "r") as f:
            arrays = []
            f.visititems(
                lambda _, obj, found=arrays: (
                    found.append(obj[()]) if isinstance(obj, h5py.Dataset) else None
                )
            )
            assert arrays and all(np.isfinite(a).all() for a in arrays if a.dtype.kind == "f")
    assert not (run / ".lock").exists()


def test_failed_checks_leave_no_trace_and_the_corrected_run_works(tmp_path):
    run = tmp_path / "run"
    wide = VxmDense((32, 32), enc_features=(4, 8, 8, 16), dec_features=TINY.dec_features)
    wide.save(tmp_path / "wide.keras")
    one = tmp_path / "one"
    one.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((32, 32), np.float32), np.eye(4)), one / "a.nii.gz")
    bad = []
    for changes in ({"int_steps": -1}, {"enc_features": (0, 8, 8, 8)}):
        config = tiny_config(run, epochs=1, export=False)
        config.model = ModelConfig(**{**TINY.__dict__, **changes})
        bad.append(config)
    for init in (tmp_path / "missing.keras", tmp_path / "wide.keras"):
        bad.append(tiny_config(run, epochs=1, export=False, init_weights=str(init)))
    one_scan = tiny_config(run, epochs=1, export=False)
    one_scan.data = DataConfig(data=str(one), val_pairs=0)
    bad.append(one_scan)
    for config in bad:
        with pytest.raises((ValueError, FileNotFoundError)):
            train(config)
        assert not run.exists(), config  # nothing written, not even the folder
    run.mkdir()  # a folder that existed stays, empty
    for config in bad:
        with pytest.raises((ValueError, FileNotFoundError)):
            train(config)
        assert list(run.iterdir()) == []
    train(tiny_config(run, epochs=1, export=False))  # the corrected run, without resume
    assert (run / "config.json").is_file() and (run / "last.keras").is_file()
