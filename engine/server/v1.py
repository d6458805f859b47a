"""The native API under ``/v1`` (docs/server.md has the table)."""

from __future__ import annotations

import time
from typing import Any, Optional

import numpy as np
from fastapi import APIRouter, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from .. import errors as E
from . import codecs as C
from . import v1_rounds as rounds
from .core import ServerState, read_body
from .errors import ForbiddenError
from .leases import Lease
from .schemas import (
    BINARY_BODY,
    FRAME_RESPONSE,
    DType,
    Extent,
    FileFormat,
    MaskEncoding,
    annotated_dict,
    session_info,
)
from .v1_helpers import Helpers


def router(srv: ServerState) -> APIRouter:
    L = srv.limits
    eng = srv.engine
    r = APIRouter(prefix="/v1")

    h = Helpers(srv)

    # --------------------------------------------------------------------- engine
    @r.get("/health", tags=["engine"], summary="liveness (no key needed)")
    async def health() -> dict:
        from .. import __version__

        return {"status": "ok", "version": __version__}

    @r.get("/info", tags=["engine"], summary="version, device, backends, counters, limits, proposal rules")
    async def info() -> dict:
        from .. import __version__, backends
        from ..guide import RULES

        b = await run_in_threadpool(backends)
        cfg = eng.config
        return {
            "version": __version__,
            "device": str(eng.device),
            "backends": {k: {"available": v.available, "detail": v.detail} for k, v in b.items()},
            "counters": dict(eng.counters),
            "fusion_weight": eng.fusion_weight(),
            "limits": L.to_dict(),
            "proposal_rules": list(RULES),
            "default_rule": cfg.proposal,
            "default_steps": cfg.steps,
            "sessions_open": len(srv.leases),
            "auth": srv.auth_enabled,
            "state": str(srv.state.path) if srv.state is not None else None,
            "uptime_s": round(time.time() - srv.started, 1),
        }

    @r.post(
        "/predict",
        tags=["engine"],
        summary="probabilities for a volume with no interaction",
        openapi_extra=BINARY_BODY,
        responses=FRAME_RESPONSE,
    )
    async def predict(
        request: Request,
        shape: str = Query(..., description="D,H,W of the body, C order"),
        dtype: DType = Query(DType.float32),
        axis: int = Query(0, ge=0, le=2),
    ) -> Response:
        sh = C.check_shape(C.parse_ints(shape, "shape", 3), L.max_voxels)
        nbytes = int(np.prod(sh)) * np.dtype(dtype.value).itemsize
        buf = await read_body(request, expected=nbytes, limit=L.max_body_bytes)
        image = C.decode_array(buf, dtype.value, sh)
        p = await run_in_threadpool(eng.predict, image, axis)
        p = np.ascontiguousarray(p, dtype=np.float32)
        meta = {
            "kind": "prediction",
            "dtype": "float32",
            "shape": list(p.shape),
            "bbox": [[0, n] for n in p.shape],
            "volume_shape": list(p.shape),
            "etag": C.etag_of(p),
            "base": None,
        }
        return h.frame_response(request, meta, p.tobytes())

    @r.post("/admin/save", tags=["engine"], summary="save the engine into the state folder now (admin)")
    async def admin_save(request: Request) -> dict:
        if not h.principal(request).admin:
            raise ForbiddenError("saving the engine needs an admin key")
        saved = await srv.save()
        return {"saved": saved, "counters": dict(eng.counters)}

    # --------------------------------------------------------------------- sessions
    async def open_lease(
        request: Request, image: np.ndarray, spacing: Optional[list[float]], axis: int, like: Any = None
    ) -> JSONResponse:
        s = await run_in_threadpool(eng.open, image, spacing, axis)
        lease = Lease(s, h.principal(request).name, like=like)
        try:
            srv.leases.add(lease)
        except BaseException:
            await run_in_threadpool(s.close)
            raise
        return JSONResponse(session_info(lease, srv), status_code=201)

    @r.post(
        "/sessions",
        tags=["sessions"],
        status_code=201,
        openapi_extra=BINARY_BODY,
        summary="open a session with a raw little-endian C-order image as the body",
    )
    async def open_session(
        request: Request,
        shape: Optional[str] = Query(None, description="three sizes, e.g. 44,95,71"),
        dtype: DType = Query(DType.float32),
        spacing: Optional[str] = Query(None),
        axis: int = Query(0, ge=0, le=2),
        meta: Optional[str] = Query(
            None,
            max_length=2000,
            description='the same as JSON: {"shape": [D, H, W], "dtype": "float32", "spacing": [..], "axis": 2}',
        ),
    ) -> JSONResponse:
        srv.leases.reserve()
        dt = dtype.value
        if meta is not None:
            m = C.parse_meta(meta)
            shape = ",".join(str(v) for v in m.get("shape", []))
            dt = m.get("dtype", dt)
            spacing = ",".join(str(v) for v in m["spacing"]) if m.get("spacing") is not None else spacing
            axis = m.get("axis", axis)
            if axis not in (0, 1, 2):
                raise E.InputError(f"axis must be 0, 1 or 2, got {axis!r}")
        sh = C.check_shape(C.parse_ints(shape, "shape", 3), L.max_voxels)
        sp = C.parse_floats(spacing, "spacing", 3)
        if dt not in C.IMAGE_DTYPES:
            raise E.DTypeError(f"dtype must be one of {C.IMAGE_DTYPES}, got {dt!r}")
        nbytes = int(np.prod(sh)) * np.dtype(dt).itemsize
        buf = await read_body(request, expected=nbytes, limit=L.max_body_bytes)
        image = C.decode_array(buf, dt, sh)
        return await open_lease(request, image, sp, axis)

    @r.post(
        "/sessions/file",
        tags=["sessions"],
        status_code=201,
        openapi_extra=BINARY_BODY,
        summary="open a session with a NIfTI or NRRD file as the body (its geometry is kept)",
    )
    async def open_session_file(
        request: Request, format: FileFormat = Query(FileFormat.nifti), axis: int = Query(2, ge=0, le=2)
    ) -> JSONResponse:
        srv.leases.reserve()
        buf = await read_body(request, limit=L.max_body_bytes)
        vol = await run_in_threadpool(C.read_volume_bytes, buf, format.value)
        C.check_shape(vol.shape, L.max_voxels)
        image = np.ascontiguousarray(vol.array, dtype=np.float32)
        return await open_lease(request, image, list(vol.spacing), axis, like=vol)

    @r.post(
        "/sessions/datastore",
        tags=["sessions"],
        status_code=201,
        summary="open a session on an image of the server's stream (the MONAI Label datastore); "
        "committing it stores the result as the image's final label",
    )
    async def open_session_datastore(
        request: Request, image: str = Query(..., max_length=128), axis: int = Query(2, ge=0, le=2)
    ) -> JSONResponse:
        store = srv.datastore
        store.check_id(image)
        store.entry(image)  # 404 before a lease is reserved
        srv.leases.reserve()
        vol = await run_in_threadpool(store.volume, image)
        C.check_shape(vol.shape, L.max_voxels)
        arr = np.ascontiguousarray(vol.array, dtype=np.float32)
        s = await run_in_threadpool(eng.open, arr, list(vol.spacing), axis)
        lease = Lease(s, h.principal(request).name, like=vol, meta={"monai_image": image})
        try:
            srv.leases.add(lease)
        except BaseException:
            await run_in_threadpool(s.close)
            raise
        return JSONResponse(dict(session_info(lease, srv), image=image), status_code=201)

    @r.get("/sessions/{sid}", tags=["sessions"], summary="the session's state")
    async def get_session(request: Request, sid: str = PathParam(..., max_length=64)) -> dict:
        lease = h.lease_of(request, sid)
        lease.touch(work=False)
        async with lease.lock:
            return await run_in_threadpool(session_info, lease, srv)

    @r.delete("/sessions/{sid}", tags=["sessions"], summary="close without committing (ends the lease)")
    async def close_session(request: Request, sid: str = PathParam(..., max_length=64)) -> dict:
        lease = h.lease_of(request, sid)
        await h.call(lease, lease.session.close)
        srv.leases.drop(lease.id, "closed")
        return {"closed": True}

    @r.get(
        "/sessions/{sid}/image",
        tags=["sessions"],
        responses=FRAME_RESPONSE,
        summary="the session's image as the engine holds it: a frame of float32 in the caller's layout",
    )
    async def session_image(request: Request, sid: str = PathParam(..., max_length=64)) -> Response:
        lease = h.lease_of(request, sid)

        def get() -> np.ndarray:
            s = lease.session
            return np.ascontiguousarray(s.image.movedim(0, s.axis).float().cpu().numpy())

        a = await h.call(lease, get)
        meta = {
            "kind": "image",
            "dtype": "float32",
            "shape": list(a.shape),
            "bbox": [[0, n] for n in a.shape],
            "volume_shape": list(a.shape),
            "base": None,
            "axis": lease.session.axis,
        }
        # not gzipped: image floats barely compress, and a 512^3 volume would cost seconds
        return Response(C.frame(meta, a.tobytes()), media_type=C.FRAME_TYPE)

    @r.post("/sessions/{sid}/heartbeat", tags=["sessions"], summary="keep the lease alive")
    async def heartbeat(request: Request, sid: str = PathParam(..., max_length=64)) -> dict:
        lease = h.lease_of(request, sid)
        lease.touch(work=False)
        return {"ok": True, "idle_timeout_s": L.idle_timeout_s, "lease_timeout_s": L.lease_timeout_s}

    @r.put("/sessions/{sid}/extent", tags=["sessions"], summary="the object's first and last slice")
    async def set_extent(request: Request, body: Extent, sid: str = PathParam(..., max_length=64)) -> dict:
        lease = h.lease_of(request, sid)
        await h.call(lease, lambda: lease.session.set_extent(body.first, body.last))
        return {"extent": list(lease.session.extent)}

    @r.get("/sessions/{sid}/extent", tags=["sessions"])
    async def get_extent(request: Request, sid: str = PathParam(..., max_length=64)) -> dict:
        lease = h.lease_of(request, sid)
        ext = lease.session.extent
        return {"extent": list(ext) if ext is not None else None}

    @r.get("/sessions/{sid}/proposals", tags=["sessions"], summary="the next k slices to draw")
    async def proposals(
        request: Request,
        sid: str = PathParam(..., max_length=64),
        k: int = Query(3, ge=1, le=1024),
        rule: Optional[str] = Query(None, max_length=32),
    ) -> dict:
        lease = h.lease_of(request, sid)
        out, t = await h.call(lease, lambda: lease.session.propose(k, rule=rule, return_timings=True))
        return {"slices": [int(z) for z in out], "timings": t}

    @r.post(
        "/sessions/{sid}/slices",
        tags=["slices"],
        openapi_extra=BINARY_BODY,
        summary="annotate slices: the body holds one mask per index (all or none are applied)",
    )
    async def annotate(
        request: Request,
        sid: str = PathParam(..., max_length=64),
        indices: str = Query(..., description="comma-separated slice indices"),
        axis: Optional[int] = Query(None, ge=0, le=2),
        encoding: MaskEncoding = Query(MaskEncoding.bits),
    ) -> dict:
        lease = h.lease_of(request, sid)
        idx = h.parse_indices(indices)
        masks = await h.read_masks(request, lease.session, idx, axis, encoding.value)
        await h.call(lease, lambda: h.annotate_all(lease.session, idx, masks, axis))
        return {"annotated": annotated_dict(lease.session)}

    @r.delete("/sessions/{sid}/slices/{index}", tags=["slices"], summary="erase a slice's annotation")
    async def erase(
        request: Request,
        sid: str = PathParam(..., max_length=64),
        index: int = PathParam(...),
        axis: Optional[int] = Query(None, ge=0, le=2),
    ) -> dict:
        lease = h.lease_of(request, sid)
        await h.call(lease, lambda: lease.session.erase(index, axis=axis))
        return {"annotated": annotated_dict(lease.session)}

    @r.post("/sessions/{sid}/undo", tags=["slices"], summary="revert the last annotate / erase / extent")
    async def undo(request: Request, sid: str = PathParam(..., max_length=64)) -> dict:
        lease = h.lease_of(request, sid)
        await h.call(lease, lease.session.undo)
        ext = lease.session.extent
        return {"annotated": annotated_dict(lease.session), "extent": list(ext) if ext is not None else None}

    rounds.add_routes(r, srv, h)
    return r
