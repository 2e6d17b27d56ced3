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
    <run>/.lock                held (`fcntl.flock`) by the training writing the folder

A model may also travel without its run: a `.keras` file with `<name>.config.json` beside it
(as in `pretrained/`), or an exported SavedModel whose run folder is a few levels up.
`resolve_model_path` and `find_run_config` find what a path names; this module imports no
TensorFlow.

One training at a time writes a folder: `RunFolder.claim` takes an exclusive lock on
`<run>/.lock` before anything else is written and holds it for the run. The lock belongs to the
process: the system drops it when the process ends, however it ends (a `SIGKILL` included), so a
killed run leaves no stale lock in the way of `--resume`.
"""

from __future__ import annotations

import contextlib
import csv
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from vxmtf.training.config import RunConfig

try:
    import fcntl
except ImportError:  # not a POSIX system: folders are not locked
    fcntl = None

__all__ = [
    "RunFolder",
    "RunFolderBusyError",
    "RunFolderError",
    "find_run_config",
    "load_run_config",
    "resolve_model_path",
]


class RunFolderError(OSError):
    """The model folder cannot be used: it cannot be created or written."""


class RunFolderBusyError(RunFolderError):
    """Another training holds the model folder (`RunFolder.claim`)."""


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
    LOCK = ".lock"

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
        self.lock = self.path / self.LOCK

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

    @contextlib.contextmanager
    def claim(self) -> Iterator[RunFolder]:
        """Holds the folder for one training run, for the duration of the `with` block.

        Creates the folder (and its missing parents) and takes an exclusive lock on `.lock`
        inside it, the first thing a run writes; a second claim, from this process or another,
        fails at once while the lock is held. On exit the lock file is removed, and so are the
        folders this claim created if they are still empty (a run that failed its checks leaves
        nothing behind). The lock is `fcntl.flock` on the open file, which the system releases
        when the process ends, however it ends: a lock file left by a killed run does not
        block the next claim.

        Raises:
            RunFolderBusyError: another training holds the folder.
            RunFolderError: the folder cannot be created or written (permissions, a read-only
                file system, a file in its place or in its path).
        """
        created = _make_folders(self.path)
        try:
            descriptor = _lock(self.lock, self.path)
        except BaseException:
            _remove_empty(created)
            raise
        try:
            yield self
        finally:
            # Unlink while holding the lock: a claim that opened the old file before the unlink
            # sees that its file is no longer `.lock` (`_lock`) and opens the new one.
            with contextlib.suppress(OSError):
                self.lock.unlink()
            if descriptor is not None:
                os.close(descriptor)
            _remove_empty(created)

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


def _not_writable(path: Path, error: OSError) -> RunFolderError:
    reason = error.strerror or str(error)
    where = f" ({error.filename})" if error.filename and str(error.filename) != str(path) else ""
    return RunFolderError(
        f"Cannot write the model folder {path}: {reason}{where}. Expected a folder this user "
        f"can create and write in (--model-dir). Received: model_dir={path}"
    )


def _make_folders(path: Path) -> list[Path]:
    """Creates `path` and its missing parents; returns the folders it created, outermost first.

    Raises:
        RunFolderError: a folder cannot be created, or `path` is not a folder.
    """
    missing = []
    folder = path
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    created = []
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            continue  # made meanwhile by someone else: not ours to remove
        except OSError as error:
            _remove_empty(created)
            raise _not_writable(path, error) from None
        created.append(folder)
    if not path.is_dir():
        raise RunFolderError(
            f"Cannot use {path} as the model folder: it is not a folder. Expected a folder "
            f"(--model-dir). Received: model_dir={path}"
        )
    return created


def _remove_empty(folders: list[Path]) -> None:
    """Removes `folders` (outermost first) that are empty, innermost first."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            return  # not empty (or gone): neither it nor its parents are removed


def _lock(path: Path, folder: Path) -> int | None:
    """Opens `path` and takes an exclusive, non-blocking `flock` on it; returns the descriptor
    (None where `fcntl` is missing), with this process named in the file."""
    if fcntl is None:
        return None
    for _ in range(10):
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:  # the folder was removed by a claim that just ended
            _make_folders(folder)
            continue
        except OSError as error:
            raise _not_writable(folder, error) from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 200, 0).decode(errors="replace").strip()
            os.close(descriptor)
            raise RunFolderBusyError(
                f"The model folder {folder} is in use: another training holds it"
                f"{f' ({holder})' if holder else ''}. Expected a folder no other training "
                "is writing: wait for that run to end (then --resume continues it), or choose "
                f"another model folder. Nothing was written. Received: model_dir={folder}"
            ) from None
        except OSError as error:  # a file system without locks
            os.close(descriptor)
            raise RunFolderError(
                f"Cannot lock the model folder {folder} ({error.strerror}): its file system "
                f"does not support file locks. Received: model_dir={folder}"
            ) from None
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        opened = os.fstat(descriptor)
        if current is not None and (current.st_ino, current.st_dev) == (
            opened.st_ino,
            opened.st_dev,
        ):
            os.ftruncate(descriptor, 0)
            os.write(descriptor, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
            return descriptor
        os.close(descriptor)  # locked a file that its holder removed on release: try again
    raise RunFolderBusyError(
        f"Could not claim the model folder {folder}: other trainings keep taking it. "
        f"Received: model_dir={folder}"
    )


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
