"""Versioned, integrity-checked, atomically written checkpoints.

Public API
----------
``save(path, trainer, replay=None, counters=None) -> Path``
    Write model, optimizer (and grad scaler), the trainer's and the replay buffer's
    device generators, the global RNG states (torch CPU, CUDA when initialised,
    NumPy, Python ``random``) and the caller's stream ``counters`` (a dict of plain
    values: ints, floats, strings, bools, None, lists, tuples, dicts, tensors).
``load(path, trainer, replay=None, restore_rng=True) -> counters``
    Restore all of that into existing objects and return the counters. Everything is
    validated before anything changes: a bad checkpoint raises
    :class:`~engine.errors.CheckpointError` and leaves trainer, buffer and RNGs as
    they were. Loading and continuing reproduces an uninterrupted run bit for bit
    on CPU.
``read(path, map_location="cpu") -> dict``
    The verified payload (e.g. ``read(p)["trainer"]["config"]`` to rebuild a
    :class:`~engine.learn.trainer.LearnConfig` before constructing the trainer).

File layout (version 1)::

    offset 0   8 bytes   magic b"DILSEGCK"
    offset 8   4 bytes   format version, little-endian uint32
    offset 12  8 bytes   payload length in bytes, little-endian uint64
    offset 20  32 bytes  SHA-256 of the payload
    offset 52  payload   torch.save of a dict of plain containers and tensors with
                         "format": "dilseg-checkpoint", "version": 1, "trainer",
                         "replay", "rng", "counters", "torch_version"

Truncation or any flipped byte fails the length / SHA-256 check; the payload is
read with ``torch.load(..., weights_only=True)``, so a checkpoint cannot run code.
Writes go through :func:`engine._files.atomic_write` (a temporary file in the same
folder, fsynced, renamed over the target, the folder fsynced): a save that fails
at any point leaves the previous checkpoint file untouched.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._files import atomic_write
from ..errors import CheckpointError, InputError
from .replay import ReplayBuffer
from .trainer import Trainer

__all__ = ["FORMAT", "VERSION", "MAGIC", "save", "load", "read"]

FORMAT = "dilseg-checkpoint"
VERSION = 1
MAGIC = b"DILSEGCK"
_HEADER = struct.Struct("<8sIQ32s")
_PLAIN = (int, float, str, bool, type(None))


# ------------------------------------------------------------------ RNG states
def _capture_rng() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": [int(version), [int(v) for v in internal], gauss],
        "cuda": None,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _check_rng(state: Any) -> None:
    try:
        if not isinstance(state["torch"], torch.Tensor):
            raise CheckpointError("checkpoint torch RNG state is not a tensor")
        keys = state["numpy"]["keys"]
        if not isinstance(keys, torch.Tensor) or keys.numel() != 624:
            raise CheckpointError("checkpoint NumPy RNG state is malformed")
        if len(state["python"][1]) != 625:
            raise CheckpointError("checkpoint Python RNG state is malformed")
    except (KeyError, TypeError, IndexError) as exc:
        raise CheckpointError(f"checkpoint RNG state is malformed ({exc!r})") from None


def _restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    npst = state["numpy"]
    keys = npst["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state((npst["kind"], keys, npst["pos"], npst["has_gauss"], npst["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


# --------------------------------------------------------------- serialisation
def _check_plain(value: Any, where: str) -> None:
    """Counters must be plain containers so that ``weights_only`` loading accepts them."""
    if isinstance(value, _PLAIN) or isinstance(value, torch.Tensor):
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise InputError(f"{where} has a key of type {type(k).__name__}; use str or int keys")
            _check_plain(v, f"{where}[{k!r}]")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    raise InputError(f"{where} is a {type(value).__name__}; counters hold only plain values and tensors")


def save(
    path: str | os.PathLike,
    trainer: Trainer,
    replay: ReplayBuffer | None = None,
    counters: dict[str, Any] | None = None,
) -> Path:
    """Atomically write a checkpoint of ``trainer`` (+ ``replay``, RNGs, ``counters``).

    Args:
        path: target file; its folder is created if missing.
        trainer: the :class:`Trainer` to save.
        replay: optional :class:`ReplayBuffer` to save with it.
        counters: the caller's stream counters (plain values, see module docstring).

    Returns:
        The path written.

    Raises:
        InputError: bad arguments (nothing written).
        CheckpointError: the file could not be written; the previous file at
            ``path`` (if any) is unchanged.
    """
    if not isinstance(trainer, Trainer):
        raise InputError(f"trainer must be a Trainer, got {type(trainer).__name__}")
    if replay is not None and not isinstance(replay, ReplayBuffer):
        raise InputError(f"replay must be a ReplayBuffer or None, got {type(replay).__name__}")
    counters = {} if counters is None else counters
    if not isinstance(counters, dict):
        raise InputError(f"counters must be a dict, got {type(counters).__name__}")
    _check_plain(counters, "counters")
    path = Path(path)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "torch_version": str(torch.__version__),
        "trainer": trainer.state_dict(),
        "replay": None if replay is None else replay.state_dict(),
        "rng": _capture_rng(),
        "counters": counters,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    header = _HEADER.pack(MAGIC, VERSION, len(data), hashlib.sha256(data).digest())
    try:
        atomic_write(path, header + data, mkdir=True)
    except OSError as exc:
        raise CheckpointError(f"could not write checkpoint {path}: {exc}; the previous file is unchanged") from exc
    return path


def read(path: str | os.PathLike, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """Read and verify a checkpoint; return its payload dict.

    Raises :class:`CheckpointError` if the file is missing, truncated, corrupted, of
    another format or of an unsupported version.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if len(raw) < _HEADER.size:
        raise CheckpointError(f"checkpoint {path} is truncated ({len(raw)} bytes, header needs {_HEADER.size})")
    magic, version, length, digest = _HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise CheckpointError(f"{path} is not a dilseg checkpoint (bad magic {magic!r})")
    if version > VERSION or version < 1:
        raise CheckpointError(f"checkpoint {path} has version {version}; this build reads up to {VERSION}")
    data = raw[_HEADER.size :]
    if len(data) != length:
        raise CheckpointError(
            f"checkpoint {path} is truncated or padded: payload {len(data)} bytes, header says {length}"
        )
    if hashlib.sha256(data).digest() != digest:
        raise CheckpointError(f"checkpoint {path} is corrupted: SHA-256 of the payload does not match the header")
    try:
        payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise CheckpointError(f"checkpoint {path} payload cannot be loaded: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} payload is not in the {FORMAT!r} format")
    if payload.get("version") != version:
        raise CheckpointError(f"checkpoint {path} header version {version} and payload version differ")
    return payload


