"""Whole-or-nothing writes of files and folders, for libraries and the platform alike.

A write goes to a temporary sibling in the destination's folder (same filesystem, so the final rename is
atomic), is flushed to disk, and is renamed into place; the folder is then synced so the rename itself
survives a crash. A reader sees the old content or the new, never half of one; on any failure the
temporary is removed and the destination is left as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alloyml.errors import InvalidInputError


def _fsync_path(path: Path) -> None:
    """Flush a file's data, or a folder's entries (a rename is only durable once its folder is synced)."""
    flags = (os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if path.is_dir() else os.O_RDONLY
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path`, replacing any file there; the parent folder must exist."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_path(path.parent)


@contextmanager
def atomic_directory(out_dir: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder beside `out_dir`; when the block succeeds it becomes `out_dir` (a
    previous `out_dir` is replaced as a whole), when it raises it is removed and `out_dir` is untouched.

    A non-empty `out_dir` is refused, before the block runs, unless `overwrite=True`."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"output directory {out} is a file; expected a directory or a new path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InvalidInputError(f"output directory {out} exists and is not empty (pass overwrite=True)")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
    try:
        yield staging
        for folder, _, files in os.walk(staging):
            for name in files:
                _fsync_path(Path(folder) / name)
            _fsync_path(Path(folder))
        _swap_in(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _fsync_path(out.parent)


def _swap_in(staging: Path, out: Path) -> None:
    """Rename `staging` to `out`; an existing `out` is moved aside first and put back if the rename fails.
    (POSIX has no atomic exchange of two folders, so there is an instant with no `out` at all.)"""
    if not out.exists():
        staging.rename(out)
        return
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
    old.rmdir()  # only its unique name is needed
    out.rename(old)
    try:
        staging.rename(out)
    except BaseException:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)
