"""``RemoteEngine`` / ``RemoteSession``: ``engine.Engine`` / ``engine.Session`` over HTTP."""

from __future__ import annotations

import threading
import time
import weakref
from concurrent.futures import Future
from typing import Any, Optional, Sequence

import httpx
import numpy as np

from . import errors as E
from ._frames import apply_crop, as_mask, frame_array, pack, unframe

IMAGE_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
DEFAULT_TIMEOUTS = {"connect": 5.0, "read": 120.0, "write": 120.0, "pool": 30.0, "learn": 600.0}


class RemoteEngine:
    """A dilseg server seen as an engine.

    Args:
        url: the server, e.g. ``http://127.0.0.1:8000``.
        api_key: a key from ``dilseg keys add`` (None when the server runs without keys).
        timeouts: per phase, in seconds: ``connect``, ``read``, ``write``, ``pool``
            (httpx's) and ``learn`` (longest wait for one learning job).
        heartbeat_s: interval of the lease heartbeats of open sessions (None: a
            third of the server's lease timeout).
    """

    def __init__(
        self,
        url: str,
        api_key: Optional[str] = None,
        timeouts: Optional[dict] = None,
        heartbeat_s: Optional[float] = None,
        transport: Any = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeouts = dict(DEFAULT_TIMEOUTS, **(timeouts or {}))
        t = self.timeouts
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        kw = {"transport": transport} if transport is not None else {}
        self._http = httpx.Client(
            base_url=self.url,
            headers=headers,
            http2=False,
            timeout=httpx.Timeout(connect=t["connect"], read=t["read"], write=t["write"], pool=t["pool"]),
            **kw,
        )
        self._heartbeat_s = heartbeat_s
        self._sessions: "weakref.WeakSet[RemoteSession]" = weakref.WeakSet()
        self._hb: Optional[threading.Thread] = None
        self._stop = threading.Event()

    # --- HTTP ---------------------------------------------------------------------
    def _request(self, method: str, path: str, *, ok=(200, 201, 202, 304), **kw) -> httpx.Response:
        try:
            r = self._http.request(method, path, **kw)
        except httpx.TimeoutException as exc:
            raise E.NetworkError(f"{method} {path}: timed out ({exc})") from exc
        except httpx.HTTPError as exc:
            raise E.NetworkError(f"{method} {path}: {exc}") from exc
        if r.status_code in ok:
            return r
        try:
            body = r.json()
        except ValueError:
            body = None
        exc = E.from_response(r.status_code, body if isinstance(body, dict) else None, r.text[:300])
        if r.status_code == 503 and r.headers.get("retry-after"):
            exc.retry_after = int(r.headers["retry-after"])
        raise exc

    def _json(self, method: str, path: str, **kw) -> Any:
        return self._request(method, path, **kw).json()

    # --- engine -------------------------------------------------------------------
    def ping(self) -> float:
        """Round-trip time of a health check in ms (raises NetworkError when down)."""
        t0 = time.perf_counter()
        self._json("GET", "/v1/health")
        return (time.perf_counter() - t0) * 1e3

    def info(self) -> dict:
        return self._json("GET", "/v1/info")

    @property
    def counters(self) -> dict:
        return self.info()["counters"]

    @property
    def device(self) -> str:
        return self.info()["device"]

    def backends(self) -> dict:
        return self.info()["backends"]

    def fusion_weight(self) -> float:
        return float(self.info()["fusion_weight"])

    def save(self) -> bool:
        """Ask the server to save its state folder now (admin key)."""
        return bool(self._json("POST", "/v1/admin/save")["saved"])

    @staticmethod
    def _image_body(image: Any) -> tuple[np.ndarray, str]:
        if hasattr(image, "detach"):
            image = image.detach().cpu().numpy()
        a = np.asarray(image)
        if a.ndim != 3:
            raise E.ShapeError(f"image must be a 3D volume, got shape {a.shape}")
        if a.dtype.kind == "c" or a.dtype == np.bool_:
            raise E.DTypeError(f"image dtype {a.dtype} is not an intensity type")
        dt = a.dtype.name if a.dtype.name in IMAGE_DTYPES else "float32"
        return np.ascontiguousarray(a, dtype=np.dtype(dt).newbyteorder("<")), dt

    def open(self, image: Any, spacing: Optional[Sequence[float]] = None, axis: int = 0) -> "RemoteSession":
        """A :class:`RemoteSession` for one case (the server holds it as a lease)."""
        a, dt = self._image_body(image)
        params = {"shape": ",".join(map(str, a.shape)), "dtype": dt, "axis": axis}
        if spacing is not None:
            params["spacing"] = ",".join(repr(float(s)) for s in spacing)
        info = self._json(
            "POST",
            "/v1/sessions",
            params=params,
            content=a.tobytes(),
            headers={"Content-Type": "application/octet-stream"},
        )
        return self._session(info)

    def open_file(self, path: str, axis: int = 2) -> "RemoteSession":
        """A session from a NIfTI / NRRD file; the server keeps its geometry for
        :meth:`RemoteSession.result_file`."""
        fmt = "nrrd" if str(path).lower().endswith(".nrrd") else "nifti"
        with open(path, "rb") as f:
            data = f.read()
        info = self._json(
            "POST",
            "/v1/sessions/file",
            params={"format": fmt, "axis": axis},
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        return self._session(info)

    def _session(self, info: dict) -> "RemoteSession":
        s = RemoteSession(self, info)
        self._sessions.add(s)
        self._start_heartbeats(info["lease"]["lease_timeout_s"])
        return s

    def predict(self, image: Any, axis: int = 0) -> np.ndarray:
        a, dt = self._image_body(image)
        r = self._request(
            "POST",
            "/v1/predict",
            params={"shape": ",".join(map(str, a.shape)), "dtype": dt, "axis": axis},
            content=a.tobytes(),
            headers={"Content-Type": "application/octet-stream"},
        )
        meta, payload = unframe(r.content)
        return frame_array(meta, payload).copy()

    # --- heartbeats ------------------------------------------------------------------
    def _start_heartbeats(self, lease_timeout_s: float) -> None:
        if self._hb is not None and self._hb.is_alive():
            return
        every = self._heartbeat_s or max(0.5, float(lease_timeout_s) / 3.0)
        self._stop.clear()

        def loop():
            while not self._stop.wait(every):
                for s in list(self._sessions):
                    if s._closed:
                        continue
                    try:
                        self._request("POST", f"/v1/sessions/{s.id}/heartbeat")
                    except E.SessionClosedError:
                        s._closed = True
                    except E.DilsegError:
                        pass  # the next call will report it

        self._hb = threading.Thread(target=loop, name="dilseg-heartbeat", daemon=True)
        self._hb.start()

    def close(self) -> None:
        self._stop.set()
        for s in list(self._sessions):
            if not s._closed:
                try:
                    s.close()
                except E.DilsegError:
                    pass
        self._http.close()

    def __enter__(self) -> "RemoteEngine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class RemoteSession:
    """One case on the server, with the methods and return types of ``engine.Session``
    (arrays come back as NumPy)."""

    def __init__(self, engine: RemoteEngine, info: dict) -> None:
        self.engine = engine
        self.id = info["session_id"]
        self.shape = tuple(info["shape"])
        self.axis = int(info["axis"])
        self.spacing = tuple(info["spacing"])
        self.D = self.shape[self.axis]
        self.geometry = info.get("geometry")
        self._info = info
        self._closed = False
        self.timings: dict[str, dict] = {}
        self.rounds = 0
        self._cache: dict[str, tuple[Optional[str], Optional[np.ndarray]]] = {}
        self._learning: Optional[Future] = None

    def _path(self, tail: str = "") -> str:
        return f"/v1/sessions/{self.id}{tail}"

    def _call(self, method: str, tail: str = "", **kw) -> httpx.Response:
        try:
            return self.engine._request(method, self._path(tail), **kw)
        except E.SessionClosedError:
            self._closed = True
            raise

    def _record(self, name: str, t: Optional[dict]) -> dict:
        t = t or {}
        self.timings[name] = t
        return t

    # --- state ------------------------------------------------------------------------
    def _state(self) -> dict:
        return self._call("GET").json()

    @property
    def extent(self) -> Optional[tuple[int, int]]:
        e = self._call("GET", "/extent").json()["extent"]
        return tuple(e) if e is not None else None

    @property
    def annotated(self) -> dict[int, list[int]]:
        return {int(k): v for k, v in self._state()["annotated"].items()}

    @property
    def fusion_weight(self) -> float:
        return float(self._state()["fusion_weight"])

    def _plane(self, axis: Optional[int]) -> tuple[int, int]:
        ax = self.axis if axis is None else axis
        if ax not in (0, 1, 2):
            raise E.InputError(f"axis must be 0, 1 or 2, got {axis!r}")
        return tuple(n for d, n in enumerate(self.shape) if d != ax)

    # --- interaction ----------------------------------------------------------------------
    def set_extent(self, first: int, last: int) -> None:
        for name, v in (("first", first), ("last", last)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
                raise E.SliceIndexError(f"{name} must be an int slice index, got {v!r}")
            if not 0 <= int(v) < self.D:
                raise E.SliceIndexError(f"{name}={v} outside [0, {self.D - 1}] on axis {self.axis}")
        self._call("PUT", "/extent", json={"first": int(first), "last": int(last)})

    def _check_index(self, index: Any, axis: Optional[int]) -> int:
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise E.SliceIndexError(f"index must be an int, got {index!r}")
        ax = self.axis if axis is None else axis
        if ax not in (0, 1, 2):
            raise E.InputError(f"axis must be 0, 1 or 2, got {axis!r}")
        if not 0 <= int(index) < self.shape[ax]:
            raise E.SliceIndexError(f"slice {index} outside [0, {self.shape[ax] - 1}] on axis {ax}")
        return int(index)

    def _slices_body(self, indices: Sequence[int], masks: Sequence[Any], axis: Optional[int]) -> tuple[dict, bytes]:
        if len(indices) != len(masks):
            raise E.InputError(f"{len(indices)} indices but {len(masks)} masks")
        plane = self._plane(axis)
        idx = [self._check_index(z, axis) for z in indices]
        ms = [as_mask(m, plane) for m in masks]
        params: dict[str, Any] = {"indices": ",".join(map(str, idx)), "encoding": "bits"}
        if axis is not None:
            params["axis"] = axis
        return params, pack(ms)

    def annotate(self, index: int, mask: Any, axis: Optional[int] = None) -> None:
        self.annotate_many([index], [mask], axis=axis)

    def annotate_many(self, indices: Sequence[int], masks: Sequence[Any], axis: Optional[int] = None) -> None:
        """Several slices in one request (all or none are applied)."""
        params, body = self._slices_body(indices, masks, axis)
        self._call("POST", "/slices", params=params, content=body, headers={"Content-Type": "application/octet-stream"})

    def erase(self, index: int, axis: Optional[int] = None) -> None:
        params = {"axis": axis} if axis is not None else {}
        self._call("DELETE", f"/slices/{int(index)}", params=params)

    def undo(self) -> None:
        self._call("POST", "/undo")

    def propose(
        self, k: int, extent: Optional[tuple[int, int]] = None, rule: Optional[str] = None, return_timings: bool = False
    ) -> Any:
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise E.InputError(f"k must be an int >= 1, got {k!r}")
        if extent is not None:
            self.set_extent(*extent)
        params: dict[str, Any] = {"k": int(k)}
        if rule is not None:
            params["rule"] = rule
        out = self._call("GET", "/proposals", params=params).json()
        t = self._record("propose", out.get("timings"))
        return (out["slices"], t) if return_timings else out["slices"]

    def propagate(self, return_timings: bool = False) -> Any:
        r = self._call("POST", "/propagate", params={"arrays": True})
        meta, payload = unframe(r.content)
        qc = frame_array(meta, payload)
        out = (qc[0].copy(), qc[1].copy())
        t = self._record("propagate", meta.get("timings"))
        return (out, t) if return_timings else out

    # --- learning ---------------------------------------------------------------------------
    def learn_async(self, steps: Optional[int] = None) -> Future:
        """Start a learning job; a Future of its timing dict (polled in a thread)."""
        if steps is not None and (not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 0):
            raise E.InputError(f"steps must be an int >= 0, got {steps!r}")
        params = {"steps": int(steps)} if steps is not None else {}
        job = self._call("POST", "/learn", params=params).json()
        self.rounds += 1
        fut: Future = Future()
        fut.set_running_or_notify_cancel()
        limit = self.engine.timeouts["learn"]
        read = self.engine.timeouts["read"]

        def poll():
            deadline = time.monotonic() + limit
            try:
                while True:
                    wait = max(0.0, min(20.0, deadline - time.monotonic()))
                    st = self._call(
                        "GET",
                        f"/jobs/{job['job_id']}",
                        params={"wait": wait},
                        timeout=httpx.Timeout(read + wait, connect=self.engine.timeouts["connect"]),
                    ).json()
                    if st["state"] == "done":
                        fut.set_result(self._record("learn", st.get("timings")))
                        return
                    if st["state"] == "failed":
                        fut.set_exception(
                            E.from_response(409, {"error": st.get("error"), "message": st.get("message")})
                        )
                        return
                    if time.monotonic() >= deadline:
                        raise E.NetworkError(f"learning job {job['job_id']} still running after {limit} s")
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                fut.set_exception(exc)

        threading.Thread(target=poll, name="dilseg-learn-poll", daemon=True).start()
        self._learning = fut
        return fut

    def learn(self, steps: Optional[int] = None, return_timings: bool = False) -> Any:
        t = self.learn_async(steps).result()
        return t if return_timings else None

    # --- results ---------------------------------------------------------------------------
    def _absorb(self, kind: str, meta: dict, payload: bytes) -> np.ndarray:
        etag, base = self._cache.get(kind, (None, None))
        arr = apply_crop(base if meta.get("base") == etag else None, meta, payload)
        self._cache[kind] = (meta["etag"], arr)
        return arr

    def _versioned(self, kind: str, tail: str, params: dict) -> tuple[np.ndarray, dict]:
        etag, cached = self._cache.get(kind, (None, None))
        headers = {}
        if etag is not None:
            params = dict(params, since=etag)
            headers["If-None-Match"] = f'"{etag}"'
        r = self._call("GET", tail, params=params, headers=headers)
        if r.status_code == 304:
            return cached.copy(), {}
        meta, payload = unframe(r.content)
        return self._absorb(kind, meta, payload).copy(), meta.get("timings", {})

    def predict(self, return_timings: bool = False) -> Any:
        p, t = self._versioned("prediction", "/prediction", {})
        t = self._record("predict", t)
        return (p, t) if return_timings else p

    def result(self, return_timings: bool = False, soft: bool = False) -> Any:
        kind = "soft" if soft else "result"
        f, t = self._versioned(kind, "/result", {"soft": soft})
        t = self._record("result", t)
        return (f, t) if return_timings else f

    def result_file(self, format: str = "nifti") -> bytes:
        """The fused mask as a NIfTI / NRRD file (with the uploaded file's geometry)."""
        return self._call("GET", "/result", params={"format": format}).content

    def round(
        self,
        indices: Sequence[int] = (),
        masks: Sequence[Any] = (),
        axis: Optional[int] = None,
        steps: Optional[int] = None,
        k: int = 0,
        rule: Optional[str] = None,
        extent: Optional[tuple[int, int]] = None,
    ) -> tuple[np.ndarray, list[int]]:
        """One round in one request: annotate ``masks`` at ``indices``, propagate,
        learn ``steps``, fuse; returns ``(result, next k proposals)``."""
        params: dict[str, Any] = {"k": int(k)}
        body = b""
        if len(indices):
            p, body = self._slices_body(indices, masks, axis)
            params.update(p)
        if steps is not None:
            params["steps"] = int(steps)
        if rule is not None:
            params["rule"] = rule
        if extent is not None:
            params["first"], params["last"] = int(extent[0]), int(extent[1])
        etag, _ = self._cache.get("result", (None, None))
        if etag is not None:
            params["since"] = etag
        r = self._call(
            "POST", "/round", params=params, content=body, headers={"Content-Type": "application/octet-stream"}
        )
        meta, payload = unframe(r.content)
        self.rounds += 1
        self._record("round", meta.get("timings"))
        return self._absorb("result", meta, payload).copy(), meta.get("proposals", [])

    # --- end ---------------------------------------------------------------------------------
    def commit(self, final_mask: Any = None) -> None:
        """Commit the case (optionally with the person's corrected 3D mask)."""
        body = b""
        if final_mask is not None:
            body = pack([as_mask(final_mask, self.shape, "final_mask")])
        self._call(
            "POST",
            "/commit",
            params={"format": "bits"},
            content=body,
            headers={"Content-Type": "application/octet-stream"},
        )
        self._closed = True

    def close(self) -> None:
        if self._closed:
            return
        try:
            self._call("DELETE")
        except E.SessionClosedError:
            pass
        self._closed = True

    def __enter__(self) -> "RemoteSession":
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self._closed:
            self.close()
