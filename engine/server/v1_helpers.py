"""What the ``/v1`` routes share: the lease of a request, running a call under its lock,
framed and file responses with ETag-versioned crops, and the checks on counts and masks."""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
from fastapi import Request, Response
from starlette.concurrency import run_in_threadpool

from .. import errors as E
from . import codecs as C
from .core import ServerState, read_body
from .errors import TooLargeError
from .leases import Lease


class Helpers:
    """Bound to one server; :mod:`.v1` and :mod:`.v1_rounds` call these as ``h.name(...)``."""

    def __init__(self, srv: ServerState) -> None:
        self.srv = srv
        self.L = srv.limits

    def principal(self, request: Request):
        return request.state.principal

    async def call(self, lease: Lease, fn: Callable[[], Any]) -> Any:
        async with lease.lock:
            lease.touch()
            out = await run_in_threadpool(fn)
            lease.touch()
            return out

    def lease_of(self, request: Request, sid: str) -> Lease:
        return self.srv.leases.get(sid, self.principal(request))

    def frame_response(self, request: Request, meta: dict, payload: bytes, etag: Optional[str] = None) -> Response:
        body, headers = C.maybe_gzip(C.frame(meta, payload), request.headers.get("accept-encoding"))
        if etag:
            headers["ETag"] = f'"{etag}"'
        return Response(body, media_type=C.FRAME_TYPE, headers=headers)

    def file_response(self, array: np.ndarray, lease: Lease, fmt: str, name: str) -> Response:
        like = lease.like
        if like is None:
            from ..io.volumes import Volume

            like = Volume(array, tuple(lease.session.spacing), (0.0, 0.0, 0.0), np.eye(3), fmt)
        data = C.write_volume_bytes(array, like, fmt)
        ext = C.FILE_FORMATS[fmt]
        return Response(
            data,
            media_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{name}{ext}"'},
        )

    def versioned(
        self,
        request: Request,
        lease: Lease,
        kind: str,
        array: np.ndarray,
        since: Optional[str],
        if_none_match: Optional[str],
        extra: Optional[dict] = None,
    ) -> Response:
        etag = C.etag_of(array)
        lease.remember(kind, etag, array)
        if if_none_match and if_none_match.strip().strip('"') == etag:
            return Response(status_code=304, headers={"ETag": f'"{etag}"'})
        return self.crop_frame(request, lease, kind, array, etag, since, extra)

    def crop_frame(
        self,
        request: Request,
        lease: Lease,
        kind: str,
        array: np.ndarray,
        etag: str,
        since: Optional[str],
        extra: Optional[dict] = None,
    ) -> Response:
        base = since if since and since in lease.versions[kind] and since != etag else None
        if since == etag:
            bbox, base = None, etag
        else:
            bbox = C.changed_bbox(lease.versions[kind].get(base) if base else None, array)
        lease.remember(kind, etag, array)
        part = C.crop(array, bbox)
        meta = {
            "kind": kind,
            "dtype": str(array.dtype),
            "shape": list(part.shape),
            "bbox": bbox,
            "volume_shape": list(array.shape),
            "etag": etag,
            "base": base,
        }
        if extra:
            meta.update(extra)
        return self.frame_response(request, meta, part.tobytes(), etag)

    def check_count(self, n: int) -> None:
        if n > self.L.max_slices_per_request:
            raise TooLargeError(f"{n} slices in one request; the limit is {self.L.max_slices_per_request}")

    def check_steps(self, steps: Optional[int]) -> None:
        if steps is not None and steps > self.L.max_steps_per_call:
            raise TooLargeError(f"{steps} steps in one call; the limit is {self.L.max_steps_per_call}")

    def plane_of(self, s: Any, axis: Optional[int]) -> tuple[int, int]:
        ax = s.axis if axis is None else axis
        if ax not in (0, 1, 2):
            raise E.InputError(f"axis must be 0, 1 or 2, got {axis!r}")
        return tuple(n for d, n in enumerate(s.shape) if d != ax)

    def annotate_all(self, s: Any, indices: list[int], masks: list[np.ndarray], axis: Optional[int]) -> None:
        """Annotate every mask or none: a failing mask undoes those before it."""
        done = 0
        try:
            for z, m in zip(indices, masks):
                s.annotate(z, m, axis=axis)
                done += 1
        except BaseException:
            for _ in range(done):
                s.undo()
            raise

    async def read_masks(
        self, request: Request, s: Any, indices: list[int], axis: Optional[int], encoding: str
    ) -> list[np.ndarray]:
        self.check_count(len(indices))
        plane = self.plane_of(s, axis)
        per = C.mask_nbytes(plane, encoding)
        buf = await read_body(request, expected=per * len(indices), limit=self.L.max_body_bytes)
        return C.decode_masks(buf, len(indices), plane, encoding)

    def parse_indices(self, text: str) -> list[int]:
        idx = C.parse_ints(text, "indices")
        if not idx:
            raise E.InputError("indices must name at least one slice")
        return idx
