"""warp3d: pull-back warp of a batch of 3D volumes by voxel displacement fields.

    out[n, c, z, y, x] = src[n, c](z + u[n, 0, z, y, x], y + u[n, 1, z, y, x], x + u[n, 2, z, y, x])

The exact 3D twin of :mod:`engine.ops.warp2d`:

* ``src`` ``[N, C, Ds, Hs, Ws]`` float32 / float64 / float16 / bfloat16, or uint8 with
  ``mode="nearest"``; any strides.
* ``u`` ``[N, 3, D, H, W]`` float32 (float64 allowed; cast to the accumulation type),
  channel 0 the depth (z) displacement, 1 the row (y), 2 the column (x), in voxels.
  The output has u's spatial size ``D, H, W`` (usually ``Ds, Hs, Ws``).
* ``mode``: ``"bilinear"`` (trilinear in 3D, named as torch names it) or
  ``"nearest"`` (``floor(p + 0.5)``: ties round up).
* ``padding``: ``"zeros"`` (corners outside read 0) or ``"border"`` (the sample
  position is clamped to the volume; no gradient w.r.t. u along a clamped axis).

Equal to ``F.grid_sample(src, grid, align_corners=True)`` on the 5D normalised grid
``grid[..., (x, y, z)] = 2 * (base + u) / (size - 1) - 1`` (tested), without building
that grid.

Backends (all pinned to the reference by tests/ops/test_warp3d.py):
``reference`` (pure torch, differentiable by autograd), ``cpu`` (C++/OpenMP over
(n, z, y) rows, csrc/warp3d/warp3d_cpu.cpp), ``cuda`` (csrc/warp3d/warp3d.cu, one
launch per call), ``triton`` (engine/kernels/warp3d.py). Gradients flow to ``src`` and ``u``
(not for uint8 sources); the backward is itself an op (``dilseg::warp3d_backward``)
with the same backends. Accumulation is float32 (float64 for float64 inputs); 16-bit
outputs are rounded once.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _common as C
from . import _warp
from ._declare import Kernel, Launch, declare, native, triton_module

__all__ = ["warp3d", "warp3d_reference", "IMPLS", "BACKWARD_IMPLS"]

MODES, PADDINGS, FLOAT_DTYPES = _warp.MODES, _warp.PADDINGS, _warp.FLOAT_DTYPES


# --- reference -------------------------------------------------------------------

def _clamp_coord(p: Tensor, hi: int) -> Tensor:
    # gradient 1 strictly inside (0, hi), 0 where clamped (as grid_sample's border
    # mode); NaN goes to 0, as the kernels' NaN-safe clamp
    inside = (p > 0) & (p < hi)
    return torch.where(inside, p, torch.nan_to_num(p.detach(), nan=0.0).clamp(0, hi))


def warp3d_reference(src: Tensor, u: Tensor, mode: str = "bilinear", padding: str = "zeros") -> Tensor:
    """Pure-torch warp3d (the oracle); differentiable w.r.t. ``src`` and ``u``."""
    N, Cc, Ds, Hs, Ws = src.shape
    D, H, W = u.shape[-3:]
    acc = C.acc_dtype(src.dtype)
    dev = src.device
    zs = torch.arange(D, device=dev, dtype=acc).view(1, D, 1, 1)
    ys = torch.arange(H, device=dev, dtype=acc).view(1, 1, H, 1)
    xs = torch.arange(W, device=dev, dtype=acc).view(1, 1, 1, W)
    pz = zs + u[:, 0].to(acc)
    py = ys + u[:, 1].to(acc)
    px = xs + u[:, 2].to(acc)
    if padding == "border":
        pz, py, px = _clamp_coord(pz, Ds - 1), _clamp_coord(py, Hs - 1), _clamp_coord(px, Ws - 1)
    else:
        pz = torch.nan_to_num(pz, nan=-2.0).clamp(-2, Ds + 1)
        py = torch.nan_to_num(py, nan=-2.0).clamp(-2, Hs + 1)
        px = torch.nan_to_num(px, nan=-2.0).clamp(-2, Ws + 1)
    M = D * H * W

    def gather(flat: Tensor, zi: Tensor, yi: Tensor, xi: Tensor) -> tuple[Tensor, Tensor]:
        valid = (zi >= 0) & (zi < Ds) & (yi >= 0) & (yi < Hs) & (xi >= 0) & (xi < Ws)
        idx = ((zi.clamp(0, Ds - 1) * Hs + yi.clamp(0, Hs - 1)) * Ws + xi.clamp(0, Ws - 1)).long()
        v = flat.gather(2, idx.reshape(N, 1, M).expand(N, Cc, M)).reshape(N, Cc, D, H, W)
        return v, valid.unsqueeze(1)

    if mode == "nearest":
        flat = src.reshape(N, Cc, Ds * Hs * Ws)
        v, valid = gather(flat, torch.floor(pz + 0.5), torch.floor(py + 0.5), torch.floor(px + 0.5))
        return torch.where(valid, v, torch.zeros((), dtype=src.dtype, device=dev))
    z0, y0, x0 = torch.floor(pz), torch.floor(py), torch.floor(px)
    wz, wy, wx = pz - z0, py - y0, px - x0
    flat = src.reshape(N, Cc, Ds * Hs * Ws).to(acc)
    out = torch.zeros((N, Cc, D, H, W), dtype=acc, device=dev)
    zero = torch.zeros((), dtype=acc, device=dev)
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                w = (wz if dz else 1 - wz) * (wy if dy else 1 - wy) * (wx if dx else 1 - wx)
                v, valid = gather(flat, z0 + dz, y0 + dy, x0 + dx)
                out = out + torch.where(valid, w.unsqueeze(1) * v, zero)
    return out.to(src.dtype)


def _positions(u: Tensor, sizes: tuple[int, int, int], padding: str, acc: torch.dtype):
    """Sample positions (z, y, x) after the padding rule, and the d(position)/d(u)
    factors (0 where border-clamped), as the kernels compute them."""
    D, H, W = u.shape[-3:]
    bases = (
        torch.arange(D, device=u.device, dtype=acc).view(1, D, 1, 1),
        torch.arange(H, device=u.device, dtype=acc).view(1, 1, H, 1),
        torch.arange(W, device=u.device, dtype=acc).view(1, 1, 1, W),
    )
    ps, ss = [], []
    for k in range(3):
        p = bases[k] + u[:, k].to(acc)
        if padding == "border":
            ss.append(((p > 0) & (p < sizes[k] - 1)).to(acc))
            ps.append(torch.nan_to_num(p, nan=0.0).clamp(0, sizes[k] - 1))
        else:
            ss.append(torch.ones((), dtype=acc, device=u.device))
            ps.append(torch.nan_to_num(p, nan=-2.0).clamp(-2, sizes[k] + 1))
    return ps, ss


def _reference_backward(grad: Tensor, src: Tensor, u: Tensor, mode: str, padding: str, need_src: bool, need_u: bool):
    """Analytic gradients in plain torch (custom-op kernels run below autograd, so
    the reference backward cannot differentiate the forward; it spells it out, and
    tests pin it to autograd through ``warp3d_reference``)."""
    N, Cc, Ds, Hs, Ws = src.shape
    D, H, W = u.shape[-3:]
    M = D * H * W
    acc = C.acc_dtype(src.dtype)
    (pz, py, px), (sz, sy, sx) = _positions(u, (Ds, Hs, Ws), padding, acc)
    g = grad.to(acc).reshape(N, Cc, M)
    flat = src.to(acc).reshape(N, Cc, Ds * Hs * Ws)
    gs = torch.zeros((N, Cc, Ds * Hs * Ws), dtype=acc, device=src.device) if need_src else None
    gu = [torch.zeros((N, M), dtype=acc, device=src.device) for _ in range(3)]

    def corner(zi: Tensor, yi: Tensor, xi: Tensor):
        valid = ((zi >= 0) & (zi < Ds) & (yi >= 0) & (yi < Hs) & (xi >= 0) & (xi < Ws)).to(acc)
        idx = ((zi.clamp(0, Ds - 1) * Hs + yi.clamp(0, Hs - 1)) * Ws + xi.clamp(0, Ws - 1)).long()
        return idx.reshape(N, 1, M).expand(N, Cc, M), valid.reshape(N, 1, M)

    if mode == "nearest":
        if gs is not None:
            idx, valid = corner(torch.floor(pz + 0.5), torch.floor(py + 0.5), torch.floor(px + 0.5))
            gs.scatter_add_(2, idx, g * valid)
    else:
        z0, y0, x0 = torch.floor(pz), torch.floor(py), torch.floor(px)
        wz, wy, wx = pz - z0, py - y0, px - x0
        for dz in (0, 1):
            for dy in (0, 1):
                for dx in (0, 1):
                    idx, valid = corner(z0 + dz, y0 + dy, x0 + dx)
                    wzk = (wz if dz else 1 - wz).reshape(N, 1, M)
                    wyk = (wy if dy else 1 - wy).reshape(N, 1, M)
                    wxk = (wx if dx else 1 - wx).reshape(N, 1, M)
                    if gs is not None:
                        gs.scatter_add_(2, idx, g * (wzk * wyk * wxk * valid))
                    if need_u:
                        gv = (g * flat.gather(2, idx) * valid).sum(1)  # [N, M]
                        gu[0] += gv * (1.0 if dz else -1.0) * (wyk * wxk)[:, 0]
                        gu[1] += gv * (1.0 if dy else -1.0) * (wzk * wxk)[:, 0]
                        gu[2] += gv * (1.0 if dx else -1.0) * (wzk * wyk)[:, 0]
    gu_t = None
    if need_u:
        gu_t = torch.stack([gu[0].reshape(N, D, H, W) * sz, gu[1].reshape(N, D, H, W) * sy,
                            gu[2].reshape(N, D, H, W) * sx], 1)
    return _warp.pack_grads(gs.reshape(src.shape) if gs is not None else None, gu_t, src, u)


# --- kernels ------------------------------------------------------------------------------

def _geom(src: Tensor, u: Tensor) -> list[int]:
    N, Cc, Ds, Hs, Ws = src.shape
    return [N, Cc, Ds, Hs, Ws, u.shape[2], u.shape[3], u.shape[4]]


def _out_shape(src: Tensor, u: Tensor) -> tuple[int, ...]:
    return (src.shape[0], src.shape[1], u.shape[2], u.shape[3], u.shape[4])


def _work(u: Tensor) -> int:
    return u.shape[0] * u.shape[2] * u.shape[3] * u.shape[4]


def _native_forward(on: Launch, src: Tensor, u: Tensor, mode: str, padding: str) -> Tensor:
    uk = u.to(C.acc_dtype(src.dtype))
    out = torch.empty(_out_shape(src, u), dtype=src.dtype, device=src.device)
    if out.numel() == 0:
        return out
    mod = on.mod
    interp, pad = _warp.enums(mod, mode, padding)
    mod.warp3d_forward(src.data_ptr(), list(src.stride()), on.dtype(src.dtype), uk.data_ptr(), list(uk.stride()),
                       out.data_ptr(), _geom(src, uk), interp, pad, on.last(src, _work(u)))
    return out


def _native_backward(on: Launch, grad: Tensor, src: Tensor, u: Tensor, mode: str, padding: str, need_src: bool,
                     need_u: bool):
    acc = C.acc_dtype(src.dtype)
    uk = u.to(acc)
    grad = grad.to(src.dtype)
    gs = torch.zeros(src.shape, dtype=acc, device=src.device) if need_src else None
    gu = torch.empty(uk.shape, dtype=acc, device=src.device) if need_u else None
    if grad.numel() and (need_src or need_u):
        mod = on.mod
        interp, pad = _warp.enums(mod, mode, padding)
        mod.warp3d_backward(grad.data_ptr(), list(grad.stride()), src.data_ptr(), list(src.stride()),
                            on.dtype(src.dtype), uk.data_ptr(), list(uk.stride()),
                            gs.data_ptr() if gs is not None else 0, gu.data_ptr() if gu is not None else 0,
                            _geom(src, uk), interp, pad, on.last(src, _work(u)))
    elif gu is not None:
        gu.zero_()
    return _warp.pack_grads(gs, gu, src, u)


def _triton_forward(src, u, mode, padding):
    uk = u.to(C.acc_dtype(src.dtype))
    out = torch.empty(_out_shape(src, u), dtype=src.dtype, device=src.device)
    if out.numel():
        triton_module().warp3d_forward(src, uk, out, bilinear=mode == "bilinear", border=padding == "border")
    return out


def _triton_backward(grad, src, u, mode, padding, need_src, need_u):
    acc = C.acc_dtype(src.dtype)
    uk = u.to(acc)
    gs = torch.zeros(src.shape, dtype=acc, device=src.device) if need_src else None
    gu = torch.zeros(uk.shape, dtype=acc, device=src.device) if need_u else None
    if grad.numel() and (need_src or need_u):
        triton_module().warp3d_backward(grad.to(src.dtype), src, uk, gs, gu, bilinear=mode == "bilinear",
                                        border=padding == "border")
    return _warp.pack_grads(gs, gu, src, u)


# --- the declarations -------------------------------------------------------------------------

warp3d_backward_op = declare(
    "warp3d_backward",
    "(Tensor grad, Tensor src, Tensor u, str mode, str padding, bool need_src, bool need_u) -> (Tensor, Tensor)",
    reference=_reference_backward,
    kernels={**native(_native_backward), "triton": Kernel(_triton_backward)},
    fake=_warp.fake_backward, unit="warp3d")

warp3d_op = declare(
    "warp3d", "(Tensor src, Tensor u, str mode, str padding) -> Tensor",
    reference=warp3d_reference,
    kernels={**native(_native_forward), "triton": Kernel(_triton_forward)},
    fake=lambda src, u, mode, padding: src.new_empty(_out_shape(src, u)),
    autograd=_warp.autograd(warp3d_backward_op))

IMPLS = warp3d_op.impls
BACKWARD_IMPLS = warp3d_backward_op.impls


# --- public entry -------------------------------------------------------------------------

def warp3d(src: Tensor, u: Tensor, mode: str = "bilinear", padding: str = "zeros", *,
           check_finite: bool = False) -> Tensor:
    """Warp ``src`` ``[N,C,Ds,Hs,Ws]`` by voxel displacements ``u`` ``[N,3,D,H,W]``.

    ``u[:, 0]`` displaces along depth (z), ``u[:, 1]`` along rows (y), ``u[:, 2]`` along
    columns (x). Returns ``[N, C, D, H, W]`` in ``src``'s dtype. Differentiable w.r.t.
    ``src`` and ``u``. The entry checks types, shapes, dtypes, devices and the mode
    names, all metadata: it never reads a value and makes no device sync.
    ``check_finite=True`` also scans ``u`` for NaN/Inf (reads every value: a sync on
    CUDA); data is checked once where it enters the engine, so internal calls leave it
    off, and the kernels stay memory-safe without it (non-finite positions read
    padding). Raises ``engine.errors.ShapeError`` / ``DTypeError`` / ``InputError``, and
    ``NonFiniteError`` when ``check_finite=True``.
    """
    _warp.validate(src, u, mode, padding, check_finite, 3)
    return warp3d_op(src, u, mode, padding)
