"""Wire formats shared with the server (engine.server.codecs), written again here
because this package must not import ``engine`` (torch)."""

from __future__ import annotations

import json
import struct
from typing import Optional, Sequence

import numpy as np

from . import errors as E

FRAME_MAGIC = b"DSF1"


def unframe(data: bytes) -> tuple[dict, bytes]:
    if data[:4] != FRAME_MAGIC or len(data) < 8:
        raise E.DataError("the server's answer is not a dilseg frame")
    (n,) = struct.unpack("<I", data[4:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def frame_array(meta: dict, payload: bytes) -> np.ndarray:
    return np.frombuffer(payload, dtype=np.dtype(meta["dtype"]).newbyteorder("<")).reshape(meta["shape"])


def apply_crop(base: Optional[np.ndarray], meta: dict, payload: bytes) -> np.ndarray:
    """The full array after a changed-bbox frame, starting from ``base`` (the version
    named by ``meta['base']``; None when the frame holds the whole volume)."""
    part = frame_array(meta, payload)
    bbox = meta.get("bbox")
    shape = tuple(meta["volume_shape"])
    if meta.get("base") is None or base is None:
        if bbox is None or tuple(hi - lo for lo, hi in bbox) != shape:
            raise E.DataError("a crop arrived without the version it is relative to")
        return part.astype(part.dtype.newbyteorder("="), copy=True)
    out = base.copy()
    if bbox is not None:
        out[tuple(slice(lo, hi) for lo, hi in bbox)] = part
    return out


def as_mask(m, shape: Sequence[int], what: str = "mask") -> np.ndarray:
    """Client-side checks that mirror the engine's (shape, finite, binary) -> uint8."""
    if hasattr(m, "detach"):
        m = m.detach().cpu().numpy()
    try:
        a = np.asarray(m)
    except Exception as exc:  # noqa: BLE001
        raise E.InputError(f"{what} must be an array, got {type(m).__name__}") from exc
    if a.dtype.kind not in "biuf":
        if a.dtype.kind == "c":
            raise E.MaskError(f"{what} must be binary (0/1 or bool), got a complex array")
        raise E.InputError(f"{what} must be an array of numbers, got dtype {a.dtype}")
    if tuple(a.shape) != tuple(shape):
        raise E.ShapeError(f"{what} must have shape {tuple(shape)}, got {tuple(a.shape)}")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise E.NonFiniteError(f"{what} holds NaN or Inf")
    if a.dtype != np.bool_ and not ((a == 0) | (a == 1)).all():
        raise E.MaskError(f"{what} must be binary (0/1 or bool)")
    return np.ascontiguousarray(a, dtype=np.uint8)


def pack(masks: Sequence[np.ndarray]) -> bytes:
    return b"".join(np.packbits(m.reshape(-1)).tobytes() for m in masks)
