"""Atomic writes: a file or folder appears complete at its destination, or not at all.

Everything the package writes for a user (volumes, checkpoints, models, reports, figures,
SavedModel versions) goes through `atomic_path`: the data are written under a hidden temporary
name in the destination's own folder, then moved into place with one `os.replace` (`os.rename`
for a folder that must not exist yet), which POSIX file systems perform atomically. A run killed
at any moment leaves the previous file or the new one, never a truncated one, and a failed write
leaves no temporary behind. `atomic_paths` does the same for several files that belong together
(the outputs of one registration): all are written first, then all are moved into place.

A new file gets the mode `open()` would give it (`0o666` without the bits of the process's
umask: `0o644` under the usual umask 022); a replaced file keeps its own mode.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

__all__ = ["atomic_path", "atomic_paths", "atomic_write_text", "check_writable", "new_file_mode"]


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (`/proc`)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread safe, but brief)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The permission bits of a file created now by `open()`: `0o666 & ~umask`."""
    return 0o666 & ~_umask()


def _temporary(path: Path, suffix: str) -> Path:
    return path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"


def _move_file(temporary: Path, path: Path) -> None:
    """`os.replace(temporary, path)`, the result with `path`'s mode (or a new file's)."""
    mode = path.stat().st_mode & 0o777 if path.exists() else new_file_mode()
    with contextlib.suppress(OSError):
        os.chmod(temporary, mode)
    os.replace(temporary, path)


def _remove(temporary: Path) -> None:
    if temporary.is_dir():
        shutil.rmtree(temporary, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


@contextlib.contextmanager
def atomic_path(path, suffix: str = "", directory: bool = False) -> Iterator[Path]:
    """A temporary path to write `path`'s contents to; moved to `path` when the block succeeds.

    Args:
        path: the destination. Its folder is created if missing.
        suffix: the temporary name's ending (writers that choose the format from the name,
            such as nibabel (`.nii.gz`), Keras (`.keras`) or matplotlib (`.png`), need it).
        directory: the destination is a folder, written whole inside the block (for example a
            SavedModel). It must not exist yet: a folder is never replaced.

    Yields:
        The temporary `Path` (not created for a file; the writer creates it).

    Raises:
        FileExistsError: `directory` and `path` exists (before or after the block).
        Whatever the block raises; the temporary file or folder is removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if directory and path.exists():
        raise FileExistsError(errno.EEXIST, "Refusing to replace a folder", str(path))
    temporary = _temporary(path, suffix)
    try:
        yield temporary
        if directory:
            if path.exists():  # another writer finished first
                raise FileExistsError(errno.EEXIST, "Refusing to replace a folder", str(path))
            os.rename(temporary, path)
        else:
            _move_file(temporary, path)
    finally:
        _remove(temporary)


def _ending(path: Path) -> str:
    """The last two suffixes of a name (`.nii.gz`, `.txt`): what writers choose formats by."""
    return "".join(path.suffixes[-2:])


@contextlib.contextmanager
def atomic_paths(paths: Mapping, replace: bool = True) -> Iterator[dict]:
    """Temporary paths for several files written together: all are moved into place after the
    block succeeds, none if it fails.

    Every destination's temporary lies in its own folder and ends as the destination does (its
    last two suffixes, such as `.nii.gz`), so writers that choose the format from the name
    work on it. The moves are one `os.replace` each, made one after the other once every file
    is written: a failure while writing (an unwritable folder, a full disk, an exception of
    the block) leaves every destination as it was.

    Args:
        paths: name -> destination file (entries whose destination is None are skipped).
            Missing folders are created.
        replace: False refuses to replace a destination that exists when the files are moved
            (`FileExistsError`, and nothing is moved).

    Yields:
        name -> temporary `Path` (not created; the writer creates it).

    Raises:
        FileExistsError: `replace` is False and a destination exists.
        Whatever the block raises; every temporary is removed first.
    """
    destinations = {name: Path(path) for name, path in paths.items() if path is not None}
    temporaries = {}
    try:
        for name, path in destinations.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            temporaries[name] = _temporary(path, _ending(path))
        yield dict(temporaries)
        missing = [str(destinations[n]) for n, t in temporaries.items() if not t.exists()]
        if missing:
            raise FileNotFoundError(
                f"Expected every file of the group written before moving them into place. "
                f"Received: nothing written for {', '.join(missing)}"
            )
        if not replace:
            for path in destinations.values():
                if path.exists():
                    raise FileExistsError(errno.EEXIST, "Refusing to replace a file", str(path))
        for name, temporary in temporaries.items():
            _move_file(temporary, destinations[name])
    finally:
        for temporary in temporaries.values():
            _remove(temporary)


def check_writable(path, name: str = "path") -> Path:
    """Raises unless a file can be written at `path` (its folder, or the nearest existing folder
    above it when missing folders will be created, is a writable folder) and `path` is not a
    folder. Returns `path` as a `Path`.

    Raises:
        IsADirectoryError: `path` is a folder.
        NotADirectoryError: a file stands where a folder above `path` is needed.
        PermissionError: that folder cannot be written.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"Cannot write {name}: expected a file name, not a folder. Received: {name}={path}"
        )
    folder = path.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(
            f"Cannot write {name}: {folder} is a file, not a folder. Received: {name}={path}"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(
            f"Cannot write {name}: the folder {folder} is not writable. Received: {name}={path}"
        )
    return path


def atomic_write_text(path, text: str) -> Path:
    """Writes a text file atomically (flushed to disk before it replaces `path`)."""
    with atomic_path(path) as temporary:
        with open(temporary, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    return Path(path)
