"""Spool files, the one way they are written and removed: a spooled request (store/sqlite.py)
and a ZIP job's extracted entries (jobs.py) are written whole and fsynced before anything
points at them, under a directory descriptor, never through a symlink and never over an
existing file, so a crash leaves a complete file or none that counts."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

_SPOOL_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def write_synced(dir_fd: int, name: str, chunks: Iterable[bytes]) -> None:
    """Creates `name` in the directory `dir_fd` (mode 0600) with `chunks`, fsynced."""
    out = os.open(name, _SPOOL_FLAGS, 0o600, dir_fd=dir_fd)
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                view = view[os.write(out, view):]
        os.fsync(out)
    finally:
        os.close(out)


def remove_tree(path: Path, ignore_errors: bool = False) -> None:
    """Removes a spool folder or file (a symlink itself, never what it points to); a missing
    one is already removed."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=ignore_errors)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
