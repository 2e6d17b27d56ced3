"""`vxmtf.training.checkpoint`: state file names, mid-epoch positions, non-finite guards."""

import h5py
import keras
import numpy as np
import pytest

from vxmtf.training.checkpoint import (
    ModelSaver,
    NonFiniteError,
    StateCallback,
    StopOnNonFiniteLoss,
    TrainingState,
    check_finite_weights,
)


def tiny_model(value=None):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    model.optimizer.build(model.trainable_variables)
    if value is not None:
        kernel, bias = model.get_weights()
        model.set_weights([np.full_like(kernel, value), bias])
    return model


@pytest.mark.parametrize(
    ("name", "steps_per_epoch", "expected"),
    [
        ("epoch-000001-batch-000004-step-0000010.weights.h5", 6, 4),
        ("epoch-000002-batch-000000-step-0000012.weights.h5", 6, 0),
        # Written before the batch was recorded: placed by the steps per epoch.
        ("epoch-000001-step-0000010.weights.h5", 6, 4),  # mid-epoch 2
        ("epoch-000002-step-0000012.weights.h5", 6, 0),  # end of epoch 2
        ("epoch-000000-step-0000050.weights.h5", 100, 50),  # save_every 50 of 100
        ("epoch-000001-step-0000010.weights.h5", None, 0),
    ],
)
def test_batches_done(name, steps_per_epoch, expected):
    assert TrainingState.batches_done(name, steps_per_epoch) == expected


def test_state_names_sort_old_and_new_together(tmp_path):
    state = TrainingState(tmp_path / "state", keep=10)
    model = tiny_model()
    for epoch, step, batch in [(0, 2, 2), (1, 6, 0), (1, 8, 2)]:
        state.save(model, epoch, step, batch)
    (state.folder / "epoch-000001-step-0000007.weights.h5").write_bytes(b"")  # an old name
    assert [(e, s) for e, s, _ in state.checkpoints()] == [(0, 2), (1, 6), (1, 7), (1, 8)]
    assert state.latest()[2].name == "epoch-000001-batch-000002-step-0000008.weights.h5"
    restored = state.restore(tiny_model(), steps_per_epoch=6)
    assert tuple(restored) == (1, 8, 2)


def test_non_finite_weights_are_never_saved(tmp_path):
    bad = tiny_model(np.nan)
    with pytest.raises(NonFiniteError, match="not finite"):
        check_finite_weights(bad, "m.keras")
    check_finite_weights(tiny_model(1.0), "m.keras")
    state = TrainingState(tmp_path / "state")
    with pytest.raises(NonFiniteError, match="epoch-000001"):
        state.save(bad, 1, 3)
    assert state.latest() is None and not (tmp_path / "state" / "latest.json").exists()
    saver = ModelSaver(tiny_model(np.inf), tmp_path)
    with pytest.raises(NonFiniteError, match="last.keras"):
        saver.on_epoch_end(0, {"loss": 1.0})
    assert not (tmp_path / "last.keras").exists() and not (tmp_path / "best.keras").exists()


def test_a_non_finite_loss_stops_at_its_step(tmp_path):
    model = tiny_model()
    guard = StopOnNonFiniteLoss(tmp_path / "state")
    guard.set_model(model)
    guard.on_epoch_begin(2)
    guard.on_train_batch_end(0, {"loss": 0.5})  # finite: nothing happens
    model.optimizer.iterations.assign(17)
    with pytest.raises(NonFiniteError, match=r"step 17 \(epoch 3, step 5 of the epoch\)"):
        guard.on_train_batch_end(4, {"loss": float("nan")})
    with pytest.raises(NonFiniteError, match="loss=inf"):
        guard.on_train_batch_end(4, {"loss": np.float32("inf")})


def test_state_callback_records_the_step_in_the_epoch(tmp_path):
    """A state written mid-epoch says how far into the epoch it is, counting from where a
    resumed epoch started (`start_batch`)."""
    model = tiny_model()
    state = TrainingState(tmp_path / "state", keep=10)
    callback = StateCallback(state, every=2, start_batch=3)
    callback.set_model(model)
    callback.set_params({"steps": 3, "epochs": 2})  # the 3 remaining steps of a 6-step epoch
    callback.on_epoch_begin(1)
    for batch in range(3):
        model.optimizer.iterations.assign(9 + batch + 1)
        callback.on_train_batch_end(batch, {})
    callback.on_epoch_end(1)
    names = [path.name for _, _, path in state.checkpoints()]
    assert names == [
        "epoch-000001-batch-000004-step-0000010.weights.h5",  # step 4 of epoch 2
        "epoch-000002-batch-000000-step-0000012.weights.h5",  # its end (not saved twice)
    ]
    with h5py.File(state.folder / names[0], "r") as f:
        assert len(f.keys()) > 0
