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
from .core import AuthGate, BodyLimit, ServerState
from .errors import error_body, status_of
from .limits import Limits
from .state import StateDir

log = logging.getLogger("dilseg.server")


def create_app(
    engine_or_state: Union[Any, str, os.PathLike, None] = None,
    keys: Optional[KeyStore] = None,
    limits: Optional[Limits] = None,
    config: Any = None,
    monai: bool = True,
    reap_interval_s: float = 1.0,
    web: Union[str, os.PathLike, None] = None,
) -> FastAPI:
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

    app = FastAPI(
        title="dilseg",
        version=__version__,
        lifespan=lifespan,
        description="Interactive 3D segmentation that learns while people annotate. "
        "Native API under /v1; a MONAI Label compatible subset at the root.",
    )
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
        return JSONResponse(
            {"error": "InputError", "message": "; ".join(parts) or "invalid request", "status": 422}, status_code=422
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        names = {404: "NotFoundError", 405: "MethodNotAllowed", 401: "AuthError", 403: "ForbiddenError"}
        return JSONResponse(
            {"error": names.get(exc.status_code, "HTTPError"), "message": str(exc.detail), "status": exc.status_code},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

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
