"""Atomic checkpoints: saved models and the resumable training state.

Every file is written through `vxmtf.atomic.atomic_path`: a run killed at any moment leaves either
the previous good file or the new one, never a truncated one. Nothing with a non-finite weight is
ever saved: a non-finite loss stops the run (`StopOnNonFiniteLoss`), and each saver checks the
weights first (`check_finite_weights`).
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import NamedTuple

import keras
import numpy as np

from vxmtf.atomic import atomic_path, atomic_write_text

logger = logging.getLogger(__name__)

__all__ = [
    "ModelSaver",
    "NonFiniteError",
    "Position",
    "StateCallback",
    "StopOnNonFiniteLoss",
    "TrainingState",
    "atomic_save_model",
    "atomic_write_text",
    "check_finite_weights",
    "non_finite_weights",
]

# epoch-EEEEEE[-batch-BBBBBB]-step-SSSSSSS.weights.h5; files without `batch` were written before
# it was recorded (see `TrainingState.batches_done`).
_STATE = re.compile(r"^epoch-(\d+)(?:-batch-(\d+))?-step-(\d+)\.weights\.h5$")


class NonFiniteError(ValueError):
    """Training produced a non-finite loss or weight; nothing from that step on is saved."""


class Position(NamedTuple):
    """Where a run stands: `epoch` epochs completed, then `batch` steps into the next one;
    `step` optimizer iterations in all."""

    epoch: int
    step: int
    batch: int


def non_finite_weights(model: keras.Model) -> list[str]:
    """The paths of the weights of `model` that hold a NaN or an infinity."""
    return [
        weight.path
        for weight in model.weights
        if not np.isfinite(np.asarray(keras.ops.convert_to_numpy(weight), np.float32)).all()
    ]


def check_finite_weights(model: keras.Model, what, step: int | None = None) -> None:
    """Raises `NonFiniteError` naming `what` (the file about to be written) when a weight of
    `model` is NaN or infinite."""
    bad = non_finite_weights(model)
    if bad:
        when = f" after step {step}" if step is not None else ""
        raise NonFiniteError(
            f"Not saving {what}: {len(bad)} weight(s) of the model are not finite{when} "
            f"(first: {bad[0]}). Expected finite weights; the training diverged. Lower the "
            "learning rate (--lr) or check the data for non-finite voxels."
        )


def atomic_save_model(model: keras.Model, path: Path) -> None:
    """`model.save(path)` through a temporary `.keras` file in the same folder."""
    with atomic_path(path, suffix=".keras") as temporary:
        model.save(temporary)


class TrainingState:
    """The resumable state of a run in `<model_dir>/state/`: weights + optimizer per checkpoint.

    Files are named `epoch-EEEEEE-batch-BBBBBB-step-SSSSSSS.weights.h5`: `E` epochs completed
    and `B` steps into the next one (0 at an epoch's end), `S` optimizer steps in all; written
    atomically, the newest complete file wins and older ones are pruned. Files named without
    the batch (`epoch-EEEEEE-step-SSSSSSS.weights.h5`, from earlier versions) are read too.
    """

    def __init__(self, folder, keep: int = 2):
        self.folder = Path(folder)
        self.keep = keep

    def checkpoints(self) -> list[tuple[int, int, Path]]:
        """`(epochs completed, optimizer steps, path)` of each checkpoint, oldest first."""
        if not self.folder.is_dir():
            return []
        found = []
        for path in self.folder.iterdir():
            match = _STATE.match(path.name)
            if match:
                found.append((int(match.group(1)), int(match.group(3)), path))
        return sorted(found)

    def latest(self) -> tuple[int, int, Path] | None:
        found = self.checkpoints()
        return found[-1] if found else None

    @staticmethod
    def batches_done(path, steps_per_epoch: int | None = None) -> int:
        """Steps into its epoch that the checkpoint at `path` was written (0 at an epoch's end).

        Read from the file name; for a name without it (earlier versions, which named a
        mid-epoch state after the epoch it belonged to), inferred as `step - epoch *
        steps_per_epoch` when that lies strictly inside an epoch, else 0 (a run whose optimizer
        steps count from 0 at `steps_per_epoch` steps an epoch, as every run does unless an
        earlier version resumed it mid-epoch).
        """
        match = _STATE.match(Path(path).name)
        if match is None:
            raise ValueError(f"Expected a training state file name. Received: {path}")
        if match.group(2) is not None:
            return int(match.group(2))
        if not steps_per_epoch:
            return 0
        into = int(match.group(3)) - int(match.group(1)) * steps_per_epoch
        return into if 0 < into < steps_per_epoch else 0

    def save(self, model: keras.Model, epoch: int, step: int, batch: int = 0) -> Path:
        """Writes the state of `model` (weights and optimizer) after `epoch` epochs and `batch`
        steps of the next (`step` optimizer steps in all).

        Raises:
            NonFiniteError: a weight of `model` is not finite (nothing is written).
        """
        path = self.folder / f"epoch-{epoch:06d}-batch-{batch:06d}-step-{step:07d}.weights.h5"
        check_finite_weights(model, path, step)
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, suffix=".weights.h5") as temporary:
            model.save_weights(temporary)  # model and optimizer variables
        for _, _, old in self.checkpoints()[: -self.keep]:
            old.unlink(missing_ok=True)
        record = {"epoch": epoch, "batch": batch, "step": step}
        atomic_write_text(self.folder / "latest.json", json.dumps(record))
        return path

    def restore(self, model: keras.Model, steps_per_epoch: int | None = None) -> Position:
        """Loads the newest state into a compiled `model`; returns where the run stands
        (`Position(0, 0, 0)` without a state). `steps_per_epoch` (of the run that wrote it)
        places states from earlier versions inside their epoch (`batches_done`)."""
        latest = self.latest()
        if latest is None:
            return Position(0, 0, 0)
        epoch, step, path = latest
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(path)
        batch = self.batches_done(path, steps_per_epoch)
        logger.info("Resumed from %s (epoch %d, batch %d, step %d)", path, epoch, batch, step)
        return Position(epoch, step, batch)


class StateCallback(keras.callbacks.Callback):
    """Saves the training state at each epoch end (and every `every` steps into an epoch if > 0).

    A mid-epoch state records how many steps into its epoch it was written, so that a resumed
    run finishes that epoch with its remaining steps only. `start_batch` is where the first
    epoch of this `fit` starts (a resumed run finishing an interrupted epoch); the cadence of
    `every` counts from the epoch's start.
    """

    def __init__(
        self, state: TrainingState, every: int = 0, writer: bool = True, start_batch: int = 0
    ):
        super().__init__()
        self.state = state
        self.every = every
        self.writer = writer
        self.start_batch = start_batch
        self._epoch = 0
        self._offset = start_batch

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        done = self._offset + batch + 1
        last = batch + 1 == (self.params or {}).get("steps")  # the epoch's end saves it
        if self.every and done % self.every == 0 and not last:
            self._save(self._epoch, done)

    def on_epoch_end(self, epoch, logs=None):
        self._offset = 0
        self._save(epoch + 1, 0)

    def _save(self, epochs_done, batch):
        if self.writer:
            step = int(self.model.optimizer.iterations.numpy())
            self.state.save(self.model, epochs_done, step, batch)


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training with `NonFiniteError` at the first step whose loss is NaN or infinite.

    Keras's `TerminateOnNaN` only asks `fit` to stop, which still ends the epoch (and so saves
    it); this raises before any later callback sees the step. Put it first in the list.
    """

    def __init__(self, state_folder=None):
        super().__init__()
        self.state_folder = state_folder
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or math.isfinite(float(loss)):
            return
        step = int(self.model.optimizer.iterations.numpy())
        kept = ""
        if self.state_folder is not None:
            latest = TrainingState(self.state_folder).latest()
            kept = (
                f" The last good state is {latest[2]} (step {latest[1]}): --resume continues "
                "from it, a lower --lr allowed."
                if latest is not None
                else " No state was saved before it: --resume starts the run afresh."
            )
        raise NonFiniteError(
            f"Training stopped at step {step} (epoch {self._epoch + 1}, step {batch + 1} of "
            f"the epoch): the loss is not finite. Expected a finite loss. Received: "
            f"loss={float(loss)}. Nothing from this step on was saved.{kept} Lower the "
            "learning rate (--lr) or check the data for non-finite voxels."
        )


class ModelSaver(keras.callbacks.Callback):
    """Saves the registration model (not the training wrapper) as `last.keras` and `best.keras`."""

    def __init__(self, model_to_save, folder, monitor="loss", writer=True):
        super().__init__()
        self.model_to_save = model_to_save
        self.folder = Path(folder)
        self.monitor = monitor
        self.writer = writer
        self.best = float("inf")
        record = self.folder / "best.json"
        if record.is_file():  # a resumed run keeps its best so far
            self.best = float(json.loads(record.read_text()).get(monitor, self.best))

    def on_epoch_end(self, epoch, logs=None):
        if not self.writer:
            return
        check_finite_weights(self.model_to_save, self.folder / "last.keras")
        atomic_save_model(self.model_to_save, self.folder / "last.keras")
        value = (logs or {}).get(self.monitor)
        if value is not None and value < self.best:
            self.best = float(value)
            atomic_save_model(self.model_to_save, self.folder / "best.keras")
            atomic_write_text(
                self.folder / "best.json",
                json.dumps({"epoch": epoch + 1, self.monitor: self.best}) + "\n",
            )
