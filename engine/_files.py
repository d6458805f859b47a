"""Atomic file writes: the one place in ``engine`` that replaces a file.

State that must survive (checkpoints, engine configs, run logs, written volumes) is
written to a temporary file in the destination folder, flushed and fsynced, renamed
over the target (an atomic rename on POSIX and Windows), and the folder is
fsynced. A reader sees the old file or the new one, never a half-written one; a
write that fails at any point leaves the old file untouched and no temporary behind.

    atomic_write(path, "text")               # str: UTF-8
    atomic_write(path, b"bytes")             # bytes
    atomic_write(path, lambda tmp: lib.save(obj, tmp), suffix=".nii.gz")  # a writer
    commit_file(tmp, dest)                   # a finished temporary into place
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import Callable, Optional, Union

from .errors import DataError

__all__ = ["atomic_write", "commit_file", "fsync_dir"]

PathLike = Union[str, "os.PathLike[str]"]
Payload = Union[str, bytes, Callable[[str], None]]


def fsync_dir(folder: PathLike) -> None:
    """fsync a folder so a rename in it survives a crash (a no-op where the
    filesystem refuses directory fsync; the rename itself is still atomic)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path: PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _new_file_mode(dest: Path) -> int:
    """Mode for a replaced file: the old file's, else 0o666 minus the umask
    (``mkstemp`` creates 0o600 files, which would hide results from other users)."""
    with contextlib.suppress(OSError):
        return stat.S_IMODE(os.stat(dest).st_mode)
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    return 0o644


def commit_file(tmp: PathLike, dest: PathLike, *, sync_dir: bool = True) -> Path:
    """Move the finished temporary file ``tmp`` over ``dest`` (same folder): fsync
    the file, rename, fsync the folder. Returns ``dest`` as a Path."""
    dest = Path(dest)
    _fsync_file(tmp)
    os.replace(tmp, dest)
    if sync_dir:
        fsync_dir(dest.parent if str(dest.parent) else ".")
    return dest


def atomic_write(
    path: PathLike, payload: Payload, *, suffix: Optional[str] = None, mkdir: bool = False, mode: Optional[int] = None
) -> Path:
    """Write ``payload`` (text, bytes, or ``writer(tmp_path)`` that fills the file)
    to ``path`` atomically; see the module docstring.

    ``suffix``: the temporary file's suffix (writers that pick the format from the
    file name need the real one, e.g. ``.nii.gz``). ``mkdir``: create the folder
    when missing (else :class:`~engine.errors.DataError`). ``mode``: the file's
    permissions (default: the replaced file's, else 0o666 minus the umask; secrets pass
    0o600). Returns ``path``.
    """
    dest = Path(path)
    folder = dest.parent if str(dest.parent) else Path(".")
    if mkdir:
        folder.mkdir(parents=True, exist_ok=True)
    elif not folder.is_dir():
        raise DataError(f"{dest}: folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{dest.name}.", suffix=suffix or ".tmp")
    try:
        if callable(payload):
            os.close(fd)
            fd = -1
            payload(tmp)
        else:
            data = payload.encode() if isinstance(payload, str) else bytes(payload)
            with os.fdopen(fd, "wb") as f:
                fd = -1
                f.write(data)
                f.flush()
        os.chmod(tmp, _new_file_mode(dest) if mode is None else mode)
        commit_file(tmp, dest)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return dest
