"""The native API under ``/v1`` (docs/server.md has the table)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Optional

import numpy as np
from fastapi import APIRouter, Header, Path as PathParam, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from .. import errors as E
from . import codecs as C
from .core import ServerState, read_body
from .errors import ForbiddenError, TooLargeError
from .leases import Lease
from .schemas import (BINARY_BODY, FRAME_RESPONSE, OPTIONAL_BINARY_BODY, CommitFormat, DType, Extent, FileFormat,
                      MaskEncoding, OutFormat, annotated_dict, session_info)

def router(srv: ServerState) -> APIRouter:
    L = srv.limits
    eng = srv.engine
    r = APIRouter(prefix="/v1")

    # --------------------------------------------------------------------- helpers
    def principal(request: Request):
        return request.state.principal

    async def call(lease: Lease, fn: Callable[[], Any]) -> Any:
        async with lease.lock:
            lease.touch()
            out = await run_in_threadpool(fn)
            lease.touch()
            return out

    def lease_of(request: Request, sid: str) -> Lease:
        return srv.leases.get(sid, principal(request))

    def frame_response(request: Request, meta: dict, payload: bytes, etag: Optional[str] = None) -> Response:
        body, headers = C.maybe_gzip(C.frame(meta, payload), request.headers.get("accept-encoding"))
        if etag:
            headers["ETag"] = f'"{etag}"'
        return Response(body, media_type=C.FRAME_TYPE, headers=headers)

    def file_response(array: np.ndarray, lease: Lease, fmt: str, name: str) -> Response:
        like = lease.like
        if like is None:
            from ..io.volumes import Volume

            like = Volume(array, tuple(lease.session.spacing), (0.0, 0.0, 0.0), np.eye(3), fmt)
        data = C.write_volume_bytes(array, like, fmt)
        ext = C.FILE_FORMATS[fmt]
        return Response(data, media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{name}{ext}"'})

    def versioned(request: Request, lease: Lease, kind: str, array: np.ndarray, since: Optional[str],
                  if_none_match: Optional[str], extra: Optional[dict] = None) -> Response:
        etag = C.etag_of(array)
        lease.remember(kind, etag, array)
        if if_none_match and if_none_match.strip().strip('"') == etag:
            return Response(status_code=304, headers={"ETag": f'"{etag}"'})
        return crop_frame(request, lease, kind, array, etag, since, extra)

    def crop_frame(request: Request, lease: Lease, kind: str, array: np.ndarray, etag: str, since: Optional[str],
                   extra: Optional[dict] = None) -> Response:
        base = since if since and since in lease.versions[kind] and since != etag else None
        if since == etag:
            bbox, base = None, etag
        else:
            bbox = C.changed_bbox(lease.versions[kind].get(base) if base else None, array)
        lease.remember(kind, etag, array)
        part = C.crop(array, bbox)
        meta = {"kind": kind, "dtype": str(array.dtype), "shape": list(part.shape), "bbox": bbox,
                "volume_shape": list(array.shape), "etag": etag, "base": base}
        if extra:
            meta.update(extra)
        return frame_response(request, meta, part.tobytes(), etag)

    def check_count(n: int) -> None:
        if n > L.max_slices_per_request:
            raise TooLargeError(f"{n} slices in one request; the limit is {L.max_slices_per_request}")

    def check_steps(steps: Optional[int]) -> None:
        if steps is not None and steps > L.max_steps_per_call:
            raise TooLargeError(f"{steps} steps in one call; the limit is {L.max_steps_per_call}")

    def plane_of(s: Any, axis: Optional[int]) -> tuple[int, int]:
        ax = s.axis if axis is None else axis
        if ax not in (0, 1, 2):
            raise E.InputError(f"axis must be 0, 1 or 2, got {axis!r}")
        return tuple(n for d, n in enumerate(s.shape) if d != ax)

    def annotate_all(s: Any, indices: list[int], masks: list[np.ndarray], axis: Optional[int]) -> None:
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

    async def read_masks(request: Request, s: Any, indices: list[int], axis: Optional[int],
                         encoding: str) -> list[np.ndarray]:
        check_count(len(indices))
        plane = plane_of(s, axis)
        per = C.mask_nbytes(plane, encoding)
        buf = await read_body(request, expected=per * len(indices), limit=L.max_body_bytes)
        return C.decode_masks(buf, len(indices), plane, encoding)

    def parse_indices(text: str) -> list[int]:
        idx = C.parse_ints(text, "indices")
        if not idx:
            raise E.InputError("indices must name at least one slice")
        return idx

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
        return {"version": __version__, "device": str(eng.device),
                "backends": {k: {"available": v.available, "detail": v.detail} for k, v in b.items()},
                "counters": dict(eng.counters), "fusion_weight": eng.fusion_weight(),
                "limits": L.to_dict(), "proposal_rules": list(RULES), "default_rule": cfg.proposal,
                "default_steps": cfg.steps, "sessions_open": len(srv.leases), "auth": srv.auth_enabled,
                "state": str(srv.state.path) if srv.state is not None else None,
                "uptime_s": round(time.time() - srv.started, 1)}

    @r.post("/predict", tags=["engine"], summary="probabilities for a volume with no interaction",
            openapi_extra=BINARY_BODY, responses=FRAME_RESPONSE)
    async def predict(request: Request, shape: str = Query(..., description="D,H,W of the body, C order"),
                      dtype: DType = Query(DType.float32), axis: int = Query(0, ge=0, le=2)) -> Response:
        sh = C.check_shape(C.parse_ints(shape, "shape", 3), L.max_voxels)
        nbytes = int(np.prod(sh)) * np.dtype(dtype.value).itemsize
        buf = await read_body(request, expected=nbytes, limit=L.max_body_bytes)
        image = C.decode_array(buf, dtype.value, sh)
        p = await run_in_threadpool(eng.predict, image, axis)
        p = np.ascontiguousarray(p, dtype=np.float32)
        meta = {"kind": "prediction", "dtype": "float32", "shape": list(p.shape), "bbox": [[0, n] for n in p.shape],
                "volume_shape": list(p.shape), "etag": C.etag_of(p), "base": None}
        return frame_response(request, meta, p.tobytes())

    @r.post("/admin/save", tags=["engine"], summary="save the engine into the state folder now (admin)")
    async def admin_save(request: Request) -> dict:
        if not principal(request).admin:
            raise ForbiddenError("saving the engine needs an admin key")
        saved = await srv.save()
        return {"saved": saved, "counters": dict(eng.counters)}

    # --------------------------------------------------------------------- sessions
    async def open_lease(request: Request, image: np.ndarray, spacing: Optional[list[float]], axis: int,
                         like: Any = None) -> JSONResponse:
        s = await run_in_threadpool(eng.open, image, spacing, axis)
        lease = Lease(s, principal(request).name, like=like)
        try:
            srv.leases.add(lease)
        except BaseException:
            await run_in_threadpool(s.close)
            raise
        return JSONResponse(session_info(lease, srv), status_code=201)

    @r.post("/sessions", tags=["sessions"], status_code=201, openapi_extra=BINARY_BODY,
            summary="open a session with a raw little-endian C-order image as the body")
    async def open_session(request: Request,
                           shape: Optional[str] = Query(None, description="three sizes, e.g. 44,95,71"),
                           dtype: DType = Query(DType.float32), spacing: Optional[str] = Query(None),
                           axis: int = Query(0, ge=0, le=2),
                           meta: Optional[str] = Query(None, max_length=2000,
                                                       description='the same as JSON: {"shape": [D, H, W], '
                                                                   '"dtype": "float32", "spacing": [..], "axis": 2}'))\
            -> JSONResponse:
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

    @r.post("/sessions/file", tags=["sessions"], status_code=201, openapi_extra=BINARY_BODY,
            summary="open a session with a NIfTI or NRRD file as the body (its geometry is kept)")
    async def open_session_file(request: Request, format: FileFormat = Query(FileFormat.nifti),
                                axis: int = Query(2, ge=0, le=2)) -> JSONResponse:
        srv.leases.reserve()
        buf = await read_body(request, limit=L.max_body_bytes)
        vol = await run_in_threadpool(C.read_volume_bytes, buf, format.value)
        C.check_shape(vol.shape, L.max_voxels)
        image = np.ascontiguousarray(vol.array, dtype=np.float32)
        return await open_lease(request, image, list(vol.spacing), axis, like=vol)

    @r.post("/sessions/datastore", tags=["sessions"], status_code=201,
            summary="open a session on an image of the server's stream (the MONAI Label datastore); "
                    "committing it stores the result as the image's final label")
    async def open_session_datastore(request: Request, image: str = Query(..., max_length=128),
                                     axis: int = Query(2, ge=0, le=2)) -> JSONResponse:
        store = srv.datastore
        store.check_id(image)
        store.entry(image)  # 404 before a lease is reserved
        srv.leases.reserve()
        vol = await run_in_threadpool(store.volume, image)
        C.check_shape(vol.shape, L.max_voxels)
        arr = np.ascontiguousarray(vol.array, dtype=np.float32)
        s = await run_in_threadpool(eng.open, arr, list(vol.spacing), axis)
        lease = Lease(s, principal(request).name, like=vol, meta={"monai_image": image})
        try:
            srv.leases.add(lease)
        except BaseException:
            await run_in_threadpool(s.close)
            raise
        return JSONResponse(dict(session_info(lease, srv), image=image), status_code=201)

    @r.get("/sessions/{sid}", tags=["sessions"], summary="the session's state")
    async def get_session(request: Request, sid: str = PathParam(..., max_length=64)) -> dict:
        lease = lease_of(request, sid)
        lease.touch(work=False)
        async with lease.lock:
            return await run_in_threadpool(session_info, lease, srv)

    @r.delete("/sessions/{sid}", tags=["sessions"], summary="close without committing (ends the lease)")
    async def close_session(request: Request, sid: str = PathParam(..., max_length=64)) -> dict:
        lease = lease_of(request, sid)
        await call(lease, lease.session.close)
        srv.leases.drop(lease.id, "closed")
        return {"closed": True}

    @r.get("/sessions/{sid}/image", tags=["sessions"], responses=FRAME_RESPONSE,
           summary="the session's image as the engine holds it: a frame of float32 in the caller's layout")
    async def session_image(request: Request, sid: str = PathParam(..., max_length=64)) -> Response:
        lease = lease_of(request, sid)

        def get() -> np.ndarray:
            s = lease.session
            return np.ascontiguousarray(s.image.movedim(0, s.axis).float().cpu().numpy())

        a = await call(lease, get)
        meta = {"kind": "image", "dtype": "float32", "shape": list(a.shape), "bbox": [[0, n] for n in a.shape],
                "volume_shape": list(a.shape), "base": None, "axis": lease.session.axis}
        # not gzipped: image floats barely compress, and a 512^3 volume would cost seconds
        return Response(C.frame(meta, a.tobytes()), media_type=C.FRAME_TYPE)

    @r.post("/sessions/{sid}/heartbeat", tags=["sessions"], summary="keep the lease alive")
    async def heartbeat(request: Request, sid: str = PathParam(..., max_length=64)) -> dict:
        lease = lease_of(request, sid)
        lease.touch(work=False)
        return {"ok": True, "idle_timeout_s": L.idle_timeout_s, "lease_timeout_s": L.lease_timeout_s}

    @r.put("/sessions/{sid}/extent", tags=["sessions"], summary="the object's first and last slice")
    async def set_extent(request: Request, body: Extent, sid: str = PathParam(..., max_length=64)) -> dict:
        lease = lease_of(request, sid)
        await call(lease, lambda: lease.session.set_extent(body.first, body.last))
        return {"extent": list(lease.session.extent)}

    @r.get("/sessions/{sid}/extent", tags=["sessions"])
    async def get_extent(request: Request, sid: str = PathParam(..., max_length=64)) -> dict:
        lease = lease_of(request, sid)
        ext = lease.session.extent
        return {"extent": list(ext) if ext is not None else None}

    @r.get("/sessions/{sid}/proposals", tags=["sessions"], summary="the next k slices to draw")
    async def proposals(request: Request, sid: str = PathParam(..., max_length=64),
                        k: int = Query(3, ge=1, le=1024), rule: Optional[str] = Query(None, max_length=32)) -> dict:
        lease = lease_of(request, sid)
        out, t = await call(lease, lambda: lease.session.propose(k, rule=rule, return_timings=True))
        return {"slices": [int(z) for z in out], "timings": t}

    @r.post("/sessions/{sid}/slices", tags=["slices"], openapi_extra=BINARY_BODY,
            summary="annotate slices: the body holds one mask per index (all or none are applied)")
    async def annotate(request: Request, sid: str = PathParam(..., max_length=64),
                       indices: str = Query(..., description="comma-separated slice indices"),
                       axis: Optional[int] = Query(None, ge=0, le=2),
                       encoding: MaskEncoding = Query(MaskEncoding.bits)) -> dict:
        lease = lease_of(request, sid)
        idx = parse_indices(indices)
        masks = await read_masks(request, lease.session, idx, axis, encoding.value)
        await call(lease, lambda: annotate_all(lease.session, idx, masks, axis))
        return {"annotated": annotated_dict(lease.session)}

    @r.delete("/sessions/{sid}/slices/{index}", tags=["slices"], summary="erase a slice's annotation")
    async def erase(request: Request, sid: str = PathParam(..., max_length=64), index: int = PathParam(...),
                    axis: Optional[int] = Query(None, ge=0, le=2)) -> dict:
        lease = lease_of(request, sid)
        await call(lease, lambda: lease.session.erase(index, axis=axis))
        return {"annotated": annotated_dict(lease.session)}

    @r.post("/sessions/{sid}/undo", tags=["slices"], summary="revert the last annotate / erase / extent")
    async def undo(request: Request, sid: str = PathParam(..., max_length=64)) -> dict:
        lease = lease_of(request, sid)
        await call(lease, lease.session.undo)
        ext = lease.session.extent
        return {"annotated": annotated_dict(lease.session), "extent": list(ext) if ext is not None else None}

    @r.post("/sessions/{sid}/propagate", tags=["rounds"], responses=FRAME_RESPONSE,
            summary="proxy mask Q and confidence C (arrays=true: a frame of float32 (2, *shape))")
    async def propagate(request: Request, sid: str = PathParam(..., max_length=64),
                        arrays: bool = Query(False)) -> Response:
        lease = lease_of(request, sid)
        (q, c), t = await call(lease, lambda: lease.session.propagate(return_timings=True))
        if not arrays:
            return JSONResponse({"timings": t})
        qc = np.ascontiguousarray(np.stack([q, c]), dtype=np.float32)
        meta = {"kind": "proxy", "dtype": "float32", "shape": list(qc.shape), "bbox": None,
                "volume_shape": list(q.shape), "timings": t}
        return frame_response(request, meta, qc.tobytes())

    @r.post("/sessions/{sid}/learn", tags=["rounds"], status_code=202,
            summary="start a learning job (202 + job id; 409 while one runs)")
    async def learn(request: Request, sid: str = PathParam(..., max_length=64),
                    steps: Optional[int] = Query(None, ge=0)) -> JSONResponse:
        lease = lease_of(request, sid)
        check_steps(steps)
        if lease.running_job() is not None:
            raise E.BusyError(f"job {lease.running_job().id} is still running on this session")
        fut = await call(lease, lambda: lease.session.learn_async(steps))
        job = lease.add_job(fut, eng.config.steps if steps is None else steps)
        return JSONResponse(job.to_dict(), status_code=202,
                            headers={"Location": f"/v1/sessions/{lease.id}/jobs/{job.id}"})

    @r.get("/sessions/{sid}/jobs/{job_id}", tags=["rounds"], summary="a learning job's state (wait= long-polls)")
    async def job(request: Request, sid: str = PathParam(..., max_length=64),
                  job_id: str = PathParam(..., max_length=64), wait: float = Query(0.0, ge=0.0)) -> dict:
        lease = lease_of(request, sid)
        j = lease.jobs.get(job_id)
        if j is None:
            from .errors import NotFoundError

            raise NotFoundError(f"no job {job_id} on session {sid}")
        lease.touch()
        if wait > 0 and not j.future.done():
            with_timeout = min(wait, L.max_wait_s)
            try:
                await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(j.future)), timeout=with_timeout)
            except (asyncio.TimeoutError, Exception):  # failures are reported in the body
                pass
        return j.to_dict()

    @r.get("/sessions/{sid}/result", tags=["rounds"], responses=FRAME_RESPONSE,
           summary="the fused mask: the changed bounding box since `since` (frame), or a NIfTI/NRRD file")
    async def result(request: Request, sid: str = PathParam(..., max_length=64),
                     format: OutFormat = Query(OutFormat.frame), soft: bool = Query(False),
                     since: Optional[str] = Query(None, max_length=64),
                     if_none_match: Optional[str] = Header(None)) -> Response:
        lease = lease_of(request, sid)
        out, t = await call(lease, lambda: lease.session.result(soft=soft, return_timings=True))
        out = np.ascontiguousarray(out)
        if format is not OutFormat.frame:
            return file_response(out, lease, format.value, "result")
        return versioned(request, lease, "soft" if soft else "result", out, since, if_none_match, {"timings": t})

    @r.get("/sessions/{sid}/proxy", tags=["rounds"], responses=FRAME_RESPONSE,
           summary="the proxy mask Q >= 0.5 (uint8): the changed bounding box since `since`")
    async def proxy(request: Request, sid: str = PathParam(..., max_length=64),
                    since: Optional[str] = Query(None, max_length=64),
                    if_none_match: Optional[str] = Header(None)) -> Response:
        lease = lease_of(request, sid)
        (q, _), t = await call(lease, lambda: lease.session.propagate(return_timings=True))
        out = np.ascontiguousarray(np.asarray(q) >= 0.5, dtype=np.uint8)
        return versioned(request, lease, "proxy", out, since, if_none_match, {"timings": t})

    @r.get("/sessions/{sid}/prediction", tags=["rounds"], responses=FRAME_RESPONSE,
           summary="back-end probabilities: the changed bounding box since `since` (frame), or a file")
    async def prediction(request: Request, sid: str = PathParam(..., max_length=64),
                         format: OutFormat = Query(OutFormat.frame),
                         since: Optional[str] = Query(None, max_length=64),
                         if_none_match: Optional[str] = Header(None)) -> Response:
        lease = lease_of(request, sid)
        p, t = await call(lease, lambda: lease.session.predict(return_timings=True))
        p = np.ascontiguousarray(p, dtype=np.float32)
        if format is not OutFormat.frame:
            return file_response(p, lease, format.value, "prediction")
        return versioned(request, lease, "prediction", p, since, if_none_match, {"timings": t})

    @r.post("/sessions/{sid}/round", tags=["rounds"], openapi_extra=OPTIONAL_BINARY_BODY, responses=FRAME_RESPONSE,
            summary="one round in one request: slices in -> propagate, learn, result crop and next proposals out")
    async def round_(request: Request, sid: str = PathParam(..., max_length=64),
                     indices: Optional[str] = Query(None, description="slices in the body, comma-separated"),
                     axis: Optional[int] = Query(None, ge=0, le=2), encoding: MaskEncoding = Query(MaskEncoding.bits),
                     first: Optional[int] = Query(None, ge=0), last: Optional[int] = Query(None, ge=0),
                     steps: Optional[int] = Query(None, ge=0), k: int = Query(0, ge=0, le=1024),
                     rule: Optional[str] = Query(None, max_length=32),
                     since: Optional[str] = Query(None, max_length=64)) -> Response:
        lease = lease_of(request, sid)
        check_steps(steps)
        s = lease.session
        idx = parse_indices(indices) if indices else []
        masks = await read_masks(request, s, idx, axis, encoding.value) if idx else []
        if (first is None) != (last is None):
            raise E.InputError("give both first and last, or neither")
        if lease.running_job() is not None:
            raise E.BusyError(f"job {lease.running_job().id} is still running on this session")

        def work():
            t0 = time.perf_counter()
            changed = 0
            try:
                if first is not None:
                    s.set_extent(first, last)
                    changed += 1
                annotate_all(s, idx, masks, axis)
                changed += len(idx)
                timings: dict[str, Any] = {}
                if s.annotated:
                    _, timings["propagate"] = s.propagate(return_timings=True)
                    n = eng.config.steps if steps is None else steps
                    if n > 0:
                        timings["learn"] = s.learn(n, return_timings=True)
                res, timings["result"] = s.result(return_timings=True)
                nxt = s.propose(k, rule=rule) if k > 0 else []
            except BaseException:
                for _ in range(changed):
                    s.undo()
                raise
            timings["server_ms"] = (time.perf_counter() - t0) * 1e3
            return np.ascontiguousarray(res), [int(z) for z in nxt], timings

        res, nxt, timings = await call(lease, work)
        extra = {"proposals": nxt, "timings": timings, "annotated": annotated_dict(s), "fusion_weight": s.fusion_weight}
        etag = C.etag_of(res)
        return crop_frame(request, lease, "result", res, etag, since, extra)

    @r.post("/sessions/{sid}/commit", tags=["sessions"], openapi_extra=OPTIONAL_BINARY_BODY,
            summary="commit the case (optionally with the person's corrected 3D mask as the body); saves state")
    async def commit(request: Request, sid: str = PathParam(..., max_length=64),
                     format: CommitFormat = Query(CommitFormat.bits)) -> dict:
        lease = lease_of(request, sid)
        s = lease.session
        n_vox = int(np.prod(s.shape))
        fmt = format.value
        final = None
        declared = request.headers.get("content-length")
        has_body = (declared is not None and declared != "0") or request.headers.get("transfer-encoding")
        if has_body:
            if fmt in ("u8", "bits"):
                expected = n_vox if fmt == "u8" else (n_vox + 7) // 8
                buf = await read_body(request, expected=expected, limit=L.max_body_bytes)
                if buf:
                    raw = np.frombuffer(bytearray(buf), dtype=np.uint8)
                    final = (np.unpackbits(raw)[:n_vox] if fmt == "bits" else raw).reshape(s.shape)
            else:
                buf = await read_body(request, limit=L.max_body_bytes)
                if buf:
                    vol = await run_in_threadpool(C.read_volume_bytes, buf, fmt)
                    final = np.asarray(vol.array)
        image_id = lease.meta.get("monai_image")
        label = final
        if image_id is not None and final is None:  # a stream image: what the person accepted is its label
            label = await call(lease, lambda: np.ascontiguousarray(s.result()))
        await call(lease, lambda: s.commit(final_mask=final))
        srv.leases.drop(lease.id, "committed")
        saved = await srv.save()
        out = {"committed": True, "saved": saved, "counters": dict(eng.counters)}
        if image_id is not None:  # the stream moves on (/activelearning skips images with a final label)
            await run_in_threadpool(srv.datastore.save_mask, image_id, label, "final",
                                    {"source": "v1 commit", "final_mask": final is not None})
            out["image"] = image_id
        return out

    return r
