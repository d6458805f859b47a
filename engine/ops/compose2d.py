"""compose2d: composition of 2D displacement fields (pixels).

    (u o v)(p) = v(p) + u(p + v(p))
    out[n, :, y, x] = v[n, :, y, x] + u[n, :](y + v[n, 0, y, x], x + v[n, 1, y, x])

Chains the fields of adjacent slice pairs: a pull-back warp by ``u o v`` equals a warp
by ``u`` followed by a warp by ``v``, ``warp2d(warp2d(I, u), v) ~= warp2d(I, u o v)``
(exact up to the interpolation of ``u``).

* ``u``, ``v`` ``[N, 2, H, W]`` float32 (float64 allowed), the same dtype and shape,
  any strides; channel 0 the row (y) displacement, channel 1 the column (x), as warp2d.
* ``u`` is sampled bilinearly at ``p + v(p)`` with the warp2d conventions
  (align_corners geometry, NaN-safe clamps):
  ``padding="border"`` (default): a field extrapolates by its border value (the
  sample position is clamped to the image, and the sampling term passes no gradient
  to ``v`` along a clamped axis) — for displacement fields this is the sensible
  default, since a field does not fall to zero outside the image;
  ``padding="zeros"``: ``u`` reads 0 outside.

The result is ``[N, 2, H, W]`` in the input dtype. Differentiable w.r.t. ``u`` and
``v``: ``grad_v = g + (du/dp)^T g`` (one-sided derivatives at integer positions, as
warp2d / grid_sample), ``grad_u`` the bilinear scatter of ``g``.

Backends (all pinned to the reference by tests/ops/test_compose2d.py): ``reference``
(pure torch: ``v + warp2d_reference(u, v)``, differentiable by autograd; inside the
op its backward is spelled out through warp2d's analytic reference backward), ``cpu``
(C++/OpenMP over (n, row), csrc/compose2d/compose2d_cpu.cpp), ``cuda``
(csrc/compose2d/compose2d.cu), ``triton`` (kernels/compose2d.py). The backward is
its own kernel in every backend (``dilseg::compose2d_backward``, one pass: the
identity term of ``grad_v`` is fused in), not a call of warp2d's backward: that
would need a second pass and an extra ``[N,2,H,W]`` temporary.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _common as C
from .warp2d import _reference_backward as _warp2d_reference_backward
from .warp2d import warp2d_reference

__all__ = ["compose2d", "compose2d_reference", "IMPLS", "BACKWARD_IMPLS"]

PADDINGS = ("border", "zeros")
DTYPES = (torch.float32, torch.float64)
_OP = "compose2d"


# --- reference -------------------------------------------------------------------

def compose2d_reference(u: Tensor, v: Tensor, padding: str = "border") -> Tensor:
    """Pure-torch compose2d (the oracle); differentiable w.r.t. ``u`` and ``v``."""
    # a NaN displacement samples u at the lower clamp bound, as the kernels' NaN-safe
    # clamp does: -inf lands there under both paddings
    vs = torch.where(torch.isnan(v), torch.full((), float("-inf"), dtype=v.dtype, device=v.device), v)
    return v + warp2d_reference(u, vs, "bilinear", padding)


def _reference_backward(grad: Tensor, u: Tensor, v: Tensor, padding: str, need_u: bool, need_v: bool):
    """Analytic gradients in plain torch (custom-op kernels run below autograd): the
    composition is ``v + warp2d(u, v)``, so ``grad_u`` is warp2d's gradient w.r.t. its
    source and ``grad_v`` is ``grad`` plus warp2d's gradient w.r.t. its field (warp2d's
    own analytic reference backward; tests pin both to autograd)."""
    gs, gd = _warp2d_reference_backward(grad, u, v, "bilinear", padding, need_u, need_v)
    gu = gs if need_u else None
    gv = grad.to(v.dtype) + gd if need_v else None
    return _pack(gu, gv, u, v)


def _pack(gu: Optional[Tensor], gv: Optional[Tensor], u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    gu = u.new_empty((0,)) if gu is None else gu.to(u.dtype)
    gv = v.new_empty((0,)) if gv is None else gv.to(v.dtype)
    return gu, gv


# --- compiled kernels ---------------------------------------------------------------

def _geom(v: Tensor) -> list[int]:
    return [v.shape[0], v.shape[2], v.shape[3]]


def _pad(mod, padding: str):
    return mod.Padding.Zeros if padding == "zeros" else mod.Padding.Border


def _native_forward(mod, last_arg, u: Tensor, v: Tensor, padding: str) -> Tensor:
    out = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    if out.numel() == 0:
        return out
    mod.compose2d_forward(u.data_ptr(), list(u.stride()), v.data_ptr(), list(v.stride()), out.data_ptr(),
                          C.kernel_dtype(mod, v.dtype), _geom(v), _pad(mod, padding), last_arg(v))
    return out


def _native_backward(mod, last_arg, grad: Tensor, u: Tensor, v: Tensor, padding: str, need_u: bool, need_v: bool):
    grad = grad.to(v.dtype)
    gu = torch.zeros(u.shape, dtype=u.dtype, device=u.device) if need_u else None
    gv = torch.empty(v.shape, dtype=v.dtype, device=v.device) if need_v else None
    if grad.numel() and (need_u or need_v):
        mod.compose2d_backward(grad.data_ptr(), list(grad.stride()), u.data_ptr(), list(u.stride()), v.data_ptr(),
                               list(v.stride()), gu.data_ptr() if gu is not None else 0,
                               gv.data_ptr() if gv is not None else 0, C.kernel_dtype(mod, v.dtype), _geom(v),
                               _pad(mod, padding), last_arg(v))
    return _pack(gu, gv, u, v)


# Output pixels per CPU thread below which fewer threads are used: a parallel region
# costs more than it saves on tiny fields (and stalls on a loaded machine).
_GRAIN = 1 << 15


def _cpu_threads(v: Tensor) -> int:
    return max(1, min(C.num_threads(), v.shape[0] * v.shape[2] * v.shape[3] // _GRAIN))


def _cpu_forward(u, v, padding):
    return _native_forward(C.cpu_module(), _cpu_threads, u, v, padding)


def _cpu_backward(grad, u, v, padding, need_u, need_v):
    return _native_backward(C.cpu_module(), _cpu_threads, grad, u, v, padding, need_u, need_v)


def _cuda_forward(u, v, padding):
    return _native_forward(C.cuda_module(), C.cuda_stream, u, v, padding)


def _cuda_backward(grad, u, v, padding, need_u, need_v):
    return _native_backward(C.cuda_module(), C.cuda_stream, grad, u, v, padding, need_u, need_v)


def _triton_forward(u, v, padding):
    tk = C.triton_module()
    out = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    if out.numel():
        tk.compose2d_forward(u, v, out, border=padding == "border")
    return out


def _triton_backward(grad, u, v, padding, need_u, need_v):
    tk = C.triton_module()
    gu = torch.zeros(u.shape, dtype=u.dtype, device=u.device) if need_u else None
    gv = torch.empty(v.shape, dtype=v.dtype, device=v.device) if need_v else None
    if grad.numel() and (need_u or need_v):
        tk.compose2d_backward(grad.to(v.dtype), u, v, gu, gv, border=padding == "border")
    return _pack(gu, gv, u, v)


IMPLS = C.impl_table(reference=compose2d_reference, cpu=_cpu_forward, cuda=_cuda_forward, triton=_triton_forward)
BACKWARD_IMPLS = C.impl_table(reference=_reference_backward, cpu=_cpu_backward, cuda=_cuda_backward,
                              triton=_triton_backward)
_NATIVE = ("cpu", "cuda", "triton")


# --- torch custom ops -----------------------------------------------------------------

@torch.library.custom_op("dilseg::compose2d", mutates_args=())
def _compose2d_op(u: Tensor, v: Tensor, padding: str) -> Tensor:
    return IMPLS[C.select(_OP, v.device, _NATIVE)](u, v, padding)


@_compose2d_op.register_fake
def _(u, v, padding):
    return v.new_empty(v.shape)


@torch.library.custom_op("dilseg::compose2d_backward", mutates_args=())
def _compose2d_backward_op(grad: Tensor, u: Tensor, v: Tensor, padding: str, need_u: bool,
                           need_v: bool) -> tuple[Tensor, Tensor]:
    impl = BACKWARD_IMPLS[C.select(_OP, v.device, _NATIVE)]
    return impl(grad, u, v, padding, need_u, need_v)


@_compose2d_backward_op.register_fake
def _(grad, u, v, padding, need_u, need_v):
    gu = u.new_empty(u.shape) if need_u else u.new_empty((0,))
    gv = v.new_empty(v.shape) if need_v else v.new_empty((0,))
    return gu, gv


def _setup_context(ctx, inputs, output):
    u, v, padding = inputs
    ctx.save_for_backward(u, v)
    ctx.padding = padding


def _backward(ctx, grad):
    u, v = ctx.saved_tensors
    need_u, need_v = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if not (need_u or need_v):
        return None, None, None
    gu, gv = _compose2d_backward_op(grad.contiguous(), u, v, ctx.padding, need_u, need_v)
    return (gu if need_u else None), (gv if need_v else None), None


_compose2d_op.register_autograd(_backward, setup_context=_setup_context)


# --- public entry -------------------------------------------------------------------------

def validate(u: Tensor, v: Tensor, padding: str, check_finite: bool) -> None:
    C.check_tensor("u", u, 4, DTYPES)
    C.check_tensor("v", v, 4, DTYPES)
    C.check_choice("padding", padding, PADDINGS)
    C.check_same_device(u=u, v=v)
    if u.dtype != v.dtype:
        raise C.DTypeError(f"u and v must have the same dtype; got u {u.dtype}, v {v.dtype}")
    if v.shape[1] != 2 or u.shape != v.shape:
        raise C.ShapeError(f"u and v must both be [N, 2, H, W]; got u {tuple(u.shape)}, v {tuple(v.shape)}")
    if min(v.shape[2:]) < 1:
        raise C.ShapeError(f"fields must have non-empty spatial size, got {tuple(v.shape)}")
    if check_finite:
        C.check_finite("u", u)
        C.check_finite("v", v)


def compose2d(u: Tensor, v: Tensor, padding: str = "border", *, check_finite: bool = True) -> Tensor:
    """Compose displacement fields: ``(u o v)(p) = v(p) + u(p + v(p))``.

    ``u``, ``v``: ``[N, 2, H, W]`` float32 or float64 (same dtype), channel 0 row (y),
    channel 1 column (x), pixels. Returns ``[N, 2, H, W]``; a warp by the result equals
    a warp by ``u`` then by ``v``. ``padding="border"`` (default) extrapolates ``u`` by
    its border value, ``"zeros"`` reads 0 outside. Differentiable w.r.t. ``u`` and ``v``.
    ``check_finite=False`` skips the NaN/Inf scan (a device sync). Raises
    ``engine.errors.ShapeError`` / ``DTypeError`` / ``InputError`` / ``NonFiniteError``.
    """
    validate(u, v, padding, check_finite)
    return _compose2d_op(u, v, padding)
