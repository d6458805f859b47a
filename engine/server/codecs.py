"""Array bodies, frames, changed-bounding-box crops and volume files.

Request bodies
    raw little-endian C-order arrays: an image (``dtype`` and ``shape`` in the query),
    or ``n`` slice masks of the session's plane shape (``encoding=u8``: one byte per
    pixel, 0/1; ``encoding=bits``: ``numpy.packbits`` of each mask, big bit order,
    each mask padded to whole bytes), or a NIfTI / NRRD file (``format=nifti|nrrd``)
    read with :mod:`engine.io.volumes` (its geometry is kept for results).

Response frames (``application/x-dilseg-frame``)
    ``b"DSF1"``, a little-endian uint32 ``n``, ``n`` bytes of UTF-8 JSON (the meta:
    ``dtype``, ``shape`` of the payload, ``bbox`` ``[[lo, hi), ...]`` in the volume,
    ``volume_shape``, ``etag``, ``base`` and whatever else the route adds), then the
    payload: the raw C-order array. The whole frame may be gzip-encoded
    (``Content-Encoding: gzip`` when the request accepts it).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import struct
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from .. import errors as E

FRAME_MAGIC = b"DSF1"
FRAME_TYPE = "application/x-dilseg-frame"
IMAGE_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
FILE_FORMATS = {"nifti": ".nii.gz", "nrrd": ".nrrd"}


# ----------------------------------------------------------------------------- parsing
def parse_ints(text: Optional[str], name: str, n: Optional[int] = None) -> list[int]:
    if text is None or text == "":
        raise E.InputError(f"{name} is required")
    try:
        vals = [int(v) for v in str(text).split(",")]
    except ValueError as exc:
        raise E.InputError(f"{name} must be comma-separated integers, got {text!r}") from exc
    if n is not None and len(vals) != n:
        raise E.ShapeError(f"{name} must have {n} values, got {len(vals)}")
    return vals


def parse_floats(text: Optional[str], name: str, n: int) -> Optional[list[float]]:
    if text is None or text == "":
        return None
    try:
        vals = [float(v) for v in str(text).split(",")]
    except ValueError as exc:
        raise E.InputError(f"{name} must be comma-separated numbers, got {text!r}") from exc
    if len(vals) != n or not all(np.isfinite(vals)) or min(vals) <= 0:
        raise E.InputError(f"{name} must be {n} positive finite numbers, got {text!r}")
    return vals


def parse_meta(text: str) -> dict:
    """JSON metadata of a raw body: ``{"shape", "dtype", "spacing", "axis"}``."""
    try:
        m = json.loads(text)
    except ValueError as exc:
        raise E.InputError(f"meta is not JSON: {exc}") from exc
    if (
        not isinstance(m, dict)
        or not isinstance(m.get("shape"), list)
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in m["shape"])
    ):
        raise E.InputError('meta must be a JSON object with "shape": [D, H, W] (ints)')
    sp = m.get("spacing")
    if sp is not None and (
        not isinstance(sp, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in sp)
    ):
        raise E.InputError('meta "spacing" must be a list of numbers')
    return m


def check_shape(shape: Sequence[int], max_voxels: int) -> tuple[int, ...]:
    from .errors import TooLargeError

    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 2:
        raise E.ShapeError(f"shape must be three sizes >= 2, got {shape}")
    n = int(np.prod(shape, dtype=np.int64))
    if n > max_voxels:
        raise TooLargeError(f"volume of {n} voxels is over the server's limit of {max_voxels}")
    return shape


def decode_array(buf: bytes, dtype: str, shape: Sequence[int]) -> np.ndarray:
    if dtype not in IMAGE_DTYPES:
        raise E.DTypeError(f"dtype must be one of {IMAGE_DTYPES}, got {dtype!r}")
    dt = np.dtype(dtype).newbyteorder("<")
    want = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    if len(buf) != want:
        raise E.ShapeError(f"body has {len(buf)} bytes, {dtype} {tuple(shape)} needs {want}")
    # one copy: a writable native-order array the engine may keep
    return np.frombuffer(buf, dtype=dt).reshape(shape).astype(dt.newbyteorder("="), copy=True)


def mask_nbytes(plane: Sequence[int], encoding: str) -> int:
    n = int(np.prod(plane))
    if encoding == "u8":
        return n
    if encoding == "bits":
        return (n + 7) // 8
    raise E.InputError(f"encoding must be 'u8' or 'bits', got {encoding!r}")


def decode_masks(buf: bytes, count: int, plane: Sequence[int], encoding: str) -> list[np.ndarray]:
    """``count`` masks of shape ``plane`` from a body (module docstring)."""
    per = mask_nbytes(plane, encoding)
    if len(buf) != per * count:
        raise E.ShapeError(
            f"body has {len(buf)} bytes; {count} mask(s) of {tuple(plane)} ({encoding}) need {per * count}"
        )
    raw = np.frombuffer(buf, dtype=np.uint8)
    out = []
    n = int(np.prod(plane))
    for i in range(count):
        chunk = raw[i * per : (i + 1) * per]
        m = np.unpackbits(chunk)[:n] if encoding == "bits" else chunk.copy()
        out.append(m.reshape(plane))  # validated (binary) by Session.annotate
    return out


def encode_masks(masks: Sequence[np.ndarray], encoding: str = "bits") -> bytes:
    parts = []
    for m in masks:
        a = np.ascontiguousarray(np.asarray(m), dtype=np.uint8)
        parts.append(np.packbits(a.reshape(-1)).tobytes() if encoding == "bits" else a.tobytes())
    return b"".join(parts)


# ----------------------------------------------------------------------------- frames
def frame(meta: dict, payload: bytes = b"") -> bytes:
    head = json.dumps(meta, separators=(",", ":")).encode()
    return FRAME_MAGIC + struct.pack("<I", len(head)) + head + payload


def unframe(data: bytes) -> tuple[dict, bytes]:
    if data[:4] != FRAME_MAGIC or len(data) < 8:
        raise E.DataError("not a dilseg frame")
    (n,) = struct.unpack("<I", data[4:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def maybe_gzip(body: bytes, accept_encoding: Optional[str], level: int = 1) -> tuple[bytes, dict]:
    if accept_encoding and "gzip" in accept_encoding.lower() and len(body) > 512:
        return gzip.compress(body, compresslevel=level, mtime=0), {"Content-Encoding": "gzip"}
    return body, {}


def etag_of(a: np.ndarray) -> str:
    h = hashlib.blake2b(np.ascontiguousarray(a).view(np.uint8).reshape(-1), digest_size=12)
    h.update(str((a.dtype.str, a.shape)).encode())
    return h.hexdigest()


def changed_bbox(prev: Optional[np.ndarray], cur: np.ndarray) -> Optional[list[list[int]]]:
    """``[[lo, hi), ...]`` per axis of the voxels where ``cur`` differs from ``prev``
    (the whole volume without ``prev``); None when nothing changed."""
    if prev is None or prev.shape != cur.shape or prev.dtype != cur.dtype:
        return [[0, int(s)] for s in cur.shape]
    diff = prev != cur
    if not diff.any():
        return None
    box = []
    for ax in range(cur.ndim):
        other = tuple(a for a in range(cur.ndim) if a != ax)
        idx = np.flatnonzero(diff.any(axis=other))
        box.append([int(idx[0]), int(idx[-1]) + 1])
    return box


def crop(a: np.ndarray, bbox: Optional[list[list[int]]]) -> np.ndarray:
    if bbox is None:
        return a[tuple(slice(0, 0) for _ in a.shape)]
    return np.ascontiguousarray(a[tuple(slice(lo, hi) for lo, hi in bbox)])


# ----------------------------------------------------------------------------- files
def read_volume_bytes(data: bytes, fmt: str):
    """A NIfTI / NRRD file's bytes -> :class:`engine.io.volumes.Volume`."""
    from ..io.volumes import read_volume

    if fmt not in FILE_FORMATS:
        raise E.InputError(f"format must be one of {sorted(FILE_FORMATS)}, got {fmt!r}")
    suffix = FILE_FORMATS[fmt]
    if fmt == "nifti" and data[:2] != b"\x1f\x8b":
        suffix = ".nii"
    with tempfile.TemporaryDirectory(prefix="dilseg-up-") as d:
        p = Path(d) / f"upload{suffix}"
        p.write_bytes(data)
        try:
            vol = read_volume(p)
        except E.DilsegError as exc:  # say "the upload", not the server's temporary path
            raise type(exc)(str(exc).replace(str(p), f"the uploaded {fmt} file").replace(d, "")) from exc
    vol.path = None
    if vol.ndim != 3:
        raise E.ShapeError(f"uploaded volume must be 3D, got shape {vol.shape}")
    return vol


def format_of_name(name: Optional[str], default: str = "nifti") -> str:
    low = (name or "").lower()
    if low.endswith(".nrrd"):
        return "nrrd"
    if low.endswith(".nii") or low.endswith(".nii.gz"):
        return "nifti"
    return default


def write_volume_bytes(array: np.ndarray, like: Any, fmt: str) -> bytes:
    """``array`` as a NIfTI / NRRD file with the geometry of ``like`` (a Volume or None)."""
    from ..io.volumes import write_volume

    if fmt not in FILE_FORMATS:
        raise E.InputError(f"format must be one of {sorted(FILE_FORMATS)}, got {fmt!r}")
    with tempfile.TemporaryDirectory(prefix="dilseg-out-") as d:
        p = Path(d) / f"result{FILE_FORMATS[fmt]}"
        if like is not None:
            write_volume(p, array, spacing=like.spacing, origin=like.origin, direction=like.direction)
        else:
            write_volume(p, array)
        return p.read_bytes()
