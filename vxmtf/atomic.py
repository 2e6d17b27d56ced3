"""Atomic writes: a file or folder appears complete at its destination, or not at all.

Everything the package writes for a user (volumes, checkpoints, models, reports, figures,
SavedModel versions) goes through `atomic_path`: the data are written under a hidden temporary
name in the destination's own folder, then moved into place with one `os.replace` (`os.rename`
for a folder that must not exist yet), which POSIX file systems perform atomically. A run killed
at any moment leaves the previous file or the new one, never a truncated one, and a failed write
leaves no temporary behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_text"]


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
    temporary = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"
    try:
        yield temporary
        if directory:
            if path.exists():  # another writer finished first
                raise FileExistsError(errno.EEXIST, "Refusing to replace a folder", str(path))
            os.rename(temporary, path)
        else:
            mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
            with contextlib.suppress(OSError):
                os.chmod(temporary, mode)
            os.replace(temporary, path)
    finally:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()


def atomic_write_text(path, text: str) -> Path:
    """Writes a text file atomically (flushed to disk before it replaces `path`)."""
    with atomic_path(path) as temporary:
        with open(temporary, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    return Path(path)