def load(
    path: str | os.PathLike,
    trainer: Trainer,
    replay: ReplayBuffer | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Restore a checkpoint into ``trainer`` (and ``replay``); return the counters.

    Args:
        path: checkpoint file written by :func:`save`.
        trainer: a :class:`Trainer` with the same architecture and optimizer.
        replay: a :class:`ReplayBuffer` with the same capacity, patch and policy; the
            checkpoint must hold a buffer when one is given.
        restore_rng: also restore the global torch / CUDA / NumPy / Python RNGs.

    Raises:
        InputError on bad arguments, CheckpointError on a bad or mismatching
        checkpoint; in both cases nothing was changed.
    """
    if not isinstance(trainer, Trainer):
        raise InputError(f"trainer must be a Trainer, got {type(trainer).__name__}")
    if replay is not None and not isinstance(replay, ReplayBuffer):
        raise InputError(f"replay must be a ReplayBuffer or None, got {type(replay).__name__}")
    payload = read(path, map_location=trainer.device)
    try:
        trainer_state, replay_state = payload["trainer"], payload["replay"]
        rng, counters = payload["rng"], payload["counters"]
    except KeyError as exc:
        raise CheckpointError(f"checkpoint {path} lacks {exc}") from None
    trainer.check_state_dict(trainer_state)
    if replay is not None:
        if replay_state is None:
            raise CheckpointError(f"checkpoint {path} holds no replay buffer")
        replay.check_state_dict(replay_state)
    if restore_rng:
        _check_rng(rng)
    trainer.load_state_dict(trainer_state)
    if replay is not None:
        replay.load_state_dict(replay_state)
    if restore_rng:
        _restore_rng(rng)
    return counters
