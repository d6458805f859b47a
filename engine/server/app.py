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
from typing import Any, Optional, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import errors as E
from .auth import KeyStore
from .context import ServerState
from .errors import AuthError, TooLargeError, error_body, status_of
from .limits import Limits
from .state import StateDir

log = logging.getLogger("dilseg.server")

#: routes anyone may call without a key
PUBLIC = {"/v1/health", "/auth/", "/auth/token", "/docs", "/openapi.json", "/docs/oauth2-redirect"}


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
        if scope.get("path") in PUBLIC:
            state["principal"] = None
        else:
            try:
                state["principal"] = self.srv.principal(Request(scope))
            except AuthError as exc:
                resp = JSONResponse(error_body(exc), status_code=401, headers={"WWW-Authenticate": "Bearer"})
                return await resp(scope, receive, send)
        return await self.app(scope, receive, send)


def create_app(engine_or_state: Union[Any, str, os.PathLike, None] = None, keys: Optional[KeyStore] = None,
               limits: Optional[Limits] = None, config: Any = None, monai: bool = True,
               reap_interval_s: float = 1.0) -> FastAPI:
    """The FastAPI app for one engine.

    ``engine_or_state``: an :class:`engine.Engine` (served as it is, never saved), a
    state folder path (the engine is loaded from it, or built from ``config`` when
    it is empty, and saved after every commit and at shutdown), or None (a fresh
    engine from ``config``, not saved). ``keys``: a :class:`KeyStore` (None: no
    auth, for loopback use). ``limits``: :class:`Limits`.
    """
    from .. import __version__

    limits = limits or Limits()
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
