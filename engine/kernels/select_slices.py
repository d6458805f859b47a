"""Triton kernel of select_slices (see engine/ops/select_slices.py for the contract;
csrc/select_slices/select_slices.cu is the CUDA twin).

ONE launch of ONE program holding all ``D`` scores in registers (``BLOCK`` = the
next power of two of D). The annotated neighbourhood is found with ``2 min_gap + 1``
shifted, masked loads of the annotation vector (``min_gap`` is clamped to D; small
in practice, a handful of slices). Then ``min(k, D)`` rounds: block max over eligible scores, the lowest
index holding it, store, suppress ``|z - pick| <= min_gap``; the remaining
``k - min(k, D)`` entries (no slice can be left by then) are stored as -1.

TRITON_INTERPRET is honoured per launch (lazy jit per mode); reductions use
``tl.reduce`` with the standard combine functions, as
engine/kernels/_jit.py explains.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._jit import LazyJit as _LazyJit

__all__ = ["select_slices_forward"]


def _select_slices_kernel(
    s_ptr,
    ss,
    a_ptr,
    a_st,
    v_ptr,
    v_st,
    out_ptr,
    D,
    k,
    KR,
    gap,
    HAS_A: tl.constexpr,
    HAS_V: tl.constexpr,
    BLOCK: tl.constexpr,
    FILL: tl.constexpr,
):
    BIG: tl.constexpr = 1 << 30
    z = tl.arange(0, BLOCK)
    inb = z < D
    z64 = z.to(tl.int64)
    s = tl.load(s_ptr + z64 * ss, mask=inb, other=0.0)
    elig = inb & (s == s)  # NaN scores are never eligible
    if HAS_V:
        elig = elig & (tl.load(v_ptr + z64 * v_st, mask=inb, other=0) != 0)
    if HAS_A:
        # an annotated slice within the gap: one shifted (masked) load per offset
        for d in range(-gap, gap + 1):
            j = z + d
            jm = inb & (j >= 0) & (j < D)
            a = tl.load(a_ptr + j.to(tl.int64) * a_st, mask=jm, other=0)
            elig = elig & (a == 0)
    neg = tl.full((BLOCK,), float("-inf"), tl.float32)
    for r in range(0, KR):
        mx = tl.reduce(tl.where(elig, s, neg), 0, tl.standard._elementwise_max)
        idx = tl.reduce(tl.where(elig & (s == mx), z, BIG), 0, tl.standard._elementwise_min)
        pick = tl.where(idx < BIG, idx, -1)
        tl.store(out_ptr + r, pick.to(tl.int64))
        elig = elig & (tl.abs(z - pick) > gap)
    for r0 in range(KR, k, FILL):
        rr = r0 + tl.arange(0, FILL)
        tl.store(out_ptr + rr, tl.full((FILL,), -1, tl.int64), mask=rr < k)


_kernel = _LazyJit(_select_slices_kernel)


def _u8(t):
    return t.view(torch.uint8) if t is not None and t.dtype == torch.bool else t


def select_slices_forward(
    scores: torch.Tensor,
    annotated: Optional[torch.Tensor],
    k: int,
    min_gap: int,
    valid: Optional[torch.Tensor],
    out: torch.Tensor,
) -> None:
    """Write the ``k`` selected indices (int64, -1 padded) into ``out`` in ONE launch."""
    D = scores.shape[0]
    a, v = _u8(annotated), _u8(valid)
    dummy = scores  # never read when the matching HAS_* is False
    BLOCK = max(16, triton.next_power_of_2(D))
    _kernel[(1,)](
        scores,
        scores.stride(0),
        a if a is not None else dummy,
        a.stride(0) if a is not None else 0,
        v if v is not None else dummy,
        v.stride(0) if v is not None else 0,
        out,
        D,
        k,
        min(k, D),
        min(min_gap, D),
        HAS_A=a is not None,
        HAS_V=v is not None,
        BLOCK=BLOCK,
        FILL=16,
        num_warps=8 if BLOCK >= 2048 else 4,
    )
