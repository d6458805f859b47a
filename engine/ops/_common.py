"""Plumbing shared by every op: the backend rule, and input validation helpers.

The rule that picks an implementation (documented once, here, and applied by
:meth:`engine.ops._declare.Op.select` to every op):

* CPU tensors: the C++ kernel of ``engine._C`` when it loaded and implements the op,
  else the pure-torch reference. ``ENGINE_CPU_BACKEND=reference`` forces the reference.
* CUDA tensors: with ``ENGINE_GPU_BACKEND=auto`` (default) the CUDA kernel of
  ``engine._C_cuda`` when it loaded and implements the op, else the Triton kernel,
  else the reference. ``cuda`` / ``triton`` / ``reference`` pin one choice.
* Any other device: the reference.
* A kernel may declare a capacity (``Kernel.supports``: a predicate on the call's
  shapes and sizes, never on values): for arguments beyond it the rule moves on to
  the next backend in the order above, silently (the choice is documented and the
  result is the same).

A fallback to the reference because a backend is missing (not built, not loadable,
no device) prints a one-time ``RuntimeWarning`` saying why; a pinned
``...=reference`` never warns. The environment is read at call time, never at
import, so a process can switch backends (tests do).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Optional

import torch

from .. import _backends
from ..checks import check_finite  # noqa: F401  (the op modules use it as C.check_finite)
from ..errors import DTypeError, InputError, NonFiniteError, ShapeError

__all__ = [
    "Kernel",
    "select",
    "acc_dtype",
    "check_tensor",
    "check_finite",
    "check_same_device",
    "same_device",
    "check_out",
    "check_choice",
    "check_number",
    "overlaps",
    "InputError",
    "DTypeError",
    "ShapeError",
    "NonFiniteError",
]

_GPU_ORDER = {"auto": ("cuda", "triton"), "cuda": ("cuda",), "triton": ("triton",), "reference": ()}
# the order in which backends are listed everywhere (declarations, reports)
BACKEND_ORDER = ("cpu", "cuda", "triton")


class Kernel(NamedTuple):
    """One backend's implementation of an op.

    ``fn(*args)`` takes the op's arguments in schema order. ``supports(*args)``, when
    given, returns None for arguments the kernel takes, or a sentence saying why not
    (a capacity such as a shared-memory bound); it must look at metadata only.
    """

    fn: Callable[..., Any]
    supports: Optional[Callable[..., Optional[str]]] = None


def _loaded(backend: str, unit: str) -> Optional[str]:
    """None when ``backend`` loaded and implements ``unit``, else why not."""
    return _backends.missing(backend, unit)


def select(op: str, device: torch.device, kernels: Mapping[str, Kernel], args: tuple = (), unit: str = "") -> str:
    """Name of the implementation that serves ``op`` for ``args`` on ``device`` (the
    rule in the module docstring). ``kernels``: the op's backends besides the
    reference; ``unit``: the name the compiled modules list it under (default ``op``)."""
    kind = device.type
    if kind == "cpu":
        if _backends.cpu_choice() == "reference":
            return "reference"
        k = kernels.get("cpu")
        if k is not None and _loaded("cpu", unit or op) is None and (k.supports is None or k.supports(*args) is None):
            return "cpu"  # the common case, decided without building the order
        order = BACKEND_ORDER[:1]
    elif kind == "cuda":
        choice = _backends.gpu_choice()
        if choice == "reference":
            return "reference"
        order = _GPU_ORDER[choice]
    else:
        return "reference"
    missing = []
    for b in order:
        k = kernels.get(b)
        if k is None:
            continue
        why = _loaded(b, unit or op)
        if why is not None:
            missing.append(f"{b}: {why}")
            continue
        if k.supports is None or k.supports(*args) is None:
            return b
    where = "CPU" if kind == "cpu" else "CUDA"
    if missing:
        _backends.warn_once(
            f"{op}:{kind}", f"dilseg: {op} on {where} falls back to the pure-torch reference ({'; '.join(missing)})"
        )
    elif kind == "cuda" and not any(b in kernels for b in order):
        _backends.warn_once(
            f"{op}:{kind}", f"dilseg: {op} on CUDA falls back to the pure-torch reference (no GPU kernel)"
        )
    return "reference"


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 for float64 data, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# --- validation: metadata only, unless a check's name says it reads values -----------------


def check_tensor(name: str, t: Any, ndim: int, dtypes: tuple[torch.dtype, ...]) -> None:
    if not isinstance(t, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ShapeError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise DTypeError(f"{name} has dtype {t.dtype}; expected one of {[str(d) for d in dtypes]}")


# check_finite (engine.checks, the one for every layer) reads every value: on CUDA a
# device synchronisation. The op entries call it only when asked (check_finite=True /
# check_inputs=True); data is checked once where it enters the engine.


def check_same_device(**tensors: Optional[torch.Tensor]) -> None:
    dev = None
    for t in tensors.values():
        if isinstance(t, torch.Tensor):
            if dev is None:
                dev = t.device
            elif t.device != dev:
                devs = {k: v.device for k, v in tensors.items() if isinstance(v, torch.Tensor)}
                raise InputError(f"tensors are on different devices: {devs}")


def same_device(dev: torch.device, *tensors: Optional[torch.Tensor]) -> bool:
    """Whether every tensor given (None skipped) lives on ``dev`` (the fast check the
    entries make before building :func:`check_same_device`'s message)."""
    for t in tensors:
        if t is not None and t.device != dev:
            return False
    return True


def check_out(name: str, out: Any, like: torch.Tensor, **inputs: torch.Tensor) -> None:
    """An ``out=`` buffer: a contiguous float32 tensor of ``like``'s shape and device
    that shares no memory with any of ``inputs`` (name -> tensor)."""
    if not isinstance(out, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(out).__name__}")
    if out.dtype != torch.float32:
        raise DTypeError(f"{name} must be float32, got {out.dtype}")
    if out.shape != like.shape or out.device != like.device:
        raise ShapeError(
            f"{name} must have shape {tuple(like.shape)} on {like.device}, got {tuple(out.shape)} on {out.device}"
        )
    if not out.is_contiguous():
        raise InputError(f"{name} must be contiguous")
    for other, t in inputs.items():
        if overlaps(out, t):
            raise InputError(f"{name} shares memory with {other}")


def overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors' storage byte ranges intersect."""
    if a.device != b.device or a.numel() == 0 or b.numel() == 0:
        return False
    sa, sb = a.untyped_storage(), b.untyped_storage()
    if sa.data_ptr() != sb.data_ptr():
        return False

    def span(t):
        lo = t.storage_offset() * t.element_size()
        hi = lo + (sum((n - 1) * st for n, st in zip(t.shape, t.stride())) + 1) * t.element_size()
        return lo, hi

    (la, ha), (lb, hb) = span(a), span(b)
    return la < hb and lb < ha


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InputError(f"{name}={value!r}; expected one of {choices}")


def check_number(name: str, v: Any, lo: float, hi: float = float("inf")) -> None:
    """``v`` is an int or float (not a bool) in ``[lo, hi]``."""
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not lo <= v <= hi:
        bound = f">= {lo}" if hi == float("inf") else f"in [{lo}, {hi}]"
        raise InputError(f"{name} must be a number {bound}, got {v!r}")
