"""The app factory: ``create_app(engine_or_state, keys=..., limits=...)``.

One engine per app. Engine calls run in the thread pool (``run_in_threadpool``), so
the event loop keeps answering health checks and heartbeats while a round computes;
each session's calls are serialised by its lease's lock; learning jobs are
serialised by the engine itself (one optimiser).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import errors as E
from .auth import ANONYMOUS, KeyStore, Principal, bearer
from .errors import AuthError, TooLargeError, error_body, status_of
from .leases import LeaseTable
from .limits import Limits
from .state import StateDir
from .web import is_public as web_is_public

log = logging.getLogger("dilseg.server")

#: routes anyone may call without a key
PUBLIC = {"/v1/health", "/auth/", "/auth/token", "/docs", "/openapi.json", "/docs/oauth2-redirect"}


class ServerState:
    """Everything the routes share: the engine, its state folder, keys, limits, leases."""

    def __init__(self, engine: Any, state: Optional[StateDir], keys: Optional[KeyStore], limits: Limits,
                 owns_engine: bool) -> None:
        self.engine = engine
        self.state = state
        self.keys = keys
        self.limits = limits
        self.leases = LeaseTable(limits)
        self.owns_engine = owns_engine
        self.started = time.time()
        self.saves = 0
        if state is not None:
            self.datastore_dir = state.datastore
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="dilseg-datastore-")
            self.datastore_dir = Path(self._tmp.name)
        self.datastore_dir.mkdir(parents=True, exist_ok=True)
        self._datastore: Any = None
        self.web_dir: Optional[Path] = None  # the page's build folder when served (--web)

    @property
    def datastore(self) -> Any:
        """The MONAI Label datastore (images of the stream and their final labels),
        shared by the MONAI routes and ``/v1`` sessions opened on a stream image."""
        if self._datastore is None:
            from .monai import Datastore

            self._datastore = Datastore(self.datastore_dir)
        return self._datastore

    @property
    def auth_enabled(self) -> bool:
        return self.keys is not None

    def principal(self, request: Request) -> Principal:
        if self.keys is None:
            return ANONYMOUS
        p = self.keys.verify(bearer(request.headers.get("authorization")))
        if p is None:
            raise AuthError("a valid bearer key is required (Authorization: Bearer <key>)")
        return p

    def save_now(self) -> bool:
        """Save the engine into the state folder (blocking; call it in a thread)."""
        if self.state is None:
            return False
        self.state.save(self.engine)
        self.saves += 1
        return True

    async def save(self) -> bool:
        return await run_in_threadpool(self.save_now)


# ----------------------------------------------------------------------------- body limit
class BodyLimit:
    """ASGI middleware: 413 for a declared ``Content-Length`` over the limit before any
    byte is read; a chunked body is cut off once it passes the limit."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = None
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    length = int(v)
                except ValueError:
                    length = -1
        if length is not None and (length < 0 or length > self.limit):
            msg = (f"request body of {length} bytes is over the server's limit of {self.limit}" if length >= 0
                   else "Content-Length is not a number")
            exc = TooLargeError(msg) if length >= 0 else E.InputError(msg)
            resp = JSONResponse(error_body(exc), status_code=status_of(exc), headers={"Connection": "close"})
            return await resp(scope, receive, send)
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise TooLargeError(f"request body passed the server's limit of {self.limit} bytes")
            return msg

        async def tracking_send(msg):
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except TooLargeError as exc:
            if started:
                raise
            resp = JSONResponse(error_body(exc), status_code=413, headers={"Connection": "close"})
            await resp(scope, receive, send)


class AuthGate:
    """ASGI middleware: 401 for a request without a valid bearer key (public routes
    aside); the principal goes to ``request.state.principal``."""

    def __init__(self, app: Any, srv: "ServerState") -> None:
        self.app = app
        self.srv = srv

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = scope.setdefault("state", {})
        path = scope.get("path")
        if path in PUBLIC or (self.srv.web_dir is not None and web_is_public(path)):
            state["principal"] = None
        else:
            try:
                state["principal"] = self.srv.principal(Request(scope))
            except AuthError as exc:
                resp = JSONResponse(error_body(exc), status_code=401, headers={"WWW-Authenticate": "Bearer"})
                return await resp(scope, receive, send)
        return await self.app(scope, receive, send)


