"""Mirror of ``engine.errors`` (same names, same hierarchy) plus the server's own
errors, so code written against ``engine.Session`` catches the same classes."""


class DilsegError(Exception):
    """Base class of every error raised by dilseg on purpose."""


class InputError(DilsegError, ValueError):
    """An argument has the wrong shape, dtype, value range or device."""


class ShapeError(InputError):
    """Array shapes do not match what the call needs."""


class DTypeError(InputError, TypeError):
    """An array has a dtype the call does not accept."""


class NonFiniteError(InputError):
    """An array holds NaN or Inf where finite values are required."""


class MaskError(InputError):
    """A mask is not binary, or is empty where a non-empty mask is required."""


class SliceIndexError(InputError, IndexError):
    """A slice index is out of range, or on an axis the session does not use."""


class SessionClosedError(DilsegError, RuntimeError):
    """The session was closed, committed or its lease expired (HTTP 410)."""


class BusyError(DilsegError, RuntimeError):
    """A conflicting operation (e.g. another learn call) is already running."""


class StateError(DilsegError, RuntimeError):
    """The call is not valid in the session's current state (e.g. nothing annotated)."""


class BackendError(DilsegError, RuntimeError):
    """A requested compute backend is not available."""


class CheckpointError(DilsegError, RuntimeError):
    """A checkpoint is missing, truncated, corrupted or of an unknown version."""


class DataError(DilsegError, OSError):
    """A data file or folder is unreadable or inconsistent."""


class NetworkError(DilsegError, ConnectionError):
    """The server could not be reached, or the connection broke."""


# --- the server's own errors -----------------------------------------------------
class ServerError(DilsegError):
    """An error the server reported that has no engine class."""

    status = 500


class TooLargeError(ServerError, InputError):
    """A body, volume, slice count or step count over the server's limits (413)."""


class CapacityError(ServerError, BusyError):
    """The server holds as many sessions as it may (503; ``retry_after`` seconds)."""


class AuthError(ServerError):
    """No valid key (401)."""


class ForbiddenError(ServerError):
    """The session belongs to another key, or the call needs an admin key (403)."""


class NotFoundError(ServerError, StateError):
    """No such session, job or image (404)."""


_BY_NAME = {c.__name__: c for c in list(globals().values()) if isinstance(c, type) and issubclass(c, DilsegError)}


def from_response(status: int, body: dict | None, text: str = "") -> DilsegError:
    """The error class the server named (by status when it named none)."""
    name = (body or {}).get("error")
    msg = (body or {}).get("message") or text or f"HTTP {status}"
    cls = _BY_NAME.get(name)
    if cls is None:
        cls = {
            401: AuthError,
            403: ForbiddenError,
            404: NotFoundError,
            409: StateError,
            410: SessionClosedError,
            413: TooLargeError,
            422: InputError,
            503: CapacityError,
        }.get(status, ServerError)
    exc = cls(msg)
    exc.status = status
    return exc
