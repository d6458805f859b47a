"""The ``/v1`` round routes: propagate, learn and its jobs, result / proxy / prediction
(ETag-versioned crops), the one-request round and commit (docs/server.md has the table)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Optional

import numpy as np
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from .. import errors as E
from . import codecs as C
from .core import ServerState, read_body
from .schemas import FRAME_RESPONSE, OPTIONAL_BINARY_BODY, CommitFormat, MaskEncoding, OutFormat, annotated_dict
from .v1_helpers import Helpers


def add_routes(r: APIRouter, srv: ServerState, h: Helpers) -> None:
    L = srv.limits
    eng = srv.engine

    @r.post(
        "/sessions/{sid}/propagate",
        tags=["rounds"],
        responses=FRAME_RESPONSE,
        summary="proxy mask Q and confidence C (arrays=true: a frame of float32 (2, *shape))",
    )
    async def propagate(
        request: Request, sid: str = PathParam(..., max_length=64), arrays: bool = Query(False)
    ) -> Response:
        lease = h.lease_of(request, sid)
        (q, c), t = await h.call(lease, lambda: lease.session.propagate(return_timings=True))
        if not arrays:
            return JSONResponse({"timings": t})
        qc = np.ascontiguousarray(np.stack([q, c]), dtype=np.float32)
        meta = {
            "kind": "proxy",
            "dtype": "float32",
            "shape": list(qc.shape),
            "bbox": None,
            "volume_shape": list(q.shape),
            "timings": t,
        }
        return h.frame_response(request, meta, qc.tobytes())

    @r.post(
        "/sessions/{sid}/learn",
        tags=["rounds"],
        status_code=202,
        summary="start a learning job (202 + job id; 409 while one runs)",
    )
    async def learn(
        request: Request, sid: str = PathParam(..., max_length=64), steps: Optional[int] = Query(None, ge=0)
    ) -> JSONResponse:
        lease = h.lease_of(request, sid)
        h.check_steps(steps)
        if lease.running_job() is not None:
            raise E.BusyError(f"job {lease.running_job().id} is still running on this session")
        fut = await h.call(lease, lambda: lease.session.learn_async(steps))
        job = lease.add_job(fut, eng.config.steps if steps is None else steps)
        return JSONResponse(
            job.to_dict(), status_code=202, headers={"Location": f"/v1/sessions/{lease.id}/jobs/{job.id}"}
        )

    @r.get("/sessions/{sid}/jobs/{job_id}", tags=["rounds"], summary="a learning job's state (wait= long-polls)")
    async def job(
        request: Request,
        sid: str = PathParam(..., max_length=64),
        job_id: str = PathParam(..., max_length=64),
        wait: float = Query(0.0, ge=0.0),
    ) -> dict:
        lease = h.lease_of(request, sid)
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

    @r.get(
        "/sessions/{sid}/result",
        tags=["rounds"],
        responses=FRAME_RESPONSE,
        summary="the fused mask: the changed bounding box since `since` (frame), or a NIfTI/NRRD file",
    )
    async def result(
        request: Request,
        sid: str = PathParam(..., max_length=64),
        format: OutFormat = Query(OutFormat.frame),
        soft: bool = Query(False),
        since: Optional[str] = Query(None, max_length=64),
        if_none_match: Optional[str] = Header(None),
    ) -> Response:
        lease = h.lease_of(request, sid)
        out, t = await h.call(lease, lambda: lease.session.result(soft=soft, return_timings=True))
        out = np.ascontiguousarray(out)
        if format is not OutFormat.frame:
            return h.file_response(out, lease, format.value, "result")
        return h.versioned(request, lease, "soft" if soft else "result", out, since, if_none_match, {"timings": t})

    @r.get(
        "/sessions/{sid}/proxy",
        tags=["rounds"],
        responses=FRAME_RESPONSE,
        summary="the proxy mask Q >= 0.5 (uint8): the changed bounding box since `since`",
    )
    async def proxy(
        request: Request,
        sid: str = PathParam(..., max_length=64),
        since: Optional[str] = Query(None, max_length=64),
        if_none_match: Optional[str] = Header(None),
    ) -> Response:
        lease = h.lease_of(request, sid)
        (q, _), t = await h.call(lease, lambda: lease.session.propagate(return_timings=True))
        out = np.ascontiguousarray(np.asarray(q) >= 0.5, dtype=np.uint8)
        return h.versioned(request, lease, "proxy", out, since, if_none_match, {"timings": t})

    @r.get(
        "/sessions/{sid}/prediction",
        tags=["rounds"],
        responses=FRAME_RESPONSE,
        summary="back-end probabilities: the changed bounding box since `since` (frame), or a file",
    )
    async def prediction(
        request: Request,
        sid: str = PathParam(..., max_length=64),
        format: OutFormat = Query(OutFormat.frame),
        since: Optional[str] = Query(None, max_length=64),
        if_none_match: Optional[str] = Header(None),
    ) -> Response:
        lease = h.lease_of(request, sid)
        p, t = await h.call(lease, lambda: lease.session.predict(return_timings=True))
        p = np.ascontiguousarray(p, dtype=np.float32)
        if format is not OutFormat.frame:
            return h.file_response(p, lease, format.value, "prediction")
        return h.versioned(request, lease, "prediction", p, since, if_none_match, {"timings": t})

    @r.post(
        "/sessions/{sid}/round",
        tags=["rounds"],
        openapi_extra=OPTIONAL_BINARY_BODY,
        responses=FRAME_RESPONSE,
        summary="one round in one request: slices in -> propagate, learn, result crop and next proposals out",
    )
    async def round_(
        request: Request,
        sid: str = PathParam(..., max_length=64),
        indices: Optional[str] = Query(None, description="slices in the body, comma-separated"),
        axis: Optional[int] = Query(None, ge=0, le=2),
        encoding: MaskEncoding = Query(MaskEncoding.bits),
        first: Optional[int] = Query(None, ge=0),
        last: Optional[int] = Query(None, ge=0),
        steps: Optional[int] = Query(None, ge=0),
        k: int = Query(0, ge=0, le=1024),
        rule: Optional[str] = Query(None, max_length=32),
        since: Optional[str] = Query(None, max_length=64),
    ) -> Response:
        lease = h.lease_of(request, sid)
        h.check_steps(steps)
        s = lease.session
        idx = h.parse_indices(indices) if indices else []
        masks = await h.read_masks(request, s, idx, axis, encoding.value) if idx else []
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
                h.annotate_all(s, idx, masks, axis)
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

        res, nxt, timings = await h.call(lease, work)
        extra = {"proposals": nxt, "timings": timings, "annotated": annotated_dict(s), "fusion_weight": s.fusion_weight}
        etag = C.etag_of(res)
        return h.crop_frame(request, lease, "result", res, etag, since, extra)

    @r.post(
        "/sessions/{sid}/commit",
        tags=["sessions"],
        openapi_extra=OPTIONAL_BINARY_BODY,
        summary="commit the case (optionally with the person's corrected 3D mask as the body); saves state",
    )
    async def commit(
        request: Request, sid: str = PathParam(..., max_length=64), format: CommitFormat = Query(CommitFormat.bits)
    ) -> dict:
        lease = h.lease_of(request, sid)
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
            label = await h.call(lease, lambda: np.ascontiguousarray(s.result()))
        await h.call(lease, lambda: s.commit(final_mask=final))
        srv.leases.drop(lease.id, "committed")
        saved = await srv.save()
        out = {"committed": True, "saved": saved, "counters": dict(eng.counters)}
        if image_id is not None:  # the stream moves on (/activelearning skips images with a final label)
            await run_in_threadpool(
                srv.datastore.save_mask,
                image_id,
                label,
                "final",
                {"source": "v1 commit", "final_mask": final is not None},
            )
            out["image"] = image_id
        return out
