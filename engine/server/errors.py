"""Engine errors -> HTTP status codes, and the JSON error body every route returns.

======================================  ======  =====================================
error                                   status  meaning
======================================  ======  =====================================
``InputError`` and subclasses           422     the request's data is wrong
(``ShapeError``, ``DTypeError``,
``NonFiniteError``, ``MaskError``,
``SliceIndexError``), ``DataError``
``StateError``, ``BusyError``           409     not valid now / a learn job is running
``SessionClosedError``                  410     the lease expired or was closed
``BackendError``                        503     a compute backend is missing
``CapacityError``                       503     too many sessions (``Retry-After``)
``TooLargeError``                       413     body / volume / request over a limit
``AuthError``                           401     no valid key
``ForbiddenError``                      403     someone else's session, or not admin
``NotFoundError``                       404     no such session / job / image
``CheckpointError``                     500     the state folder is broken
======================================  ======  =====================================

Body: ``{"error": "<class name>", "message": "...", "status": <code>}``; the client
re-raises ``error`` as the class of the same name.
"""

from __future__ import annotations

from typing import Optional

from .. import errors as E


class ServerError(E.DilsegError):
    """Errors the server raises itself (not the engine)."""

    status = 500

    def __init__(self, message: str, retry_after: Optional[int] = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooLargeError(ServerError, E.InputError):
    status = 413


class CapacityError(ServerError, E.BusyError):
    status = 503


class AuthError(ServerError):
    status = 401


class ForbiddenError(ServerError):
    status = 403


class NotFoundError(ServerError, E.StateError):
    status = 404


#: engine error class -> status; the first match along the class's MRO wins
STATUS = [
    (E.SessionClosedError, 410),
    (E.InputError, 422),
    (E.DataError, 422),
    (E.BusyError, 409),
    (E.StateError, 409),
    (E.BackendError, 503),
    (E.CheckpointError, 500),
    (E.NetworkError, 503),
]


def status_of(exc: BaseException) -> int:
    if isinstance(exc, ServerError):
        return exc.status
    for cls, code in STATUS:
        if isinstance(exc, cls):
            return code
    return 500


def error_body(exc: BaseException, status: Optional[int] = None) -> dict:
    name = type(exc).__name__
    return {"error": name, "message": str(exc), "status": status or status_of(exc)}
