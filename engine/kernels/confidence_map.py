"""Triton kernel of confidence_map (see engine/ops/confidence_map.py for the contract).

ONE launch over ``(D, cdiv(H, BLOCK_H))`` programs. A program computes the
confidence of its slice ``z`` and of its ``BLOCK_H`` rows, then of each
``BLOCK_W``-column tile, by a blocked min-search over the axis' annotation vector
(``min |i - j|`` over annotated ``j``, ``BLOCK_J`` candidates at a time: the same
distances the forward/backward scans of the other backends give), and stores
``max(c_0(z), c_1(y), c_2(x))`` for the ``BLOCK_H x BLOCK_W`` tile: every output
element is written once. The search costs ``O(n)`` per index, negligible next to
the volume for the axis lengths of medical slices (a few hundred).

TRITON_INTERPRET is honoured per launch (lazy jit per mode) and the kernel calls
only ``triton.language`` builtins (``tl.reduce`` with the standard ``min`` combine
instead of the ``@triton.jit`` helper ``tl.min``), as engine/kernels/_jit.py explains.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._jit import LazyJit as _LazyJit

__all__ = ["confidence_map"]


def _confidence_map_kernel(
    ad_ptr,
    sd,
    ah_ptr,
    sh,
    aw_ptr,
    sw,
    out_ptr,
    D,
    H,
    W,
    HAS_D: tl.constexpr,
    HAS_H: tl.constexpr,
    HAS_W: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_J: tl.constexpr,
):
    BIG: tl.constexpr = 1 << 30
    z = tl.program_id(0)
    y = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    m = tl.full((BLOCK_H,), 0.0, tl.float32)
    for k in tl.static_range(2):  # 0: axis D at index z (broadcast over the rows), 1: axis H at y
        if k == 0:
            ptr = ad_ptr
            st = sd
            n = D
            idx = tl.full((BLOCK_H,), 0, tl.int32) + z
            has = HAS_D
        else:
            ptr = ah_ptr
            st = sh
            n = H
            idx = y
            has = HAS_H
        if has:
            best = tl.full((BLOCK_H,), BIG, tl.int32)
            for j0 in range(0, n, BLOCK_J):
                j = j0 + tl.arange(0, BLOCK_J)
                a = tl.load(ptr + j.to(tl.int64) * st, mask=j < n, other=0)
                dist = tl.where((a != 0)[None, :], tl.abs(idx[:, None] - j[None, :]), BIG)
                best = tl.minimum(best, tl.reduce(dist, 1, tl.standard._elementwise_min))
            # fp32 division as the reference: 1 / (1 + d)
            c = tl.where(best < BIG, 1.0 / (1.0 + tl.minimum(best, 1 << 24).to(tl.float32)), 0.0)
            m = tl.maximum(m, c)
    row = (z.to(tl.int64) * H + y.to(tl.int64)) * W
    for x0 in range(0, W, BLOCK_W):
        x = x0 + tl.arange(0, BLOCK_W)
        cx = tl.full((BLOCK_W,), 0.0, tl.float32)
        if HAS_W:
            best = tl.full((BLOCK_W,), BIG, tl.int32)
            for j0 in range(0, W, BLOCK_J):
                j = j0 + tl.arange(0, BLOCK_J)
                a = tl.load(aw_ptr + j.to(tl.int64) * sw, mask=j < W, other=0)
                dist = tl.where((a != 0)[None, :], tl.abs(x[:, None] - j[None, :]), BIG)
                best = tl.minimum(best, tl.reduce(dist, 1, tl.standard._elementwise_min))
            cx = tl.where(best < BIG, 1.0 / (1.0 + tl.minimum(best, 1 << 24).to(tl.float32)), 0.0)
        v = tl.maximum(m[:, None], cx[None, :])
        tl.store(out_ptr + row[:, None] + x[None, :].to(tl.int64), v, mask=(y < H)[:, None] & (x < W)[None, :])


_kernel = _LazyJit(_confidence_map_kernel)


def _u8(t):
    return t.view(torch.uint8) if t is not None and t.dtype == torch.bool else t


def confidence_map(ann_d, ann_h, ann_w, out: torch.Tensor) -> None:
    """Fill ``out`` ``[D,H,W]`` float32 (contiguous) in one launch; each ``ann_*`` a
    bool/uint8 vector of its axis' length, or None."""
    D, H, W = out.shape
    if out.numel() == 0:
        return
    ann_d, ann_h, ann_w = _u8(ann_d), _u8(ann_h), _u8(ann_w)
    dummy = out.view(torch.uint8)  # never read when the matching HAS_* is False
    BLOCK_H = min(16, triton.next_power_of_2(H))
    BLOCK_W = min(128, max(16, triton.next_power_of_2(W)))
    grid = (D, triton.cdiv(H, BLOCK_H))
    _kernel[grid](
        ann_d if ann_d is not None else dummy,
        ann_d.stride(0) if ann_d is not None else 0,
        ann_h if ann_h is not None else dummy,
        ann_h.stride(0) if ann_h is not None else 0,
        ann_w if ann_w is not None else dummy,
        ann_w.stride(0) if ann_w is not None else 0,
        out,
        D,
        H,
        W,
        HAS_D=ann_d is not None,
        HAS_H=ann_h is not None,
        HAS_W=ann_w is not None,
        BLOCK_H=BLOCK_H,
        BLOCK_W=BLOCK_W,
        BLOCK_J=32,
    )
