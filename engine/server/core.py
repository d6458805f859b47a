"""What every route shares: :class:`ServerState` (the engine, its state folder, keys,
limits, leases, the stream's datastore), the two ASGI gates that run before any route
(:class:`BodyLimit`: 413 before a body is read; :class:`AuthGate`: 401 without a valid
key) and :func:`read_body`. Routes (:mod:`.v1`, :mod:`.monai`) import this module, the
app factory (:mod:`.app`) imports them: imports go one way.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from .. import errors as E
from .auth import ANONYMOUS, KeyStore, Principal, bearer
from .errors import AuthError, TooLargeError, error_body, status_of
from .leases import LeaseTable
from .limits import Limits
from .state import StateDir
from .web import is_public as web_is_public

#: routes anyone may call without a key
PUBLIC = {"/v1/health", "/auth/", "/auth/token", "/docs", "/openapi.json", "/docs/oauth2-redirect"}


class ServerState:
    """Everything the routes share: the engine, its state folder, keys, limits, leases."""

    def __init__(
        self, engine: Any, state: Optional[StateDir], keys: Optional[KeyStore], limits: Limits, owns_engine: bool
    ) -> None:
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
            from .datastore import Datastore

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
            msg = (
                f"request body of {length} bytes is over the server's limit of {self.limit}"
                if length >= 0
                else "Content-Length is not a number"
            )
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
