"""A MONAI Label compatible subset, so that the unchanged 3D Slicer plugin and the
``monailabel`` Python client drive the whole loop.

=========================================  ============================================
route                                      what it does here
=========================================  ============================================
``GET /info/``                             models ``dilseg`` (type ``scribbles``: learns
                                           from drawn slices) and ``dilseg_predict``
                                           (type ``segmentation``: the back end alone)
``GET /auth/``, ``POST /auth/token``,      auth on the server's keys: the password is a
``GET /auth/token/valid``                  key, the token given back is that key
``PUT /datastore/?image=ID``               upload an image (multipart ``params`` +
                                           ``file``, NIfTI or NRRD; geometry kept)
``GET /datastore/?output=all|stats``       the images and their labels
``GET /datastore/image?image=ID``          download an image
``PUT /datastore/label?image=ID&tag=T``    save the final label: the session of that
                                           image commits with it as the final mask
``GET /datastore/label?label=ID&tag=T``    download a saved label
``POST /infer/dilseg?image=ID``            scribbles in (``label`` file + ``label_info``)
                                           -> drawn slices -> round -> result file
``POST /infer/dilseg_predict?image=ID``    the back-end prediction as a label file
``PUT /session/``, ``GET|DELETE            MONAI Label sessions: an uploaded image kept
/session/{id}``                            for inference under a session id
``POST /activelearning/{strategy}``        the next image of the stream without a label
=========================================  ============================================

Scribbles: in the label volume the segment named ``foreground_scribbles`` (its value
is the ``id``/``idx`` that ``label_info`` gives it; MONAI Label's default 3 without
``label_info``) marks drawn slices: every slice of the annotation axis (``params``
``axis``, default 2, the third array axis of the file) holding it is a drawn slice
whose mask is its voxels; a slice holding only ``background_scribbles`` (default 2)
is drawn empty. The volume is the whole drawing each time: slices no longer holding
scribbles are erased from the session.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from .. import errors as E
from . import codecs as C
from .core import ServerState
from .datastore import Datastore
from .errors import AuthError, NotFoundError, TooLargeError
from .leases import Lease

MODEL = "dilseg"
PREDICT_MODEL = "dilseg_predict"
LABEL = "foreground"
FG_NAME, BG_NAME = "foreground_scribbles", "background_scribbles"
FG_DEFAULT, BG_DEFAULT = 3, 2  # MONAI Label's scribbles values without label_info


def _params(text: Optional[str]) -> dict:
    if not text:
        return {}
    try:
        p = json.loads(text)
    except ValueError as exc:
        raise E.InputError(f"params is not JSON: {exc}") from exc
    if not isinstance(p, dict):
        raise E.InputError("params must be a JSON object")
    return p


def _label_values(info: Any) -> tuple[list[int], list[int]]:
    """Values of the foreground / background scribbles in a label volume."""
    if not info:
        return [FG_DEFAULT], [BG_DEFAULT]
    if not isinstance(info, list):
        raise E.InputError("label_info must be a list of {name, id} objects")
    fg, bg = [], []
    for item in info:
        if not isinstance(item, dict):
            raise E.InputError("label_info must be a list of {name, id} objects")
        v = item.get("id", item.get("idx"))
        if not isinstance(v, int) or isinstance(v, bool):
            raise E.InputError(f"label_info entry {item!r} has no integer id")
        if item.get("name") == FG_NAME:
            fg.append(v)
        elif item.get("name") == BG_NAME:
            bg.append(v)
    if not fg and not bg:
        raise E.InputError(f"label_info names neither {FG_NAME!r} nor {BG_NAME!r}")
    return fg, bg


def scribbles_to_slices(label: np.ndarray, axis: int, fg: list[int], bg: list[int]) -> dict[int, np.ndarray]:
    """``{slice index: 2D mask}`` of the drawn slices of a scribbles volume (module docstring)."""
    if label.ndim != 3:
        raise E.ShapeError(f"scribbles must be a 3D volume, got shape {label.shape}")
    fgm = np.isin(label, fg)
    bgm = np.isin(label, bg)
    other = tuple(a for a in range(3) if a != axis)
    has_fg = fgm.any(axis=other)
    has_bg = bgm.any(axis=other)
    out = {}
    for z in np.flatnonzero(has_fg | has_bg):
        out[int(z)] = np.take(fgm, int(z), axis=axis).astype(np.uint8)
    return out


def _multipart(params: dict, file_name: Optional[str], data: Optional[bytes]) -> Response:
    boundary = "dilseg-" + secrets.token_hex(12)
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n'
        f"Content-Type: application/json\r\n\r\n".encode()
        + json.dumps(params).encode()
        + b"\r\n"
    ]
    if data is not None:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{file_name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return Response(b"".join(parts), media_type=f"multipart/form-data; boundary={boundary}")


def router(srv: ServerState) -> APIRouter:
    eng = srv.engine
    L = srv.limits
    store = srv.datastore
    r = APIRouter(tags=["monai-label"])

    def principal(request: Request):
        return request.state.principal

    def lease_for(request: Request, image_id: str) -> Optional[Lease]:
        name = principal(request).name
        return srv.leases.find(lambda lease: lease.meta.get("monai_image") == image_id and lease.owner == name)

    async def upload_bytes(f: Optional[UploadFile]) -> bytes:
        if f is None:
            raise E.InputError("a file part is required")
        data = await f.read()
        if len(data) > L.max_body_bytes:
            raise TooLargeError(f"file of {len(data)} bytes is over the limit of {L.max_body_bytes}")
        return data

    @r.get("/info/", summary="MONAI Label app info")
    async def info() -> dict:
        from .. import __version__

        labels = {LABEL: 1}
        return {
            "name": "dilseg",
            "description": "dilseg: interactive 3D segmentation that learns from drawn slices",
            "version": __version__,
            "labels": [LABEL],
            "models": {
                MODEL: {
                    "type": "scribbles",
                    "labels": labels,
                    "dimension": 3,
                    "description": f"paint {FG_NAME} over the object on the slices you draw, {BG_NAME} on "
                    "slices without it; the engine propagates, learns and fuses",
                },
                PREDICT_MODEL: {
                    "type": "segmentation",
                    "labels": labels,
                    "dimension": 3,
                    "description": "the learned segmenter alone, no interaction",
                },
            },
            "trainers": {},
            "strategies": {"first": {"description": "the next image of the stream without a label"}},
            "scoring": {},
            "train_stats": {},
            "datastore": {"total": store.listing("")["total"], "completed": store.listing("")["completed"]},
        }

    # ------------------------------------------------------------------------ auth
    @r.get("/auth/", summary="whether auth is on")
    async def auth_info() -> dict:
        return {"enabled": srv.auth_enabled, "client_id": "dilseg", "realm": "dilseg"}

    @r.post("/auth/token", summary="exchange a key (the password) for a bearer token (the same key)")
    async def auth_token(username: str = Form(""), password: str = Form("")) -> dict:
        if srv.keys is None:
            return {"access_token": "", "token_type": "Bearer"}
        p = srv.keys.verify(password)
        if p is None:
            raise AuthError("the password is not a valid key")
        return {"access_token": password, "token_type": "Bearer", "user": p.name, "roles": [p.role]}

    @r.get("/auth/token/valid", summary="200 when the bearer key is valid")
    async def auth_valid(request: Request) -> dict:
        p = principal(request)
        return {"valid": True, "user": p.name, "roles": [p.role]}

    # ------------------------------------------------------------------------ datastore
    @r.get("/datastore/", summary="images and labels")
    async def datastore(request: Request, output: str = Query("stats", max_length=16)) -> dict:
        listing = store.listing(str(request.base_url))
        if output == "all":
            return listing
        return {"total": listing["total"], "completed": listing["completed"]}

    @r.put("/datastore/", summary="upload an image (multipart params + file)")
    async def add_image(
        image: Optional[str] = Query(None, max_length=128), params: str = Form("{}"), file: UploadFile = File(...)
    ) -> dict:
        _params(params)
        image_id = Datastore.check_id(image) if image else "img_" + secrets.token_hex(6)
        data = await upload_bytes(file)
        entry = await run_in_threadpool(store.add_image, image_id, data, file.filename)
        C.check_shape(store.volume(image_id).shape, L.max_voxels)
        return {"image": image_id, "file": entry["file"]}

    @r.get("/datastore/image", summary="download an image")
    async def get_image(image: str = Query(..., max_length=128)) -> Response:
        e = store.entry(image)
        data = (store.folder / e["file"]).read_bytes()
        name = f"{image}{C.FILE_FORMATS[e['format']] if e['file'].endswith('.gz') or e['format'] == 'nrrd' else '.nii'}"
        return Response(
            data,
            media_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    @r.put("/datastore/label", summary="save the final label: commit the case with it")
    async def save_label(
        request: Request,
        image: str = Query(..., max_length=128),
        tag: str = Query("final", max_length=32),
        params: str = Form("{}"),
        label: UploadFile = File(...),
    ) -> dict:
        p = _params(params)
        store.entry(image)
        data = await upload_bytes(label)
        fmt = C.format_of_name(label.filename, store.entry(image)["format"])
        vol = await run_in_threadpool(C.read_volume_bytes, data, fmt)
        img = await run_in_threadpool(store.volume, image)
        if vol.shape != img.shape:
            raise E.ShapeError(f"label shape {vol.shape} differs from the image's {img.shape}")
        final = (np.asarray(vol.array) > 0).astype(np.uint8)
        if tag == "final":
            lease = lease_for(request, image)
            if lease is None:
                srv.leases.reserve()
                axis = int(p.get("axis", 2))
                s = await run_in_threadpool(eng.open, np.asarray(img.array, dtype=np.float32), list(img.spacing), axis)
                lease = srv.leases.add(Lease(s, principal(request).name, like=img, meta={"monai_image": image}))
            async with lease.lock:
                await run_in_threadpool(lambda: lease.session.commit(final_mask=final))
            srv.leases.drop(lease.id, "committed")
            await srv.save()
        await run_in_threadpool(
            store.save_label, image, tag, data, label.filename, {"label_info": p.get("label_info", [])}
        )
        return {"image": image, "label": image, "tag": tag, "counters": dict(eng.counters)}

    @r.get("/datastore/label", summary="download a saved label")
    async def get_label(label: str = Query(..., max_length=128), tag: str = Query("final", max_length=32)) -> Response:
        e = store.entry(label)
        lab = e["labels"].get(tag)
        if lab is None:
            raise NotFoundError(f"image {label!r} has no label {tag!r}")
        data = (store.folder / lab["file"]).read_bytes()
        return Response(
            data,
            media_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{label}{Path(lab["file"]).suffix}"'},
        )

    # ------------------------------------------------------------------------ sessions
    @r.put("/session/", summary="keep an uploaded image under a session id")
    async def create_session(
        uncompress: bool = Query(False), expiry: int = Query(3600, ge=1), files: list[UploadFile] = File(...)
    ) -> dict:
        sid = "ms_" + secrets.token_hex(8)
        data = await upload_bytes(files[0] if files else None)
        entry = await run_in_threadpool(store.add_image, sid, data, files[0].filename, True)
        return {"session_id": sid, "session_info": {"name": entry["name"], "image": entry["file"], "expiry": expiry}}

    @r.get("/session/{session_id}", summary="a MONAI Label session")
    async def get_session(session_id: str) -> dict:
        e = store.entry(session_id)
        if not e.get("session"):
            raise NotFoundError(f"no session {session_id!r}")
        return {"session_id": session_id, "name": e["name"], "image": e["file"], "last_access_ts": e["ts"]}

    @r.delete("/session/{session_id}", summary="remove a MONAI Label session")
    async def remove_session(session_id: str) -> dict:
        e = store.entry(session_id)
        if not e.get("session"):
            raise NotFoundError(f"no session {session_id!r}")
        store.remove(session_id)
        return {"session_id": session_id, "removed": True}

    # ------------------------------------------------------------------------ active learning
    @r.post("/activelearning/{strategy}", summary="the next image of the stream without a final label")
    async def next_sample(strategy: str) -> dict:
        for i in store.index["order"]:
            e = store.index["images"][i]
            if not e.get("session") and "final" not in e["labels"]:
                return {"id": i, "name": e["name"], "path": e["file"], "strategy": strategy}
        return {}

    # ------------------------------------------------------------------------ infer
    @r.post("/infer/{model}", summary="scribbles (dilseg) or the back end alone (dilseg_predict)")
    async def infer(
        request: Request,
        model: str,
        image: str = Query("", max_length=128),
        session_id: str = Query("", max_length=128),
        output: Optional[str] = Query(None, max_length=16),
        params: str = Form("{}"),
        file: Optional[UploadFile] = File(None),
        label: Optional[UploadFile] = File(None),
    ) -> Response:
        if model not in (MODEL, PREDICT_MODEL):
            raise NotFoundError(f"no model {model!r}; this server has {MODEL!r} and {PREDICT_MODEL!r}")
        p = _params(params)
        image_id = session_id or image
        if file is not None and not session_id:
            image_id = Datastore.check_id(image) if image else "img_" + secrets.token_hex(6)
            data = await upload_bytes(file)
            await run_in_threadpool(store.add_image, image_id, data, file.filename)
        if not image_id:
            raise E.InputError("give image=, session_id= or a file")
        vol = await run_in_threadpool(store.volume, image_id)
        C.check_shape(vol.shape, L.max_voxels)
        axis = p.get("axis", 2)
        if axis not in (0, 1, 2):
            raise E.InputError(f"axis must be 0, 1 or 2, got {axis!r}")
        ext = p.get("result_extension") or C.FILE_FORMATS[store.entry(image_id)["format"]]
        fmt = "nrrd" if str(ext).endswith("nrrd") else "nifti"
        dtype = p.get("result_dtype", "uint8")
        if dtype not in ("uint8", "int16", "uint16", "int32", "float32"):
            raise E.InputError(f"result_dtype {dtype!r} is not supported")
        out_params: dict[str, Any] = {"label_names": {LABEL: 1}, "model": model}
        if model == PREDICT_MODEL:
            prob = await run_in_threadpool(eng.predict, np.asarray(vol.array, dtype=np.float32), axis)
            mask = (np.asarray(prob) >= 0.5).astype(dtype)
        else:
            if label is None:
                raise E.InputError(f"model {MODEL!r} needs the scribbles as a label file")
            ldata = await upload_bytes(label)
            lvol = await run_in_threadpool(C.read_volume_bytes, ldata, C.format_of_name(label.filename, fmt))
            if lvol.shape != vol.shape:
                raise E.ShapeError(f"scribbles shape {lvol.shape} differs from the image's {vol.shape}")
            fg, bg = _label_values(p.get("label_info"))
            drawn = scribbles_to_slices(np.asarray(lvol.array), axis, fg, bg)
            steps = p.get("steps", eng.config.steps)
            if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
                raise E.InputError(f"steps must be an int >= 0, got {steps!r}")
            if steps > L.max_steps_per_call:
                raise TooLargeError(f"{steps} steps in one call; the limit is {L.max_steps_per_call}")
            extent = p.get("extent")
            lease = lease_for(request, image_id)
            if lease is not None and lease.session.axis != axis:
                raise E.StateError(f"this image's session annotates axis {lease.session.axis}, not {axis}")
            if lease is None:
                srv.leases.reserve()
                s = await run_in_threadpool(eng.open, np.asarray(vol.array, dtype=np.float32), list(vol.spacing), axis)
                lease = srv.leases.add(
                    Lease(s, principal(request).name, like=vol, meta={"monai_image": image_id, "drawn": {}})
                )
            k = int(p.get("proposals", 3)) if isinstance(p.get("proposals", 3), int) else 3

            def work():
                s = lease.session
                last: dict[int, np.ndarray] = lease.meta.setdefault("drawn", {})
                t0 = time.perf_counter()
                changes = 0
                try:
                    if extent is not None:
                        if not (isinstance(extent, list) and len(extent) == 2):
                            raise E.InputError("extent must be [first, last]")
                        s.set_extent(*extent)
                        changes += 1
                    for z in sorted(set(last) - set(drawn)):
                        s.erase(z)
                        changes += 1
                    for z, m in sorted(drawn.items()):
                        if z not in last or not np.array_equal(last[z], m):
                            s.annotate(z, m)
                            changes += 1
                    timings = {}
                    if drawn:
                        _, timings["propagate"] = s.propagate(return_timings=True)
                        if steps > 0:
                            timings["learn"] = s.learn(steps, return_timings=True)
                    res = s.result()
                    nxt = s.propose(k) if k > 0 else []
                except BaseException:
                    for _ in range(changes):
                        s.undo()
                    raise
                lease.meta["drawn"] = dict(drawn)
                timings["server_ms"] = (time.perf_counter() - t0) * 1e3
                return np.asarray(res), nxt, timings

            async with lease.lock:
                lease.touch()
                res, nxt, timings = await run_in_threadpool(work)
            mask = res.astype(dtype)
            out_params.update(
                drawn=sorted(drawn),
                proposals=[int(z) for z in nxt],
                timings=timings,
                session=lease.id,
                fusion_weight=lease.session.fusion_weight,
            )
        if output == "json":
            return JSONResponse(out_params)
        data = await run_in_threadpool(C.write_volume_bytes, mask, vol, fmt)
        name = f"{image_id}_{model}{C.FILE_FORMATS[fmt]}"
        if output == "image":
            return Response(
                data,
                media_type="application/octet-stream",
                headers={"Content-Disposition": f'attachment; filename="{name}"'},
            )
        return _multipart(out_params, name, data)

    return r
