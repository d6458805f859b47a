"""Plumbing shared by every op: backend selection, tensor descriptors for the
compiled kernels, and input validation helpers.

The rule that picks an implementation (documented once, here):

* CPU tensors: the C++ kernel of ``engine._C`` when it loaded and implements the op,
  else the pure-torch reference. ``ENGINE_CPU_BACKEND=reference`` forces the reference.
* CUDA tensors: with ``ENGINE_GPU_BACKEND=auto`` (default) the CUDA kernel of
  ``engine._C_cuda`` when it loaded and implements the op, else the Triton kernel,
  else the reference. ``cuda`` / ``triton`` / ``reference`` pin one choice.
* Any other device: the reference.

A fallback to the reference that the user did not ask for prints a one-time
``RuntimeWarning`` saying why. The environment is read at call time, never at
import, so a process can switch backends (tests do).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from .. import _backends
from ..errors import DTypeError, NonFiniteError, ShapeError, InputError

_GPU_ORDER = {"auto": ("cuda", "triton"), "cuda": ("cuda",), "triton": ("triton",), "reference": ()}


def _has(mod: Any, op: str) -> bool:
    return mod is not None and op in getattr(mod, "ops", ())


def select(op: str, device: torch.device, available: tuple[str, ...]) -> str:
    """Name of the implementation that serves ``op`` for tensors on ``device``.

    ``available`` lists the backends the op implements besides the reference.
    """
    if device.type == "cpu":
        if _backends.cpu_choice() == "reference":
            return "reference"
        if "cpu" in available:
            if _has(_backends.load("cpu"), op):
                return "cpu"
            why = _backends.status("cpu").detail
            if _backends.load("cpu") is not None:
                why = "engine._C was built without this op"
            _backends.warn_once(f"{op}:cpu", f"dilseg: {op} on CPU falls back to the pure-torch reference ({why})")
        return "reference"
    if device.type == "cuda":
        order = [b for b in _GPU_ORDER[_backends.gpu_choice()] if b in available]
        reasons = []
        for b in order:
            if _has(_backends.load(b), op):
                return b
            reasons.append(f"{b}: {_backends.status(b).detail}")
        if _backends.gpu_choice() != "reference":
            _backends.warn_once(
                f"{op}:cuda", f"dilseg: {op} on CUDA falls back to the pure-torch reference ({'; '.join(reasons) or 'no GPU kernel'})"
            )
        return "reference"
    return "reference"


def cpu_module() -> Any:
    return _backends.load("cpu")


def cuda_module() -> Any:
    return _backends.load("cuda")


def triton_module() -> Any:
    return _backends.load("triton")


def kernel_dtype(mod: Any, dtype: torch.dtype) -> Any:
    """The named element type of a compiled module for a torch dtype."""
    table = {
        torch.float32: mod.DType.Float32,
        torch.float64: mod.DType.Float64,
        torch.float16: mod.DType.Float16,
        torch.bfloat16: mod.DType.BFloat16,
        torch.uint8: mod.DType.UInt8,
    }
    if dtype not in table:
        raise DTypeError(f"no kernel for dtype {dtype}")
    return table[dtype]


def cuda_stream(t: torch.Tensor) -> int:
    return torch.cuda.current_stream(t.device).cuda_stream


def num_threads() -> int:
    return max(1, torch.get_num_threads())


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 for float64 data, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# --- validation ----------------------------------------------------------------

def check_tensor(name: str, t: Any, ndim: int, dtypes: tuple[torch.dtype, ...]) -> None:
    if not isinstance(t, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ShapeError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise DTypeError(f"{name} has dtype {t.dtype}; expected one of {[str(d) for d in dtypes]}")


def check_finite(name: str, t: torch.Tensor) -> None:
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise NonFiniteError(f"{name} holds NaN or Inf")


def check_same_device(**tensors: torch.Tensor) -> None:
    devs = {k: v.device for k, v in tensors.items() if isinstance(v, torch.Tensor)}
    if len(set(devs.values())) > 1:
        raise InputError(f"tensors are on different devices: {devs}")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InputError(f"{name}={value!r}; expected one of {choices}")


Impl = Callable[..., Any]


def impl_table(**impls: Optional[Impl]) -> dict[str, Impl]:
    return {k: v for k, v in impls.items() if v is not None}
