"""Sessions as leases: an owner, an idle and a liveness deadline, a lock, jobs.

A lease expires when no request came for ``Limits.idle_timeout_s`` (heartbeats do
not count: the person walked away) or no request nor heartbeat for
``Limits.lease_timeout_s`` (the client died). An expired or closed lease is
remembered (a tombstone) so that later calls get 410, not 404.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Optional

from .. import errors as E
from .errors import CapacityError, ForbiddenError, NotFoundError

TOMBSTONES = 4096
VERSIONS = 2  # result / prediction / proxy versions kept per lease for changed-bbox crops (the client's and the newest)


@dataclass
class Job:
    id: str
    future: Future
    steps: int
    started: float = field(default_factory=time.time)

    def to_dict(self) -> dict:
        f = self.future
        out: dict[str, Any] = {"job_id": self.id, "steps": self.steps, "started": self.started}
        if not f.done():
            out["state"] = "running"
        elif f.exception() is not None:
            exc = f.exception()
            out.update(state="failed", error=type(exc).__name__, message=str(exc))
        else:
            out.update(state="done", timings=dict(f.result()))
        return out


class Lease:
    """One open session and what the server keeps around it."""

    def __init__(self, session: Any, owner: str, like: Any = None, meta: Optional[dict] = None) -> None:
        self.id = "s_" + secrets.token_urlsafe(12)
        self.session = session
        self.owner = owner
        self.like = like  # engine.io.volumes.Volume of an uploaded file (geometry for results)
        self.meta = dict(meta or {})
        now = time.monotonic()
        self.created = time.time()
        self.last_used = now
        self.last_seen = now
        self.lock = asyncio.Lock()
        self.jobs: "OrderedDict[str, Job]" = OrderedDict()
        self.versions: dict[str, "OrderedDict[str, Any]"] = {
            "result": OrderedDict(),
            "soft": OrderedDict(),
            "prediction": OrderedDict(),
            "proxy": OrderedDict(),
        }

    def touch(self, work: bool = True) -> None:
        now = time.monotonic()
        self.last_seen = now
        if work:
            self.last_used = now

    def remember(self, kind: str, etag: str, array: Any) -> None:
        v = self.versions[kind]
        v[etag] = array
        v.move_to_end(etag)
        while len(v) > VERSIONS:
            v.popitem(last=False)

    def running_job(self) -> Optional[Job]:
        for j in self.jobs.values():
            if not j.future.done():
                return j
        return None

    def add_job(self, fut: Future, steps: int) -> Job:
        job = Job("j_" + secrets.token_urlsafe(8), fut, steps)
        self.jobs[job.id] = job
        while len(self.jobs) > 16:
            self.jobs.popitem(last=False)
        return job


class LeaseTable:
    """Open leases of one engine, with capacity and expiry."""

    def __init__(self, limits: Any) -> None:
        self.limits = limits
        self._open: dict[str, Lease] = {}
        self._gone: "OrderedDict[str, str]" = OrderedDict()  # id -> why
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._open)

    def reserve(self) -> None:
        """Raise CapacityError when no session can be opened now."""
        if len(self._open) >= self.limits.max_sessions:
            raise CapacityError(
                f"{len(self._open)} sessions are open, the limit is {self.limits.max_sessions}; retry later",
                retry_after=max(1, int(min(30.0, self.limits.lease_timeout_s))),
            )

    def add(self, lease: Lease) -> Lease:
        with self._lock:
            self.reserve()
            self._open[lease.id] = lease
        return lease

    def get(self, lease_id: str, principal: Any) -> Lease:
        lease = self._open.get(lease_id)
        if lease is None:
            why = self._gone.get(lease_id)
            if why is not None:
                raise E.SessionClosedError(f"session {lease_id} is {why}")
            raise NotFoundError(f"no session {lease_id}")
        if lease.owner != principal.name:
            raise ForbiddenError(f"session {lease_id} belongs to another key")
        return lease

    def find(self, pred) -> Optional[Lease]:
        for lease in list(self._open.values()):
            if pred(lease):
                return lease
        return None

    def drop(self, lease_id: str, why: str) -> Optional[Lease]:
        with self._lock:
            lease = self._open.pop(lease_id, None)
            if lease is not None:
                self._gone[lease_id] = why
                while len(self._gone) > TOMBSTONES:
                    self._gone.popitem(last=False)
        return lease

    def expired(self) -> list[Lease]:
        """Leases past a deadline (not removed; the caller closes and drops them)."""
        now = time.monotonic()
        out = []
        for lease in list(self._open.values()):
            if lease.lock.locked():
                continue  # a request is using it right now
            if (
                now - lease.last_used > self.limits.idle_timeout_s
                or now - lease.last_seen > self.limits.lease_timeout_s
            ):
                out.append(lease)
        return out

    def all(self) -> list[Lease]:
        return list(self._open.values())
