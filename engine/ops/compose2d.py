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
(csrc/compose2d/compose2d.cu), ``triton`` (engine/kernels/compose2d.py). The backward is
its own kernel in every backend (``dilseg::compose2d_backward``, one pass: the
identity term of ``grad_v`` is fused in), not a call of warp2d's backward: that
would need a second pass and an extra ``[N,2,H,W]`` temporary.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _common as C
from ._declare import Kernel, Launch, declare, native, triton_module
from .warp2d import _reference_backward as _warp2d_reference_backward
from .warp2d import warp2d_reference

__all__ = ["compose2d", "compose2d_reference", "IMPLS", "BACKWARD_IMPLS"]

PADDINGS = ("border", "zeros")
DTYPES = (torch.float32, torch.float64)


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


# --- kernels ------------------------------------------------------------------------------

def _geom(v: Tensor) -> list[int]:
    return [v.shape[0], v.shape[2], v.shape[3]]


def _pad(mod, padding: str):
    return mod.Padding.Zeros if padding == "zeros" else mod.Padding.Border


def _work(v: Tensor) -> int:
    return v.shape[0] * v.shape[2] * v.shape[3]


def _native_forward(on: Launch, u: Tensor, v: Tensor, padding: str) -> Tensor:
    out = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    if out.numel() == 0:
        return out
    mod = on.mod
    mod.compose2d_forward(u.data_ptr(), list(u.stride()), v.data_ptr(), list(v.stride()), out.data_ptr(),
                          on.dtype(v.dtype), _geom(v), _pad(mod, padding), on.last(v, _work(v)))
    return out


def _native_backward(on: Launch, grad: Tensor, u: Tensor, v: Tensor, padding: str, need_u: bool, need_v: bool):
    grad = grad.to(v.dtype)
    gu = torch.zeros(u.shape, dtype=u.dtype, device=u.device) if need_u else None
    gv = torch.empty(v.shape, dtype=v.dtype, device=v.device) if need_v else None
    if grad.numel() and (need_u or need_v):
        mod = on.mod
        mod.compose2d_backward(grad.data_ptr(), list(grad.stride()), u.data_ptr(), list(u.stride()), v.data_ptr(),
                               list(v.stride()), gu.data_ptr() if gu is not None else 0,
                               gv.data_ptr() if gv is not None else 0, on.dtype(v.dtype), _geom(v),
                               _pad(mod, padding), on.last(v, _work(v)))
    return _pack(gu, gv, u, v)


def _triton_forward(u, v, padding):
    out = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    if out.numel():
        triton_module().compose2d_forward(u, v, out, border=padding == "border")
    return out


def _triton_backward(grad, u, v, padding, need_u, need_v):
    gu = torch.zeros(u.shape, dtype=u.dtype, device=u.device) if need_u else None
    gv = torch.empty(v.shape, dtype=v.dtype, device=v.device) if need_v else None
    if grad.numel() and (need_u or need_v):
        triton_module().compose2d_backward(grad.to(v.dtype), u, v, gu, gv, border=padding == "border")
    return _pack(gu, gv, u, v)


# --- the declarations -------------------------------------------------------------------------

def _fake_backward(grad, u, v, padding, need_u, need_v):
    gu = u.new_empty(u.shape) if need_u else u.new_empty((0,))
    gv = v.new_empty(v.shape) if need_v else v.new_empty((0,))
    return gu, gv


compose2d_backward_op = declare(
    "compose2d_backward",
    "(Tensor grad, Tensor u, Tensor v, str padding, bool need_u, bool need_v) -> (Tensor, Tensor)",
    reference=_reference_backward,
    kernels={**native(_native_backward), "triton": Kernel(_triton_backward)},
    fake=_fake_backward, unit="compose2d")


def _setup_context(ctx, inputs, output):
    u, v, padding = inputs
    ctx.save_for_backward(u, v)
    ctx.padding = padding


def _backward(ctx, grad):
    u, v = ctx.saved_tensors
    need_u, need_v = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if not (need_u or need_v):
        return None, None, None
    gu, gv = compose2d_backward_op(grad.contiguous(), u, v, ctx.padding, need_u, need_v)
    return (gu if need_u else None), (gv if need_v else None), None


compose2d_op = declare(
    "compose2d", "(Tensor u, Tensor v, str padding) -> Tensor",
    reference=compose2d_reference,
    kernels={**native(_native_forward), "triton": Kernel(_triton_forward)},
    fake=lambda u, v, padding: v.new_empty(v.shape),
    autograd=(_backward, _setup_context))

IMPLS = compose2d_op.impls
BACKWARD_IMPLS = compose2d_backward_op.impls


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
    return compose2d_op(u, v, padding)
