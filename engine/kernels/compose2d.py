"""Triton kernels of compose2d (the contract: csrc/compose2d/compose2d.h; semantics:
the CPU kernel csrc/compose2d/compose2d_cpu.cpp, which these follow step for step).

    out[n, :, y, x] = v[n, :, y, x] + u[n, :](y + v[n, 0, y, x], x + v[n, 1, y, x])

Launchers (called by engine/ops/compose2d.py, which validates and allocates):

* ``compose2d_forward(u, v, out, border=True)``: ``u``, ``v`` [N, 2, H, W] float32 or
  float64 (same dtype), any strides; ``out`` [N, 2, H, W] same dtype, any strides
  (written completely).
* ``compose2d_backward(grad_out, u, v, grad_u, grad_v, border=True)``: ``grad_out``
  [N, 2, H, W]; ``grad_u`` [N, 2, H, W] ZERO-INITIALISED by the caller (scattered into
  with atomic adds), or None; ``grad_v`` [N, 2, H, W] (written completely), or None.

One program per BLOCK output pixels of the flattened (n, y, x) index (int64). The
arithmetic is in the fields' dtype (float32, or float64). Kernels are jitted at
launch time in the mode TRITON_INTERPRET asks for (engine/kernels/_jit.py); the
sampling steps are the shared helpers of engine/kernels/_helpers.py.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._helpers import bilinear, border_gate, linear_taps, pad_position
from ._jit import LazyJit as _LazyJit

__all__ = ["compose2d_forward", "compose2d_backward"]

_BLOCK = 512
_NUM_WARPS = 4


def _compose2d_fwd_kernel(
    u_ptr, v_ptr, out_ptr,
    H, W, HW, total,
    us0, us1, us2, us3,
    vs0, vs1, vs2, vs3,
    os0, os1, os2, os3,
    BORDER: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)  # flat (n, y, x), int64
    mask = offs < total
    n = offs // HW
    rem = offs - n * HW
    y = rem // W
    x = rem - y * W
    vb = v_ptr + n * vs0 + y * vs2 + x * vs3
    dy = tl.load(vb, mask=mask, other=0.0)
    dx = tl.load(vb + vs1, mask=mask, other=0.0)
    # positions in the fields' dtype, under the padding rule (NaN-safe clamps)
    py = pad_position(y.to(dy.dtype) + dy, H, BORDER)
    px = pad_position(x.to(dx.dtype) + dx, W, BORDER)
    yc0, yc1, ay, wy, vy0, vy1 = linear_taps(py, H)
    xc0, xc1, ax, wx, vx0, vx1 = linear_taps(px, W)
    r0 = yc0 * us2
    r1 = yc1 * us2
    c0 = xc0 * us3
    c1 = xc1 * us3
    m00 = mask & vy0 & vx0
    m01 = mask & vy0 & vx1
    m10 = mask & vy1 & vx0
    m11 = mask & vy1 & vx1
    u0 = u_ptr + n * us0
    s0 = bilinear(u0, r0, r1, c0, c1, ay, wy, ax, wx, m00, m01, m10, m11)
    s1 = bilinear(u0 + us1, r0, r1, c0, c1, ay, wy, ax, wx, m00, m01, m10, m11)
    op = out_ptr + n * os0 + y * os2 + x * os3
    tl.store(op, dy + s0, mask=mask)
    tl.store(op + os1, dx + s1, mask=mask)


def _compose2d_bwd_kernel(
    go_ptr, u_ptr, v_ptr, gu_ptr, gv_ptr,
    H, W, HW, total,
    gos0, gos1, gos2, gos3,
    us0, us1, us2, us3,
    vs0, vs1, vs2, vs3,
    gus0, gus1, gus2, gus3,
    gvs0, gvs1, gvs2, gvs3,
    BORDER: tl.constexpr, HAS_GU: tl.constexpr, HAS_GV: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)  # flat (n, y, x), int64
    mask = offs < total
    n = offs // HW
    rem = offs - n * HW
    y = rem // W
    x = rem - y * W
    vb = v_ptr + n * vs0 + y * vs2 + x * vs3
    dy = tl.load(vb, mask=mask, other=0.0)
    dx = tl.load(vb + vs1, mask=mask, other=0.0)
    gb = go_ptr + n * gos0 + y * gos2 + x * gos3
    g0 = tl.load(gb, mask=mask, other=0.0)
    g1 = tl.load(gb + gos1, mask=mask, other=0.0)
    py = y.to(dy.dtype) + dy
    px = x.to(dx.dtype) + dx
    if BORDER:
        # no gradient through the sampling term along a clamped axis (NaN: clamped)
        gys = border_gate(py, H)
        gxs = border_gate(px, W)
    else:
        gys = tl.full(py.shape, 1, py.dtype)
        gxs = tl.full(px.shape, 1, px.dtype)
    py = pad_position(py, H, BORDER)
    px = pad_position(px, W, BORDER)
    yc0, yc1, a0, wy, vy0, vy1 = linear_taps(py, H)
    xc0, xc1, b0, wx, vx0, vx1 = linear_taps(px, W)
    m00 = mask & vy0 & vx0
    m01 = mask & vy0 & vx1
    m10 = mask & vy1 & vx0
    m11 = mask & vy1 & vx1
    if HAS_GU:
        gq0 = gu_ptr + n * gus0
        gq1 = gq0 + gus1
        tl.atomic_add(gq0 + yc0 * gus2 + xc0 * gus3, a0 * b0 * g0, mask=m00, sem="relaxed")
        tl.atomic_add(gq0 + yc0 * gus2 + xc1 * gus3, a0 * wx * g0, mask=m01, sem="relaxed")
        tl.atomic_add(gq0 + yc1 * gus2 + xc0 * gus3, wy * b0 * g0, mask=m10, sem="relaxed")
        tl.atomic_add(gq0 + yc1 * gus2 + xc1 * gus3, wy * wx * g0, mask=m11, sem="relaxed")
        tl.atomic_add(gq1 + yc0 * gus2 + xc0 * gus3, a0 * b0 * g1, mask=m00, sem="relaxed")
        tl.atomic_add(gq1 + yc0 * gus2 + xc1 * gus3, a0 * wx * g1, mask=m01, sem="relaxed")
        tl.atomic_add(gq1 + yc1 * gus2 + xc0 * gus3, wy * b0 * g1, mask=m10, sem="relaxed")
        tl.atomic_add(gq1 + yc1 * gus2 + xc1 * gus3, wy * wx * g1, mask=m11, sem="relaxed")
    if HAS_GV:
        u0 = u_ptr + n * us0
        u1 = u0 + us1
        # g . u at the four corners (an invalid corner reads 0, as in the CPU kernel)
        k00 = g0 * tl.load(u0 + yc0 * us2 + xc0 * us3, mask=m00, other=0.0) \
            + g1 * tl.load(u1 + yc0 * us2 + xc0 * us3, mask=m00, other=0.0)
        k01 = g0 * tl.load(u0 + yc0 * us2 + xc1 * us3, mask=m01, other=0.0) \
            + g1 * tl.load(u1 + yc0 * us2 + xc1 * us3, mask=m01, other=0.0)
        k10 = g0 * tl.load(u0 + yc1 * us2 + xc0 * us3, mask=m10, other=0.0) \
            + g1 * tl.load(u1 + yc1 * us2 + xc0 * us3, mask=m10, other=0.0)
        k11 = g0 * tl.load(u0 + yc1 * us2 + xc1 * us3, mask=m11, other=0.0) \
            + g1 * tl.load(u1 + yc1 * us2 + xc1 * us3, mask=m11, other=0.0)
        ay = b0 * (k10 - k00) + wx * (k11 - k01)
        ax = a0 * (k01 - k00) + wy * (k11 - k10)
        gvb = gv_ptr + n * gvs0 + y * gvs2 + x * gvs3
        tl.store(gvb, g0 + ay * gys, mask=mask)
        tl.store(gvb + gvs1, g1 + ax * gxs, mask=mask)


_fwd = _LazyJit(_compose2d_fwd_kernel)
_bwd = _LazyJit(_compose2d_bwd_kernel)


def compose2d_forward(u, v, out, *, border: bool = True):
    """Write compose2d(u, v) into ``out`` (see the module docstring for shapes)."""
    N, _, H, W = v.shape
    total = N * H * W
    if total == 0:
        return out
    grid = (triton.cdiv(total, _BLOCK),)
    _fwd[grid](
        u, v, out,
        H, W, H * W, total,
        *u.stride(), *v.stride(), *out.stride(),
        BORDER=bool(border), BLOCK=_BLOCK, num_warps=_NUM_WARPS,
    )
    return out


def compose2d_backward(grad_out, u, v, grad_u, grad_v, *, border: bool = True):
    """Accumulate d(loss)/d(u) into the zeroed ``grad_u`` and write d(loss)/d(v) into
    ``grad_v`` (either may be None)."""
    N, _, H, W = v.shape
    total = N * H * W
    has_gu, has_gv = grad_u is not None, grad_v is not None
    if total == 0 or not (has_gu or has_gv):
        return grad_u, grad_v
    gu = grad_u if has_gu else u  # placeholder pointer, never touched (HAS_GU=False)
    gv = grad_v if has_gv else v  # placeholder pointer, never touched (HAS_GV=False)
    grid = (triton.cdiv(total, _BLOCK),)
    _bwd[grid](
        grad_out, u, v, gu, gv,
        H, W, H * W, total,
        *grad_out.stride(), *u.stride(), *v.stride(), *gu.stride(), *gv.stride(),
        BORDER=bool(border), HAS_GU=has_gu, HAS_GV=has_gv, BLOCK=_BLOCK, num_warps=_NUM_WARPS,
    )
    return grad_u, grad_v