async def read_body(request: Request, expected: Optional[int] = None, limit: Optional[int] = None) -> bytes:
    """The request body, refusing before reading it when the declared length is not
    ``expected`` (422) or over ``limit`` (413)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        n = int(declared)
        if limit is not None and n > limit:
            raise TooLargeError(f"request body of {n} bytes is over the limit of {limit}")
        if expected is not None and n != expected:
            raise E.ShapeError(f"request body has {n} bytes, {expected} expected")
    chunks = []
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if limit is not None and seen > limit:
            raise TooLargeError(f"request body passed the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


# ----------------------------------------------------------------------------- factory
def create_app(engine_or_state: Union[Any, str, os.PathLike, None] = None, keys: Optional[KeyStore] = None,
               limits: Optional[Limits] = None, config: Any = None, monai: bool = True,
               reap_interval_s: float = 1.0, web: Union[str, os.PathLike, None] = None) -> FastAPI:
    """The FastAPI app for one engine.

    ``engine_or_state``: an :class:`engine.Engine` (served as it is, never saved), a
    state folder path (the engine is loaded from it, or built from ``config`` when
    it is empty, and saved after every commit and at shutdown), or None (a fresh
    engine from ``config``, not saved). ``keys``: a :class:`KeyStore` (None: no
    auth, for loopback use). ``limits``: :class:`Limits`. ``web``: the annotation
    page's build folder (``clients/web/dist``, see :mod:`.web`), served under
    ``/web/``; :class:`.web.WebBuildMissing` before anything starts when it is not built.
    """
    from .. import __version__

    limits = limits or Limits()
    web_dir = None
    if web is not None:
        from .web import check_dir

        web_dir = check_dir(web)  # before an engine is built: a missing build fails fast
    state: Optional[StateDir] = None
    owns = True
    if engine_or_state is None:
        from ..api import Engine

        engine = Engine(config)
    elif isinstance(engine_or_state, (str, os.PathLike, StateDir)):
        state = engine_or_state if isinstance(engine_or_state, StateDir) else StateDir(engine_or_state)
        engine = state.load(config)
    else:
        engine, owns = engine_or_state, False
    srv = ServerState(engine, state, keys, limits, owns)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(_reaper(srv, reap_interval_s))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            for lease in srv.leases.all():
                srv.leases.drop(lease.id, "closed (server shutdown)")
                with contextlib.suppress(Exception):
                    await run_in_threadpool(lease.session.close)
            if srv.state is not None:
                with contextlib.suppress(Exception):
                    await srv.save()
            if srv.owns_engine:
                with contextlib.suppress(Exception):
                    engine.close()

    app = FastAPI(title="dilseg", version=__version__, lifespan=lifespan,
                  description="Interactive 3D segmentation that learns while people annotate. "
                              "Native API under /v1; a MONAI Label compatible subset at the root.")
    app.state.srv = srv

    app.add_middleware(AuthGate, srv=srv)
    app.add_middleware(BodyLimit, limit=limits.max_body_bytes)  # outermost: before anything reads the body

    @app.exception_handler(E.DilsegError)
    async def dilseg_error(request: Request, exc: E.DilsegError):
        code = status_of(exc)
        headers = {}
        retry = getattr(exc, "retry_after", None)
        if retry:
            headers["Retry-After"] = str(int(retry))
        if code == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse(error_body(exc, code), status_code=code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        parts = []
        for e in exc.errors()[:5]:
            loc = ".".join(str(x) for x in e.get("loc", ()))
            parts.append(f"{loc}: {e.get('msg')}")
        return JSONResponse({"error": "InputError", "message": "; ".join(parts) or "invalid request",
                             "status": 422}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        names = {404: "NotFoundError", 405: "MethodNotAllowed", 401: "AuthError", 403: "ForbiddenError"}
        return JSONResponse({"error": names.get(exc.status_code, "HTTPError"), "message": str(exc.detail),
                             "status": exc.status_code}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    from . import v1

    app.include_router(v1.router(srv))
    if monai:
        from . import monai as monai_routes

        app.include_router(monai_routes.router(srv))
    if web_dir is not None:
        from .web import mount

        srv.web_dir = mount(app, web_dir)
    return app


async def _reaper(srv: ServerState, interval: float) -> None:
    """Close leases past their idle or liveness deadline."""
    while True:
        await asyncio.sleep(interval)
        for lease in srv.leases.expired():
            srv.leases.drop(lease.id, "expired (no request within the lease's timeout)")
            try:
                await run_in_threadpool(lease.session.close)
            except Exception:  # noqa: BLE001 - a failing close must not stop the reaper
                log.exception("closing expired session %s", lease.id)
