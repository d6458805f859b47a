"""Lazy discovery of the compiled and Triton backends.

Nothing here runs at ``import engine``: each backend is loaded the first time an op
needs it (or when :func:`backends` is called), and the outcome, including the reason
for a failure, is cached and reported by :func:`backends`.

Backends:
  ``cpu``     the C++/OpenMP module ``engine._C`` (CPU kernels)
  ``cuda``    the CUDA module ``engine._C_cuda`` (needs a CUDA build and a visible GPU)
  ``triton``  the Triton kernels in ``engine.kernels`` (needs triton and a GPU, or
              ``TRITON_INTERPRET=1`` for the interpreter on CPU tensors)
  ``reference`` the pure-torch implementations, always available

Per op, which of these it declares and which serves now: ``engine.ops.backend_table()``.

Environment (read at call time, never at import):
  ``ENGINE_NO_EXTENSION=1``  do not load ``engine._C`` / ``engine._C_cuda`` even if built
  ``ENGINE_GPU_BACKEND``     ``auto`` (default) | ``cuda`` | ``triton`` | ``reference``:
                             which implementation serves CUDA tensors. ``auto`` takes the
                             CUDA kernel when ``engine._C_cuda`` loaded, else Triton, else
                             the reference.
  ``ENGINE_CPU_BACKEND``     ``auto`` (default) | ``cpu`` | ``reference``: which
                             implementation serves CPU tensors.
"""

from __future__ import annotations

import importlib
import os
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Optional

__all__ = ["backends", "load", "missing", "gpu_choice", "cpu_choice", "warn_once", "BackendStatus"]


@dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    detail: str

    def __str__(self) -> str:  # pragma: no cover - formatting only
        state = "yes" if self.available else "no"
        return f"{self.name:9s} {state:3s}  {self.detail}"


_lock = threading.Lock()
_cache: dict[str, tuple[Optional[Any], BackendStatus]] = {}
_warned: set[str] = set()


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _load_module(name: str, modname: str) -> tuple[Optional[Any], BackendStatus]:
    if _truthy("ENGINE_NO_EXTENSION"):
        return None, BackendStatus(name, False, "disabled by ENGINE_NO_EXTENSION=1")
    try:
        mod = importlib.import_module(modname)
    except ImportError as exc:
        return None, BackendStatus(
            name, False, f"{modname} not built or not loadable ({exc.__class__.__name__}: {exc})"
        )
    info = getattr(mod, "build_info", lambda: {})()
    return mod, BackendStatus(name, True, f"{modname} loaded ({', '.join(f'{k}={v}' for k, v in info.items())})")


def _load_cuda() -> tuple[Optional[Any], BackendStatus]:
    mod, status = _load_module("cuda", "engine._C_cuda")
    if mod is None:
        return None, status
    import torch

    if not torch.cuda.is_available():
        return None, BackendStatus("cuda", False, "engine._C_cuda built, but torch sees no CUDA device")
    return mod, status


def _load_triton() -> tuple[Optional[Any], BackendStatus]:
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return None, BackendStatus("triton", False, f"triton not importable ({exc})")
    import torch

    interp = _truthy("TRITON_INTERPRET")
    if not torch.cuda.is_available() and not interp:
        return None, BackendStatus(
            "triton",
            False,
            f"triton {triton.__version__} present, but no CUDA device (TRITON_INTERPRET=1 runs it on CPU)",
        )
    mod = importlib.import_module("engine.kernels")
    mode = "interpreter" if interp else "compiled"
    return mod, BackendStatus("triton", True, f"triton {triton.__version__} ({mode})")


_LOADERS = {
    "cpu": lambda: _load_module("cpu", "engine._C"),
    "cuda": _load_cuda,
    "triton": _load_triton,
}


def load(name: str) -> Optional[Any]:
    """Return the backend module ``name`` (``cpu``, ``cuda``, ``triton``) or None."""
    hit = _cache.get(name)  # lock-free once loaded: every op call comes through here
    if hit is not None:
        return hit[0]
    with _lock:
        if name not in _cache:
            _cache[name] = _LOADERS[name]()
        return _cache[name][0]


_UNITS: dict[tuple[str, str], Optional[str]] = {}


def missing(name: str, unit: str) -> Optional[str]:
    """None when backend ``name`` loaded and implements the kernels of ``unit`` (an
    op's csrc/<unit> folder), else why not; cached until :func:`reset`. Compiled modules
    list the ops they were built with (CMake generates the list); the Triton package
    implements every op that declares a Triton kernel."""
    key = (name, unit)
    if key in _UNITS:
        return _UNITS[key]
    mod = load(name)
    if mod is None:
        why: Optional[str] = status(name).detail
    elif name != "triton" and unit not in mod.ops:
        why = f"engine.{'_C' if name == 'cpu' else '_C_cuda'} was built without this op"
    else:
        why = None
    _UNITS[key] = why
    return why


def status(name: str) -> BackendStatus:
    load(name)
    return _cache[name][1]


def reset() -> None:
    """Forget cached load results (tests flip environment variables)."""
    with _lock:
        _cache.clear()
        _UNITS.clear()
        _warned.clear()


def backends() -> dict[str, BackendStatus]:
    """Load every backend once and report what loaded and why others did not."""
    out = {name: status(name) for name in _LOADERS}
    out["reference"] = BackendStatus("reference", True, "pure torch, always available")
    return out


def warn_once(key: str, message: str) -> None:
    with _lock:
        if key in _warned:
            return
        _warned.add(key)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


_GPU_CHOICES = ("auto", "cuda", "triton", "reference")
_CPU_CHOICES = ("auto", "cpu", "reference")


_ENCODED: dict[str, Any] = {}


def _env(name: str) -> Optional[str]:
    """``os.environ.get(name)`` without its cost on the op path: an unset variable
    makes ``Mapping.get`` raise and catch a KeyError (~1 us); CPython's ``os.environ``
    keeps the encoded pairs in ``_data``, a plain dict (read at every call all the same)."""
    data = getattr(os.environ, "_data", None)
    if not isinstance(data, dict):
        return os.environ.get(name)
    key = _ENCODED.get(name)
    if key is None:
        key = _ENCODED[name] = os.environ.encodekey(name)
    v = data.get(key)
    return None if v is None else os.environ.decodevalue(v)


def gpu_choice() -> str:
    """The requested implementation for CUDA tensors (``ENGINE_GPU_BACKEND``)."""
    v = _env("ENGINE_GPU_BACKEND")
    if v is None:
        return "auto"
    v = v.strip().lower() or "auto"
    if v not in _GPU_CHOICES:
        from .errors import BackendError

        raise BackendError(f"ENGINE_GPU_BACKEND={v!r}; expected one of {_GPU_CHOICES}")
    return v


def cpu_choice() -> str:
    """The requested implementation for CPU tensors (``ENGINE_CPU_BACKEND``)."""
    v = _env("ENGINE_CPU_BACKEND")
    if v is None:
        return "auto"
    v = v.strip().lower() or "auto"
    if v not in _CPU_CHOICES:
        from .errors import BackendError

        raise BackendError(f"ENGINE_CPU_BACKEND={v!r}; expected one of {_CPU_CHOICES}")
    return v
