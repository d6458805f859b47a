"""Triton kernel of slice_residuals (see engine/ops/slice_residuals.py for the
contract; csrc/slice_residuals/slice_residuals.cu follows the same plan).

The launcher's caller zero-fills the packed output ``[D+H+W]`` (launch 1); this is
launch 2: programs over ``(column strips of BLOCK_X, row bands of BLOCK_Y, chunks of
TZ planes)``. A program loads its ``BLOCK_Y x BLOCK_X`` tile of each of its planes,
forms ``|q - p|`` (``* w`` for a full weight) in float32, reduces the tile along x
(row partials) and y (column partials) in registers, keeps those partials over its
planes (scaled once per plane by a per-slice weight), adds each plane's total to
``sz[z]`` with one atomic, and at the end adds its row and column partials to
``sy`` / ``sx`` with one vector atomic each.

TRITON_INTERPRET is honoured per launch (the kernel is jitted lazily, once per
mode) and only ``triton.language`` builtins are called (reductions through
``tl.reduce`` with the standard combine functions), as engine/kernels/_jit.py
explains.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._jit import LazyJit as _LazyJit

__all__ = ["slice_residuals_forward"]


def _slice_residuals_kernel(
    q_ptr,
    qs0,
    qs1,
    qs2,
    p_ptr,
    ps0,
    ps1,
    ps2,
    w_ptr,
    ws0,
    ws1,
    ws2,
    out_ptr,
    D,
    H,
    W,
    TZ,
    W_MODE: tl.constexpr,  # 0: no weight, 1: per-slice [D] float32, 2: full [D,H,W]
    BLOCK_Y: tl.constexpr,
    BLOCK_X: tl.constexpr,
):
    y = tl.program_id(1) * BLOCK_Y + tl.arange(0, BLOCK_Y)
    x = tl.program_id(0) * BLOCK_X + tl.arange(0, BLOCK_X)
    ym = y < H
    xm = x < W
    m = ym[:, None] & xm[None, :]
    y64 = y.to(tl.int64)
    x64 = x.to(tl.int64)
    q_off = y64[:, None] * qs1 + x64[None, :] * qs2
    p_off = y64[:, None] * ps1 + x64[None, :] * ps2
    w_off = y64[:, None] * ws1 + x64[None, :] * ws2
    rowacc = tl.full((BLOCK_Y,), 0.0, tl.float32)
    colacc = tl.full((BLOCK_X,), 0.0, tl.float32)
    z0 = tl.program_id(2).to(tl.int64) * TZ
    for dz in range(0, tl.minimum(TZ, D - z0)):
        z64 = z0 + dz  # int64 plane index
        # every operand widened to float32: the residual and all sums are fp32
        qv = tl.load(q_ptr + z64 * qs0 + q_off, mask=m, other=0).to(tl.float32)
        pv = tl.load(p_ptr + z64 * ps0 + p_off, mask=m, other=0).to(tl.float32)
        d = tl.abs(qv - pv)
        if W_MODE == 2:
            d = d * tl.load(w_ptr + z64 * ws0 + w_off, mask=m, other=0).to(tl.float32)  # fp32 weight
        if W_MODE == 1:
            scale = tl.load(w_ptr + z64 * ws0).to(tl.float32)  # per-slice weight, fp32
        else:
            scale = 1.0
        rs = tl.reduce(d, 1, tl.standard._sum_combine)  # [BLOCK_Y] fp32
        cs = tl.reduce(d, 0, tl.standard._sum_combine)  # [BLOCK_X] fp32
        rowacc += scale * rs
        colacc += scale * cs
        tl.atomic_add(out_ptr + z64, scale * tl.reduce(rs, 0, tl.standard._sum_combine), sem="relaxed")
    tl.atomic_add(out_ptr + D + y, rowacc, mask=ym, sem="relaxed")
    tl.atomic_add(out_ptr + D + H + x, colacc, mask=xm, sem="relaxed")


_kernel = _LazyJit(_slice_residuals_kernel)


def _target_programs(t: torch.Tensor) -> int:
    if t.is_cuda:
        return 4 * torch.cuda.get_device_properties(t.device).multi_processor_count
    return 4  # interpreter: few programs, each looping over planes


def slice_residuals_forward(
    q: torch.Tensor, p: torch.Tensor, w: Optional[torch.Tensor], w_mode: str, out: torch.Tensor
) -> None:
    """Add the sums of ``w * |q - p|`` into ``out`` ``[D+H+W]`` float32 (zero-filled
    by the caller) in ONE launch. ``w_mode``: ``"none"`` (w ignored), ``"slice"``
    (``w`` ``[D]`` float32) or ``"full"`` (``w`` ``[D,H,W]``)."""
    D, H, W = q.shape
    BLOCK_X = min(128, max(16, triton.next_power_of_2(W)))
    BLOCK_Y = min(32, max(1, triton.next_power_of_2(H)))
    nx, ny = triton.cdiv(W, BLOCK_X), triton.cdiv(H, BLOCK_Y)
    nz_target = max(1, min(D, triton.cdiv(_target_programs(q), nx * ny)))
    TZ = triton.cdiv(D, nz_target)
    grid = (nx, ny, triton.cdiv(D, TZ))
    mode = {"none": 0, "slice": 1, "full": 2}[w_mode]
    wt = w if w is not None else q  # never read when mode == 0
    if mode == 2:
        ws = list(wt.stride())
    elif mode == 1:
        ws = [wt.stride(0), 0, 0]
    else:
        ws = [0, 0, 0]
    _kernel[grid](
        q,
        *q.stride(),
        p,
        *p.stride(),
        wt,
        *ws,
        out,
        D,
        H,
        W,
        TZ,
        W_MODE=mode,
        BLOCK_Y=BLOCK_Y,
        BLOCK_X=BLOCK_X,
    )
