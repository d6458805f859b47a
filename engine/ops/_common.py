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


def check_out(name: str, out: Any, like: torch.Tensor, **inputs: torch.Tensor) -> None:
    """An ``out=`` buffer: a contiguous float32 tensor of ``like``'s shape and device
    that shares no memory with any of ``inputs`` (name -> tensor)."""
    if not isinstance(out, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(out).__name__}")
    if out.dtype != torch.float32:
        raise DTypeError(f"{name} must be float32, got {out.dtype}")
    if tuple(out.shape) != tuple(like.shape) or out.device != like.device:
        raise ShapeError(f"{name} must have shape {tuple(like.shape)} on {like.device}, "
                         f"got {tuple(out.shape)} on {out.device}")
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


Impl = Callable[..., Any]


def impl_table(**impls: Optional[Impl]) -> dict[str, Impl]:
    return {k: v for k, v in impls.items() if v is not None}


# --- the warp family (warp2d, warp3d): one validation and one autograd formula ---------------

WARP_MODES = ("bilinear", "nearest")
WARP_PADDINGS = ("zeros", "border")
WARP_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def validate_warp(src: torch.Tensor, u: torch.Tensor, mode: str, padding: str, finite: bool,
                  spatial: int) -> None:
    """Checks shared by the pull-back warps: ``src`` ``[N, C, *S]``, ``u`` ``[N, spatial,
    *T]`` with ``spatial`` = 2 (warp2d) or 3 (warp3d); ``finite``: scan ``u`` for
    NaN/Inf (a device sync)."""
    check_tensor("src", src, 2 + spatial, WARP_FLOAT_DTYPES + (torch.uint8,))
    check_tensor("u", u, 2 + spatial, (torch.float32, torch.float64))
    check_choice("mode", mode, WARP_MODES)
    check_choice("padding", padding, WARP_PADDINGS)
    check_same_device(src=src, u=u)
    if u.shape[0] != src.shape[0] or u.shape[1] != spatial:
        dims = ", ".join(("D", "H", "W")[3 - spatial:])
        raise ShapeError(f"u must be [N=src.shape[0], {spatial}, {dims}]; got src {tuple(src.shape)}, "
                         f"u {tuple(u.shape)}")
    if src.dtype == torch.uint8 and mode != "nearest":
        raise DTypeError("uint8 sources need mode='nearest' (linear interpolation would not be exact in uint8)")
    if min(src.shape[2:]) < 1:
        raise ShapeError(f"src must have non-empty spatial size, got {tuple(src.shape)}")
    if finite:
        check_finite("u", u)


def register_warp_autograd(op: Any, backward_op: Callable) -> None:
    """Autograd of a warp custom op ``op(src, u, mode, padding)`` through its backward
    custom op ``backward_op(grad, src, u, mode, padding, need_src, need_u)``; uint8
    sources (nearest masks) get no gradient."""

    def setup_context(ctx, inputs, output):
        src, u, mode, padding = inputs
        ctx.save_for_backward(src, u)
        ctx.mode, ctx.padding = mode, padding

    def backward(ctx, grad):
        src, u = ctx.saved_tensors
        need_src, need_u = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if src.dtype == torch.uint8:
            need_src = False
        if not (need_src or need_u):
            return None, None, None, None
        gs, gu = backward_op(grad.contiguous(), src, u, ctx.mode, ctx.padding, need_src, need_u)
        return (gs if need_src else None), (gu if need_u else None), None, None

    op.register_autograd(backward, setup_context=setup_context)
