"""The ``--state DIR`` folder: the engine saved atomically, switched by a pointer.

Layout::

    DIR/CURRENT          the name of the slot that holds the latest complete save
    DIR/slots/<name>/    one ``Engine.save`` each (engine.ckpt, config.json)
    DIR/datastore/       images and labels of the MONAI Label subset

A save writes a fresh slot folder (``Engine.save``: temp file, fsync, rename per
file), fsyncs it, then replaces ``CURRENT`` atomically (temp file, fsync, rename,
folder fsync). ``kill -9`` at any instant leaves ``CURRENT`` naming a complete slot:
the one before or the new one. Older slots are removed after the switch (the last
two are kept).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Optional

from .. import errors as E
from .._files import atomic_write, fsync_dir

KEEP = 2


class StateDir:
    """One engine's state folder (see the module docstring)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.slots = self.path / "slots"
        self.datastore = self.path / "datastore"
        self._lock = threading.Lock()

    def current(self) -> Optional[Path]:
        """The slot ``CURRENT`` names, or None for a fresh folder."""
        ptr = self.path / "CURRENT"
        try:
            name = ptr.read_text().strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise E.CheckpointError(f"cannot read {ptr}: {exc}") from exc
        slot = self.slots / name
        if not name or "/" in name or not slot.is_dir():
            raise E.CheckpointError(f"{ptr} names a missing slot {name!r}")
        return slot

    def load(self, config: Any = None, device: Optional[str] = None):
        """The saved engine, or a fresh ``Engine(config)`` when nothing was saved."""
        from ..api import Engine

        self.path.mkdir(parents=True, exist_ok=True)
        slot = self.current()
        if slot is None:
            return Engine(config)
        return Engine.load(slot, device=device)

    def save(self, engine: Any) -> Path:
        """Save ``engine`` into a new slot and switch ``CURRENT`` to it (atomic)."""
        with self._lock:
            self.slots.mkdir(parents=True, exist_ok=True)
            name = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{time.monotonic_ns()}"
            slot = self.slots / name
            engine.save(slot)
            for f in slot.iterdir():
                with contextlib.suppress(OSError):
                    fd = os.open(f, os.O_RDONLY)
                    os.fsync(fd)
                    os.close(fd)
            fsync_dir(slot)
            fsync_dir(self.slots)
            atomic_write(self.path / "CURRENT", name + "\n")  # fsync, atomic rename, fsync the folder
            self._prune(keep_name=name)
            return slot

    def _prune(self, keep_name: str) -> None:
        names = sorted(
            (p.name for p in self.slots.iterdir() if p.is_dir()), key=lambda n: (self.slots / n).stat().st_mtime
        )
        old = [n for n in names if n != keep_name][: max(0, len(names) - KEEP)]
        for n in old:
            shutil.rmtree(self.slots / n, ignore_errors=True)
