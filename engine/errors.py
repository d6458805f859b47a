"""Typed errors raised by dilseg.

Every error names the problem; operations that raise leave the engine and session
state as they were before the call.
"""


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
    """The session was closed (or committed) and accepts no further calls."""


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
    """A download failed because the network is unreachable or the server refused."""
