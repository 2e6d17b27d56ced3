"""Atomic checkpoints: saved models and the resumable training state.

Every file is written through `vxmtf.atomic.atomic_path`: a run killed at any moment leaves either
the previous good file or the new one, never a truncated one.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import keras

from vxmtf.atomic import atomic_path, atomic_write_text

logger = logging.getLogger(__name__)

__all__ = [
    "ModelSaver",
    "StateCallback",
    "TrainingState",
    "atomic_save_model",
    "atomic_write_text",
]

_STATE = re.compile(r"^epoch-(\d+)-step-(\d+)\.weights\.h5$")


def atomic_save_model(model: keras.Model, path: Path) -> None:
    """`model.save(path)` through a temporary `.keras` file in the same folder."""
    with atomic_path(path, suffix=".keras") as temporary:
        model.save(temporary)


class TrainingState:
    """The resumable state of a run in `<model_dir>/state/`: weights + optimizer per checkpoint.

    Files are named `epoch-EEEEEE-step-SSSSSSS.weights.h5` (epochs completed, optimizer steps),
    written atomically; the newest complete file wins and older ones are pruned.
    """

    def __init__(self, folder, keep: int = 2):
        self.folder = Path(folder)
        self.keep = keep

    def checkpoints(self) -> list[tuple[int, int, Path]]:
        if not self.folder.is_dir():
            return []
        found = []
        for path in self.folder.iterdir():
            match = _STATE.match(path.name)
            if match:
                found.append((int(match.group(1)), int(match.group(2)), path))
        return sorted(found)

    def latest(self) -> tuple[int, int, Path] | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def save(self, model: keras.Model, epoch: int, step: int) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"epoch-{epoch:06d}-step-{step:07d}.weights.h5"
        with atomic_path(path, suffix=".weights.h5") as temporary:
            model.save_weights(temporary)  # model and optimizer variables
        for _, _, old in self.checkpoints()[: -self.keep]:
            old.unlink(missing_ok=True)
        atomic_write_text(self.folder / "latest.json", json.dumps({"epoch": epoch, "step": step}))
        return path

    def restore(self, model: keras.Model) -> tuple[int, int]:
        """Load the newest state into a compiled `model`; returns (epochs done, steps done)."""
        latest = self.latest()
        if latest is None:
            return 0, 0
        epoch, step, path = latest
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(path)
        logger.info("Resumed from %s (epoch %d, step %d)", path, epoch, step)
        return epoch, step


class StateCallback(keras.callbacks.Callback):
    """Saves the training state at each epoch end (and every `every` steps if > 0).

    Mid-epoch states resume at the start of that epoch with the optimizer's progress kept; the
    epoch counter in the file name says which epoch the state belongs to.
    """

    def __init__(self, state: TrainingState, every: int = 0, writer: bool = True):
        super().__init__()
        self.state = state
        self.every = every
        self.writer = writer
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.every and (batch + 1) % self.every == 0:
            self._save(self._epoch)

    def on_epoch_end(self, epoch, logs=None):
        self._save(epoch + 1)

    def _save(self, epochs_done):
        if self.writer:
            step = int(self.model.optimizer.iterations.numpy())
            self.state.save(self.model, epochs_done, step)


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
        atomic_save_model(self.model_to_save, self.folder / "last.keras")
        value = (logs or {}).get(self.monitor)
        if value is not None and value < self.best:
            self.best = float(value)
            atomic_save_model(self.model_to_save, self.folder / "best.keras")
            atomic_write_text(
                self.folder / "best.json",
                json.dumps({"epoch": epoch + 1, self.monitor: self.best}) + "\n",
            )
