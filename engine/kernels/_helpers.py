"""Triton device functions shared by the sampling kernels (warp2d, demons_step,
regularize_field, propagate_chain), written once: the flat pixel index of a program,
the padding rule of a sample position with its NaN-safe clamps, the
linear-interpolation taps along one axis, the bilinear gather, and the float32 ->
bfloat16 rounding the interpreter lacks.

The conventions are those of the C++ kernels (csrc/warp2d/warp2d_cpu.cpp defines
them): positions in pixels, ``align_corners`` geometry, NaN mapped to the lower clamp
bound before any integer cast (a non-finite displacement reads padding and never
forms an out-of-range address). Jitted per mode with the kernels that call them
(engine/kernels/_jit.py).
"""

from __future__ import annotations

import triton.language as tl

from ._jit import helper

__all__ = [
    "flat_pixels",
    "clamp_nan",
    "pad_position",
    "border_gate",
    "linear_taps",
    "nearest_tap",
    "bilinear",
    "round_bf16",
]


@helper
def flat_pixels(total, HW, W, BLOCK: tl.constexpr):
    """This program's ``BLOCK`` flat indices ``offs`` over ``[planes, H, W]`` (int64), the
    mask ``offs < total`` and the plane, row and column of each."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    plane = offs // HW
    rem = offs - plane * HW
    y = rem // W
    return offs, offs < total, plane, y, rem - y * W


@helper
def clamp_nan(v, lo, hi):
    """``v`` clamped to ``[lo, hi]``; NaN goes to ``lo`` (clampnan of the C++ kernels)."""
    return tl.where(v > lo, tl.where(v < hi, v, hi), lo)


@helper
def pad_position(p, size, BORDER: tl.constexpr):
    """A sample position under the padding rule. Border: clamped to ``[0, size-1]``.
    Zeros: clamped to ``[-2, size+1]``, where every corner is already outside (reads 0)
    and the integer cast of the floor stays exact."""
    if BORDER:
        q = clamp_nan(p, 0, size - 1)
    else:
        q = clamp_nan(p, -2, size + 1)
    return q


@helper
def border_gate(p, size):
    """d(position)/d(u) under border padding: 1 strictly inside ``(0, size-1)``, 0 where
    the position is clamped (NaN counts as clamped). Call it on the unclamped position."""
    return ((p > 0) & (p < size - 1)).to(p.dtype)


@helper
def linear_taps(p, size):
    """Linear-interpolation taps of the padded position ``p`` along an axis of ``size``:
    ``(i0, i1, a, w, v0, v1)`` with the two corner indices clamped into ``[0, size-1]``
    (int64: every address stays in range), their weights ``a = 1 - w`` and ``w``, and
    whether each corner is inside (a corner outside is masked: it reads 0)."""
    f = tl.floor(p)
    w = p - f
    i0 = f.to(tl.int64)
    i1 = i0 + 1
    v0 = (i0 >= 0) & (i0 < size)
    v1 = (i1 >= 0) & (i1 < size)
    c0 = tl.minimum(tl.maximum(i0, 0), size - 1)
    c1 = tl.minimum(tl.maximum(i1, 0), size - 1)
    return c0, c1, 1 - w, w, v0, v1


@helper
def nearest_tap(p, size):
    """Nearest-neighbour tap of the padded position ``p``: the index ``floor(p + 0.5)``
    (ties round up) clamped into ``[0, size-1]`` (int64), and whether it is inside."""
    i = tl.floor(p + 0.5).to(tl.int64)
    return tl.minimum(tl.maximum(i, 0), size - 1), (i >= 0) & (i < size)


@helper
def bilinear(ptr, r0, r1, c0, c1, ay, wy, ax, wx, m00, m01, m10, m11):
    """Bilinear sample ``sum_k w_k v_k`` of the corners at ``ptr + r_i + c_j`` (row and
    column offsets), weights ``(1-wy)(1-wx), (1-wy) wx, wy (1-wx), wy wx``; a corner
    whose mask is false reads 0. Loads widen exactly to the weights' dtype (float32,
    float64 for float64 data): the accumulation is in that dtype."""
    v00 = tl.load(ptr + r0 + c0, mask=m00, other=0.0).to(wy.dtype)
    v01 = tl.load(ptr + r0 + c1, mask=m01, other=0.0).to(wy.dtype)
    v10 = tl.load(ptr + r1 + c0, mask=m10, other=0.0).to(wy.dtype)
    v11 = tl.load(ptr + r1 + c1, mask=m11, other=0.0).to(wy.dtype)
    return ay * ax * v00 + ay * wx * v01 + wy * ax * v10 + wy * wx * v11


@helper
def round_bf16(val):
    """float32 rounded to the nearest bfloat16 (ties to even), still as float32: the
    truncating cast that follows is then exact. The interpreter's own cast truncates;
    compiled Triton rounds to nearest even (fptrunc) and does not need this."""
    bits = val.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)
