"""Resumable run state: a run folder's ``config.json``, each method's JSON log and
its two engine slots.

After every case (offline: every ``offline_eval_every`` steps) the engine is saved
(:meth:`engine.Engine.save`) into one of two slots, ``a`` and ``b``, alternately, and
then the method's JSON log, which names the slot, is replaced atomically. A crash at
any point leaves a log whose slot is complete; a restart with the same output folder
and config resumes after the last logged case and, on the CPU, reproduces the
uninterrupted run's numbers exactly (wall times aside).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Optional

from .._files import atomic_write
from ..errors import DataError, InputError
from .presets import StreamConfig

__all__ = ["LOG_VERSION", "MethodState", "read_json", "check_run_folder"]

LOG_VERSION = 1


def read_json(path: Path) -> Optional[dict]:
    """A JSON file's content; None when it does not exist, DataError when it is bad."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); remove it to start that method again") from exc


class MethodState:
    """A method's folder: the JSON log and the two engine slots (a/b)."""

    def __init__(self, folder: Path, spec_name: str, digest: str) -> None:
        self.folder = folder
        self.path = folder / "log.json"
        self.digest = digest
        log = read_json(self.path)
        if log is not None and (log.get("version") != LOG_VERSION or log.get("digest") != digest):
            raise InputError(
                f"{self.path} belongs to another config (digest {log.get('digest')} != {digest}); "
                f"use another --out folder"
            )
        self.log = log or {
            "version": LOG_VERSION,
            "method": spec_name,
            "digest": digest,
            "slot": None,
            "cases_done": 0,
            "finished": False,
            "cases": [],
            "heldout": [],
            "train_seconds": 0.0,
        }

    @property
    def slot_path(self) -> Optional[Path]:
        """The folder of the engine the log names, or None."""
        slot = self.log.get("slot")
        return None if slot is None else self.folder / slot

    def load_engine(self, device: str, overrides: dict[str, Any]):
        """The engine of the log's slot with the method's run-time ``overrides``, or None."""
        from ..api import Engine

        if self.slot_path is None:
            return None
        eng = Engine.load(self.slot_path, device=device)
        eng.reconfigure(**overrides)
        return eng

    def save(self, eng=None) -> None:
        if eng is not None:
            slot = "b" if self.log.get("slot") == "a" else "a"
            target = self.folder / slot
            if target.exists():
                shutil.rmtree(target)
            eng.save(target)
            self.log["slot"] = slot
        atomic_write(self.path, json.dumps(self.log, indent=1), mkdir=True)

    def drop_spare(self) -> None:
        """Once finished, only the slot the log names is kept (the final engine)."""
        for slot in ("a", "b"):
            if slot != self.log.get("slot") and (self.folder / slot).exists():
                shutil.rmtree(self.folder / slot)


def check_run_folder(out: Path, cfg: StreamConfig, data) -> None:
    """Create ``out/config.json`` or check that it matches ``cfg`` and the data."""
    path = out / "config.json"
    meta = {"version": LOG_VERSION, "digest": cfg.digest(), "stream": cfg.to_dict(), "data": data.meta()}
    old = read_json(path)
    if old is None:
        atomic_write(path, json.dumps(meta, indent=1), mkdir=True)
        return
    mine = cfg.identity()
    theirs = {k: v for k, v in old.get("stream", {}).items() if k not in ("name", "methods")}
    if theirs.get("variant", "none") == "none":  # as StreamConfig.identity: absent means "none"
        theirs.pop("variant", None)
    diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    if (
        diff
        or old.get("data", {}).get("train") != data.meta()["train"]
        or old.get("data", {}).get("test") != data.meta()["test"]
    ):
        what = ", ".join(f"{k}: {theirs.get(k)!r} -> {mine.get(k)!r}" for k in diff) or "the data's cases differ"
        raise InputError(
            f"{out} holds a run with another config ({what}); resume with the same settings or choose another --out"
        )
    # remember every method ever asked for in this folder
    methods = list(dict.fromkeys(list(old["stream"].get("methods", [])) + list(cfg.methods)))
    old["stream"]["methods"] = methods
    atomic_write(path, json.dumps(old, indent=1), mkdir=True)
