"""Bearer keys with roles; the keys file stores only their SHA-256 hashes.

``dilseg keys add NAME --role annotator|admin --file FILE`` prints a new key once
(``dsk_`` + 32 random bytes, URL-safe base64); ``FILE`` (JSON, mode 0600) keeps
``{"keys": [{"name", "role", "sha256", "created"}]}``. A key of 32 random bytes
needs no slow hash: SHA-256 of it cannot be inverted or guessed, and a stolen file
gives no key. Lookups hash the presented token and compare it with every stored
hash with :func:`hmac.compare_digest` (constant time, no early exit over entries).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .._files import commit_file

ROLES = ("annotator", "admin")
PREFIX = "dsk_"


@dataclass(frozen=True)
class Principal:
    """Who a request is: the key's name and role."""

    name: str
    role: str

    @property
    def admin(self) -> bool:
        return self.role == "admin"


#: the principal of every request when the server runs without keys (loopback only)
ANONYMOUS = Principal("anonymous", "admin")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class KeyStore:
    """Keys loaded from a keys file (or given in memory, for tests)."""

    def __init__(self, entries: Optional[list[dict]] = None, path: Optional[Path] = None) -> None:
        self.path = Path(path) if path is not None else None
        self._entries: list[dict] = []
        self._lock = threading.Lock()
        for e in entries or []:
            self._check_entry(e)
            self._entries.append(dict(e))

    @staticmethod
    def _check_entry(e: dict) -> None:
        if not isinstance(e, dict) or e.get("role") not in ROLES or not isinstance(e.get("name"), str):
            raise ValueError(f"bad key entry {e!r}")
        h = e.get("sha256")
        if not isinstance(h, str) or len(h) != 64:
            raise ValueError(f"key {e.get('name')!r} has no sha256 hash")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "KeyStore":
        path = Path(path)
        try:
            data = json.loads(path.read_text()) if path.exists() else {"keys": []}
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read keys file {path}: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise ValueError(f"keys file {path} has no 'keys' list")
        return cls(data["keys"], path)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def names(self) -> list[str]:
        return [e["name"] for e in self._entries]

    def add(self, name: str, role: str) -> str:
        """A new key for ``name``; returns the key (the only time it exists in clear)."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ValueError(f"key name must be letters, digits, '-', '_' or '.', got {name!r}")
        token = PREFIX + secrets.token_urlsafe(32)
        with self._lock:
            if name in self.names:
                raise ValueError(f"a key named {name!r} exists; remove it first")
            self._entries.append(
                {
                    "name": name,
                    "role": role,
                    "sha256": _digest(token),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }
            )
            self._save()
        return token

    def remove(self, name: str) -> bool:
        with self._lock:
            n = len(self._entries)
            self._entries = [e for e in self._entries if e["name"] != name]
            changed = len(self._entries) != n
            if changed:
                self._save()
        return changed

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w") as f:  # created 0600: only the server's user reads the hashes
                json.dump({"keys": self._entries}, f, indent=1)
            commit_file(tmp, self.path)  # fsync, atomic rename, fsync the folder
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def verify(self, token: Optional[str]) -> Optional[Principal]:
        """The principal of ``token``, or None. Every entry is compared (constant time
        per entry, no early exit)."""
        if not token:
            return None
        want = _digest(token)
        found = None
        for e in self._entries:
            if hmac.compare_digest(want, e["sha256"]):
                found = e
        return Principal(found["name"], found["role"]) if found is not None else None


def bearer(header: Optional[str]) -> Optional[str]:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
