"""warp2d: pull-back warp of a batch of 2D slices by pixel displacement fields.

    out[n, c, y, x] = src[n, c](y + u[n, 0, y, x], x + u[n, 1, y, x])

* ``src`` ``[N, C, Hs, Ws]`` float32 / float64 / float16 / bfloat16, or uint8 with
  ``mode="nearest"``; any strides.
* ``u`` ``[N, 2, H, W]`` float32 (float64 allowed; cast to the accumulation type),
  channel 0 the row (y) displacement, channel 1 the column (x) displacement, in pixels.
  The output has u's spatial size ``H, W`` (usually ``Hs, Ws``).
* ``mode``: ``"bilinear"`` or ``"nearest"`` (``floor(p + 0.5)``: ties round up).
* ``padding``: ``"zeros"`` (corners outside read 0) or ``"border"`` (the sample
  position is clamped to the image; no gradient w.r.t. u where it is clamped).

Equal to ``F.grid_sample(src, grid, align_corners=True)`` on the normalised grid
``grid = 2 * (base + u) / (size - 1) - 1`` (tested), without building that grid.

Backends (all pinned to the reference by tests/ops/test_warp2d.py):
``reference`` (pure torch, differentiable by autograd), ``cpu`` (C++/OpenMP,
csrc/warp2d/warp2d_cpu.cpp), ``cuda`` (csrc/warp2d/warp2d.cu), ``triton``
(engine/kernels/warp2d.py). Gradients flow to ``src`` and ``u`` (not for uint8 sources);
the backward is itself an op (``dilseg::warp2d_backward``) with the same backends.
Accumulation is float32 (float64 for float64 inputs); 16-bit outputs are rounded once.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _common as C
from . import _warp
from ._declare import Kernel, Launch, declare, native, triton_module

__all__ = ["warp2d", "warp2d_reference", "IMPLS", "BACKWARD_IMPLS"]

MODES, PADDINGS, FLOAT_DTYPES = _warp.MODES, _warp.PADDINGS, _warp.FLOAT_DTYPES


# --- reference -------------------------------------------------------------------


def _clamp_coord(p: Tensor, hi: int) -> Tensor:
    # gradient 1 strictly inside (0, hi), 0 where clamped (as grid_sample's border mode)
    inside = (p > 0) & (p < hi)
    return torch.where(inside, p, torch.nan_to_num(p.detach(), nan=0.0).clamp(0, hi))


def warp2d_reference(src: Tensor, u: Tensor, mode: str = "bilinear", padding: str = "zeros") -> Tensor:
    """Pure-torch warp2d (the oracle); differentiable w.r.t. ``src`` and ``u``."""
    N, Cc, Hs, Ws = src.shape
    H, W = u.shape[-2:]
    acc = C.acc_dtype(src.dtype)
    dev = src.device
    ys = torch.arange(H, device=dev, dtype=acc).view(1, H, 1)
    xs = torch.arange(W, device=dev, dtype=acc).view(1, 1, W)
    py = ys + u[:, 0].to(acc)
    px = xs + u[:, 1].to(acc)
    if padding == "border":
        py, px = _clamp_coord(py, Hs - 1), _clamp_coord(px, Ws - 1)
    else:
        py = torch.nan_to_num(py, nan=-2.0).clamp(-2, Hs + 1)
        px = torch.nan_to_num(px, nan=-2.0).clamp(-2, Ws + 1)
    flat = src.reshape(N, Cc, Hs * Ws)

    def gather(yi: Tensor, xi: Tensor) -> tuple[Tensor, Tensor]:
        valid = (yi >= 0) & (yi < Hs) & (xi >= 0) & (xi < Ws)
        idx = (yi.clamp(0, Hs - 1) * Ws + xi.clamp(0, Ws - 1)).long()
        v = flat.gather(2, idx.reshape(N, 1, H * W).expand(N, Cc, H * W)).reshape(N, Cc, H, W)
        return v, valid.unsqueeze(1)

    if mode == "nearest":
        v, valid = gather(torch.floor(py + 0.5), torch.floor(px + 0.5))
        return torch.where(valid, v, torch.zeros((), dtype=src.dtype, device=dev))
    y0, x0 = torch.floor(py), torch.floor(px)
    wy, wx = py - y0, px - x0
    flat = flat.to(acc)
    out = torch.zeros((N, Cc, H, W), dtype=acc, device=dev)
    for dy in (0, 1):
        for dx in (0, 1):
            w = (wy if dy else 1 - wy) * (wx if dx else 1 - wx)
            v, valid = gather(y0 + dy, x0 + dx)
            out = out + torch.where(valid, w.unsqueeze(1) * v, torch.zeros((), dtype=acc, device=dev))
    return out.to(src.dtype)


def _positions(u: Tensor, Hs: int, Ws: int, padding: str, acc: torch.dtype):
    """Sample positions and the d(position)/d(u) factors (0 where border-clamped)."""
    H, W = u.shape[-2:]
    ys = torch.arange(H, device=u.device, dtype=acc).view(1, H, 1)
    xs = torch.arange(W, device=u.device, dtype=acc).view(1, 1, W)
    py = ys + u[:, 0].to(acc)
    px = xs + u[:, 1].to(acc)
    if padding == "border":
        sy = ((py > 0) & (py < Hs - 1)).to(acc)
        sx = ((px > 0) & (px < Ws - 1)).to(acc)
        py = torch.nan_to_num(py, nan=0.0).clamp(0, Hs - 1)
        px = torch.nan_to_num(px, nan=0.0).clamp(0, Ws - 1)
    else:
        sy = sx = torch.ones((), dtype=acc, device=u.device)
        py = torch.nan_to_num(py, nan=-2.0).clamp(-2, Hs + 1)
        px = torch.nan_to_num(px, nan=-2.0).clamp(-2, Ws + 1)
    return py, px, sy, sx


def _reference_backward(grad: Tensor, src: Tensor, u: Tensor, mode: str, padding: str, need_src: bool, need_u: bool):
    """Analytic gradients in plain torch (custom-op kernels run below autograd, so
    the reference backward cannot differentiate the forward; it spells it out)."""
    N, Cc, Hs, Ws = src.shape
    H, W = u.shape[-2:]
    acc = C.acc_dtype(src.dtype)
    py, px, sy, sx = _positions(u, Hs, Ws, padding, acc)
    g = grad.to(acc).reshape(N, Cc, H * W)
    flat = src.to(acc).reshape(N, Cc, Hs * Ws)
    gs = torch.zeros((N, Cc, Hs * Ws), dtype=acc, device=src.device) if need_src else None
    gu_y = torch.zeros((N, H, W), dtype=acc, device=src.device)
    gu_x = torch.zeros((N, H, W), dtype=acc, device=src.device)

    def corner(yi: Tensor, xi: Tensor):
        valid = ((yi >= 0) & (yi < Hs) & (xi >= 0) & (xi < Ws)).to(acc)
        idx = (yi.clamp(0, Hs - 1) * Ws + xi.clamp(0, Ws - 1)).long().reshape(N, 1, H * W).expand(N, Cc, H * W)
        return idx, valid.reshape(N, 1, H * W)

    if mode == "nearest":
        if gs is not None:
            idx, valid = corner(torch.floor(py + 0.5), torch.floor(px + 0.5))
            gs.scatter_add_(2, idx, g * valid)
    else:
        y0, x0 = torch.floor(py), torch.floor(px)
        wy, wx = py - y0, px - x0
        for dy in (0, 1):
            for dx in (0, 1):
                idx, valid = corner(y0 + dy, x0 + dx)
                wyk = (wy if dy else 1 - wy).reshape(N, 1, H * W)
                wxk = (wx if dx else 1 - wx).reshape(N, 1, H * W)
                if gs is not None:
                    gs.scatter_add_(2, idx, g * (wyk * wxk * valid))
                if need_u:
                    gv = (g * flat.gather(2, idx) * valid).sum(1).reshape(N, H, W)
                    gu_y += gv * (1.0 if dy else -1.0) * wxk.reshape(N, H, W)
                    gu_x += gv * (1.0 if dx else -1.0) * wyk.reshape(N, H, W)
    gu = torch.stack([gu_y * sy, gu_x * sx], 1) if need_u else None
    return _warp.pack_grads(gs.reshape(src.shape) if gs is not None else None, gu, src, u)


# --- kernels ------------------------------------------------------------------------------


def _geom(src: Tensor, u: Tensor) -> list[int]:
    N, Cc, Hs, Ws = src.shape
    return [N, Cc, Hs, Ws, u.shape[2], u.shape[3]]


def _out_shape(src: Tensor, u: Tensor) -> tuple[int, ...]:
    return (src.shape[0], src.shape[1], u.shape[2], u.shape[3])


def _native_forward(on: Launch, src: Tensor, u: Tensor, mode: str, padding: str) -> Tensor:
    uk = u.to(C.acc_dtype(src.dtype))
    out = torch.empty(_out_shape(src, u), dtype=src.dtype, device=src.device)
    if out.numel() == 0:
        return out
    mod = on.mod
    interp, pad = _warp.enums(mod, mode, padding)
    mod.warp2d_forward(
        src.data_ptr(),
        list(src.stride()),
        on.dtype(src.dtype),
        uk.data_ptr(),
        list(uk.stride()),
        out.data_ptr(),
        _geom(src, uk),
        interp,
        pad,
        on.last(src),
    )
    return out


def _native_backward(
    on: Launch, grad: Tensor, src: Tensor, u: Tensor, mode: str, padding: str, need_src: bool, need_u: bool
):
    acc = C.acc_dtype(src.dtype)
    uk = u.to(acc)
    grad = grad.to(src.dtype)
    gs = torch.zeros(src.shape, dtype=acc, device=src.device) if need_src else None
    gu = torch.empty(uk.shape, dtype=acc, device=src.device) if need_u else None
    if grad.numel() and (need_src or need_u):
        mod = on.mod
        interp, pad = _warp.enums(mod, mode, padding)
        mod.warp2d_backward(
            grad.data_ptr(),
            list(grad.stride()),
            src.data_ptr(),
            list(src.stride()),
            on.dtype(src.dtype),
            uk.data_ptr(),
            list(uk.stride()),
            gs.data_ptr() if gs is not None else 0,
            gu.data_ptr() if gu is not None else 0,
            _geom(src, uk),
            interp,
            pad,
            on.last(src),
        )
    elif gu is not None:
        gu.zero_()
    return _warp.pack_grads(gs, gu, src, u)


def _triton_forward(src, u, mode, padding):
    uk = u.to(C.acc_dtype(src.dtype))
    out = torch.empty(_out_shape(src, u), dtype=src.dtype, device=src.device)
    if out.numel():
        triton_module().warp2d_forward(src, uk, out, bilinear=mode == "bilinear", border=padding == "border")
    return out


def _triton_backward(grad, src, u, mode, padding, need_src, need_u):
    acc = C.acc_dtype(src.dtype)
    uk = u.to(acc)
    gs = torch.zeros(src.shape, dtype=acc, device=src.device) if need_src else None
    gu = torch.zeros(uk.shape, dtype=acc, device=src.device) if need_u else None
    if grad.numel() and (need_src or need_u):
        triton_module().warp2d_backward(
            grad.to(src.dtype), src, uk, gs, gu, bilinear=mode == "bilinear", border=padding == "border"
        )
    return _warp.pack_grads(gs, gu, src, u)


# --- the declarations -------------------------------------------------------------------------

warp2d_backward_op = declare(
    "warp2d_backward",
    "(Tensor grad, Tensor src, Tensor u, str mode, str padding, bool need_src, bool need_u) -> (Tensor, Tensor)",
    reference=_reference_backward,
    kernels={**native(_native_backward), "triton": Kernel(_triton_backward)},
    fake=_warp.fake_backward,
    unit="warp2d",
)

warp2d_op = declare(
    "warp2d",
    "(Tensor src, Tensor u, str mode, str padding) -> Tensor",
    reference=warp2d_reference,
    kernels={**native(_native_forward), "triton": Kernel(_triton_forward)},
    fake=lambda src, u, mode, padding: src.new_empty(_out_shape(src, u)),
    autograd=_warp.autograd(warp2d_backward_op),
)

IMPLS = warp2d_op.impls
BACKWARD_IMPLS = warp2d_backward_op.impls


# --- public entry -------------------------------------------------------------------------


def warp2d(
    src: Tensor, u: Tensor, mode: str = "bilinear", padding: str = "zeros", *, check_finite: bool = False
) -> Tensor:
    """Warp ``src`` ``[N,C,Hs,Ws]`` by pixel displacements ``u`` ``[N,2,H,W]``.

    Returns ``[N, C, H, W]`` in ``src``'s dtype. Differentiable w.r.t. ``src`` and
    ``u``. The entry checks types, shapes, dtypes, devices and the mode names, all
    metadata: it never reads a value and makes no device sync. ``check_finite=True``
    also scans ``u`` for NaN/Inf (reads every value: a sync on CUDA); data is checked
    once where it enters the engine, so internal calls leave it off, and the kernels
    stay memory-safe without it (non-finite positions read padding).
    Raises ``engine.errors.ShapeError`` / ``DTypeError`` / ``InputError``, and
    ``NonFiniteError`` when ``check_finite=True``.
    """
    _warp.validate(src, u, mode, padding, check_finite, 2)
    return warp2d_op(src, u, mode, padding)
