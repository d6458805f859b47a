"""What one request and one engine may ask for; checked before a body is read."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class Limits:
    """Server limits (``dilseg serve --limit NAME=VALUE`` overrides each).

    max_body_bytes: request bodies larger than this get 413; a declared
        ``Content-Length`` over it is refused before a byte is read, a chunked body
        is cut off as soon as it passes it.
    max_voxels: volumes (session images, uploads) with more voxels get 413.
    max_slices_per_request: masks one annotate / round request may carry.
    max_steps_per_call: learning steps one learn / round request may ask for.
    max_sessions: open sessions per engine; one more gets 503 with Retry-After.
    idle_timeout_s: a session with no request but heartbeats for this long expires.
    lease_timeout_s: a session with no request or heartbeat for this long expires
        (the client died).
    max_wait_s: longest a job query may wait for the job (``?wait=``).
    """

    max_body_bytes: int = 256 * 1024 * 1024
    max_voxels: int = 512 * 512 * 512
    max_slices_per_request: int = 64
    max_steps_per_call: int = 500
    max_sessions: int = 16
    idle_timeout_s: float = 1800.0
    lease_timeout_s: float = 120.0
    max_wait_s: float = 60.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_items(cls, items: list[str]) -> "Limits":
        """``["max_sessions=4", ...]`` -> Limits (ValueError names a bad item)."""
        lim = cls()
        types = {f.name: f.type for f in fields(cls)}
        for item in items:
            name, _, value = item.partition("=")
            name = name.strip().replace("-", "_")
            if name not in types or not value:
                raise ValueError(f"unknown limit {item!r}; known: {sorted(types)}")
            conv = float if "float" in str(types[name]) else int
            v = conv(value)
            if v <= 0:
                raise ValueError(f"limit {name} must be > 0, got {value}")
            setattr(lim, name, v)
        return lim
