"""What every route module shares: the server's state and the limited body reader
(kept apart from :mod:`engine.server.app`, which mounts the route modules)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from .. import errors as E
from .auth import ANONYMOUS, KeyStore, Principal, bearer
from .errors import AuthError, TooLargeError
from .leases import LeaseTable
from .limits import Limits
from .state import StateDir

__all__ = ["ServerState", "read_body"]


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
