"""`RunFolder`: the files of one training run, for the trainer that writes them and the tools
that read them (registration, evaluation, export, the benchmarks).

Layout (written by `vxmtf.training.train`):

    <run>/config.json          the resolved `RunConfig` (rebuilds the run)
    <run>/last.keras           the registration model (`VxmDense`) after the last epoch
    <run>/best.keras           ... after the epoch with the best monitored loss
    <run>/best.json            that epoch and its loss (a resumed run keeps its best)
    <run>/history.csv          one row of losses per epoch
    <run>/logs/                TensorBoard logs
    <run>/state/               weights + optimizer for `--resume` (`TrainingState`)
    <run>/export/vxm/<N>/      SavedModel versions for TF Serving (`vxmtf.export`)

A model may also travel without its run: a `.keras` file with `<name>.config.json` beside it
(as in `pretrained/`), or an exported SavedModel whose run folder is a few levels up.
`resolve_model_path` and `find_run_config` find what a path names; this module imports no
TensorFlow.
"""

from __future__ import annotations

import csv
from pathlib import Path

from vxmtf.training.config import RunConfig

__all__ = ["RunFolder", "find_run_config", "load_run_config", "resolve_model_path"]

#: Folders above a SavedModel version searched for the run's `config.json`
#: (`<run>/export/<name>/<version>` -> `<run>` is three levels up).
CONFIG_LEVELS = 3


class RunFolder:
    """The files of a training run in `path` (see the module docstring); nothing is created.

    Attributes:
        path: the folder. `config`, `last`, `best`, `best_record`, `history`, `logs`, `state`,
            `export`: the paths of its parts.
    """

    CONFIG = "config.json"
    LAST = "last.keras"
    BEST = "best.keras"

    def __init__(self, path):
        self.path = Path(path)
        self.config = self.path / self.CONFIG
        self.last = self.path / self.LAST
        self.best = self.path / self.BEST
        self.best_record = self.path / "best.json"
        self.history = self.path / "history.csv"
        self.logs = self.path / "logs"
        self.state = self.path / "state"
        self.export = self.path / "export"

    def __repr__(self):
        return f"RunFolder({str(self.path)!r})"

    def holds_run(self) -> bool:
        """Whether a run was started here (its `config.json` exists)."""
        return self.config.is_file()

    def model(self) -> Path | None:
        """`best.keras`, else `last.keras`, else None."""
        for path in (self.best, self.last):
            if path.is_file():
                return path
        return None

    def load_config(self) -> RunConfig:
        """The run's `RunConfig` (`load_run_config`)."""
        return load_run_config(self.config)

    def save_config(self, config: RunConfig) -> None:
        config.save(self.config)

    def read_history(self) -> tuple[list[int], dict[str, list[float]]]:
        """`(steps, columns)`: the optimizer step after each logged epoch (`(epoch + 1) *
        steps_per_epoch` of the run's configuration) and each column of `history.csv` (empty
        cells are NaN).

        Raises:
            FileNotFoundError: the folder has no history.csv or config.json.
            ValueError: history.csv has no `epoch` column or no rows, or config.json is bad.
        """
        for path in (self.history, self.config):
            if not path.is_file():
                raise FileNotFoundError(
                    f"Expected a training run folder with {path.name}. Received: {self.path}"
                )
        steps_per_epoch = self.load_config().train.steps_per_epoch
        with open(self.history, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if not rows or "epoch" not in rows[0]:
            raise ValueError(f"Expected epoch rows in {self.history}. Received: {len(rows)} rows")
        steps = [(int(row["epoch"]) + 1) * steps_per_epoch for row in rows]
        columns = {
            name: [float(row[name]) if row[name] else float("nan") for row in rows]
            for name in rows[0]
            if name != "epoch"
        }
        return steps, columns


def load_run_config(path) -> RunConfig:
    """Reads a run's `config.json`, naming the file in any error.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a run configuration (not JSON, unknown or bad fields).
    """
    return RunConfig.load(path)


def resolve_model_path(path) -> Path:
    """The model file or SavedModel version folder that `path` names.

    Accepts a `.keras` file, a SavedModel folder (holding `saved_model.pb`), a folder of numbered
    SavedModel versions (`<base>/<name>`; the largest number wins, as TF Serving does), or a
    training run folder holding `best.keras` (else `last.keras`).

    Raises:
        FileNotFoundError: nothing exists at `path`.
        ValueError: `path` exists but is none of the above.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Model not found: {path}")
    if path.is_file():
        if path.suffix == ".keras":
            return path
    elif (path / "saved_model.pb").is_file():
        return path
    else:
        versions = [
            p for p in path.iterdir() if p.name.isdigit() and (p / "saved_model.pb").is_file()
        ]
        if versions:
            return max(versions, key=lambda p: int(p.name))
        model = RunFolder(path).model()
        if model is not None:
            return model
    raise ValueError(
        f"{path} is not a model: expected a .keras file, a SavedModel folder (holding "
        "saved_model.pb), a folder of numbered SavedModel versions or a training run folder "
        f"(holding best.keras). Received: model={path}"
    )


def find_run_config(model_path) -> Path | None:
    """The `config.json` of the run that produced a model, or None.

    Looked for next to a `.keras` file (`<name>.config.json` first, so that several shipped
    models can share a folder, as in `pretrained/`, then `config.json`), and in a SavedModel
    version folder and up to `CONFIG_LEVELS` folders above it (`<run>/export/<name>/<version>`).
    """
    path = Path(model_path)
    if path.is_file() and path.with_suffix(".config.json").is_file():
        return path.with_suffix(".config.json")
    folders = [path.parent] if path.is_file() else [path, *path.parents[:CONFIG_LEVELS]]
    for folder in folders:
        if RunFolder(folder).holds_run():
            return RunFolder(folder).config
    return None
