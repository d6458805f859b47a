"""Triton kernels of warp2d (the contract: csrc/warp2d/warp2d.h; semantics: the CPU
kernel csrc/warp2d/warp2d_cpu.cpp, which these follow step for step).

    out[n, c, y, x] = src[n, c](y + u[n, 0, y, x], x + u[n, 1, y, x])

Launchers (called by engine/ops/warp2d.py, which validates and allocates):

* ``warp2d_forward(src, u, out, bilinear=True, border=False)``
  ``src`` [N, C, Hs, Ws] float32/float64/float16/bfloat16 (uint8 with
  ``bilinear=False``), any strides; ``u`` [N, 2, H, W] in the accumulation dtype
  (float32, float64 for float64 sources), any strides; ``out`` [N, C, H, W] in src's
  dtype, any strides (written completely).
* ``warp2d_backward(grad_out, src, u, grad_src, grad_u, bilinear=True, border=False)``
  ``grad_out`` [N, C, H, W] in src's dtype; ``grad_src`` [N, C, Hs, Ws] in the
  accumulation dtype, ZERO-INITIALISED by the caller (scattered into with atomic
  adds), or None; ``grad_u`` [N, 2, H, W] in the accumulation dtype (written
  completely), or None.

One program per BLOCK output pixels of the flattened (n, y, x) index (int64), looping
over channels; accumulation in u's dtype (float32, or float64 for float64 inputs).

TRITON_INTERPRET is honoured per launch: the kernels and the shared helpers of
engine/kernels/_helpers.py are jitted lazily, once per mode (compiled / interpreter;
engine/kernels/_jit.py), so tests can switch to the interpreter on CPU tensors in a
process that already launched compiled kernels, and vice versa.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton import knobs

from ._helpers import bilinear, border_gate, flat_pixels, linear_taps, nearest_tap, pad_position, round_bf16
from ._jit import LazyJit as _LazyJit

__all__ = ["warp2d_forward", "warp2d_backward"]

_BLOCK = 512
_NUM_WARPS = 4


def _warp2d_fwd_kernel(
    src_ptr,
    u_ptr,
    out_ptr,
    C,
    Hs,
    Ws,
    H,
    W,
    HW,
    total,
    ss0,
    ss1,
    ss2,
    ss3,
    us0,
    us1,
    us2,
    us3,
    os0,
    os1,
    os2,
    os3,
    BILINEAR: tl.constexpr,
    BORDER: tl.constexpr,
    ROUND_BF16: tl.constexpr,
    BLOCK: tl.constexpr,
):
    _, mask, n, y, x = flat_pixels(total, HW, W, BLOCK)  # flat (n, y, x), int64
    ub = u_ptr + n * us0 + y * us2 + x * us3
    uy = tl.load(ub, mask=mask, other=0.0)
    ux = tl.load(ub + us1, mask=mask, other=0.0)
    # positions in the accumulation dtype (u's: float32, float64 for float64 data),
    # under the padding rule (NaN-safe clamps)
    py = pad_position(y.to(uy.dtype) + uy, Hs, BORDER)
    px = pad_position(x.to(ux.dtype) + ux, Ws, BORDER)
    sp = src_ptr + n * ss0  # per-pixel base of image n (pointer arithmetic: 64-bit)
    op = out_ptr + n * os0 + y * os2 + x * os3
    if BILINEAR:
        yc0, yc1, ay, wy, vy0, vy1 = linear_taps(py, Hs)
        xc0, xc1, ax, wx, vx0, vx1 = linear_taps(px, Ws)
        r0 = yc0 * ss2
        r1 = yc1 * ss2
        c0 = xc0 * ss3
        c1 = xc1 * ss3
        m00 = mask & vy0 & vx0
        m01 = mask & vy0 & vx1
        m10 = mask & vy1 & vx0
        m11 = mask & vy1 & vx1
        for _c in range(0, C):
            val = bilinear(sp, r0, r1, c0, c1, ay, wy, ax, wx, m00, m01, m10, m11)
            if ROUND_BF16:
                val = round_bf16(val)
            # one rounding to the storage dtype (round to nearest even, as the CPU kernel)
            tl.store(op, val.to(out_ptr.dtype.element_ty), mask=mask)
            sp += ss1
            op += os1
    else:
        yi, vy = nearest_tap(py, Hs)
        xi, vx = nearest_tap(px, Ws)
        valid = mask & vy & vx
        off = yi * ss2 + xi * ss3
        for _c in range(0, C):
            v = tl.load(sp + off, mask=valid, other=0)  # a copy: no conversion (uint8 too)
            tl.store(op, v, mask=mask)
            sp += ss1
            op += os1


def _warp2d_bwd_kernel(
    go_ptr,
    src_ptr,
    u_ptr,
    gs_ptr,
    gu_ptr,
    C,
    Hs,
    Ws,
    H,
    W,
    HW,
    total,
    gos0,
    gos1,
    gos2,
    gos3,
    ss0,
    ss1,
    ss2,
    ss3,
    us0,
    us1,
    us2,
    us3,
    gss0,
    gss1,
    gss2,
    gss3,
    gus0,
    gus1,
    gus2,
    gus3,
    BILINEAR: tl.constexpr,
    BORDER: tl.constexpr,
    HAS_GS: tl.constexpr,
    HAS_GU: tl.constexpr,
    BLOCK: tl.constexpr,
):
    _, mask, n, y, x = flat_pixels(total, HW, W, BLOCK)  # flat (n, y, x), int64
    ub = u_ptr + n * us0 + y * us2 + x * us3
    uy = tl.load(ub, mask=mask, other=0.0)
    ux = tl.load(ub + us1, mask=mask, other=0.0)
    # positions in the accumulation dtype (u's: float32, float64 for float64 data)
    py = y.to(uy.dtype) + uy
    px = x.to(ux.dtype) + ux
    ay = tl.full(py.shape, 0, py.dtype)
    ax = tl.full(px.shape, 0, px.dtype)
    if BORDER:
        # no gradient w.r.t. u where the position is clamped (NaN counts as clamped)
        gys = border_gate(py, Hs)
        gxs = border_gate(px, Ws)
    else:
        gys = tl.full(py.shape, 1, py.dtype)
        gxs = tl.full(px.shape, 1, px.dtype)
    py = pad_position(py, Hs, BORDER)
    px = pad_position(px, Ws, BORDER)
    gop = go_ptr + n * gos0 + y * gos2 + x * gos3
    sp = src_ptr + n * ss0
    gsp = gs_ptr + n * gss0
    if BILINEAR:
        yc0, yc1, a0, wy, vy0, vy1 = linear_taps(py, Hs)
        xc0, xc1, b0, wx, vx0, vx1 = linear_taps(px, Ws)
        m00 = mask & vy0 & vx0
        m01 = mask & vy0 & vx1
        m10 = mask & vy1 & vx0
        m11 = mask & vy1 & vx1
        for _c in range(0, C):
            # grad_out widens exactly to the accumulation dtype
            g = tl.load(gop, mask=mask, other=0.0).to(wy.dtype)
            if HAS_GS:
                tl.atomic_add(gsp + yc0 * gss2 + xc0 * gss3, a0 * b0 * g, mask=m00, sem="relaxed")
                tl.atomic_add(gsp + yc0 * gss2 + xc1 * gss3, a0 * wx * g, mask=m01, sem="relaxed")
                tl.atomic_add(gsp + yc1 * gss2 + xc0 * gss3, wy * b0 * g, mask=m10, sem="relaxed")
                tl.atomic_add(gsp + yc1 * gss2 + xc1 * gss3, wy * wx * g, mask=m11, sem="relaxed")
            if HAS_GU:
                # an invalid corner reads 0: its derivative weight is 0 in the CPU kernel
                v00 = tl.load(sp + yc0 * ss2 + xc0 * ss3, mask=m00, other=0.0).to(wy.dtype)
                v01 = tl.load(sp + yc0 * ss2 + xc1 * ss3, mask=m01, other=0.0).to(wy.dtype)
                v10 = tl.load(sp + yc1 * ss2 + xc0 * ss3, mask=m10, other=0.0).to(wy.dtype)
                v11 = tl.load(sp + yc1 * ss2 + xc1 * ss3, mask=m11, other=0.0).to(wy.dtype)
                ay += g * (b0 * (v10 - v00) + wx * (v11 - v01))
                ax += g * (a0 * (v01 - v00) + wy * (v11 - v10))
            gop += gos1
            sp += ss1
            gsp += gss1
    else:
        if HAS_GS:
            yi, vy = nearest_tap(py, Hs)
            xi, vx = nearest_tap(px, Ws)
            valid = mask & vy & vx
            off = yi * gss2 + xi * gss3
            for _c in range(0, C):
                # grad_out widens exactly to the accumulation dtype
                g = tl.load(gop, mask=mask, other=0.0).to(py.dtype)
                tl.atomic_add(gsp + off, g, mask=valid, sem="relaxed")
                gop += gos1
                gsp += gss1
        # nearest: piecewise constant in u, zero gradient (ay = ax = 0)
    if HAS_GU:
        gub = gu_ptr + n * gus0 + y * gus2 + x * gus3
        tl.store(gub, ay * gys, mask=mask)
        tl.store(gub + gus1, ax * gxs, mask=mask)


_fwd = _LazyJit(_warp2d_fwd_kernel)
_bwd = _LazyJit(_warp2d_bwd_kernel)


def warp2d_forward(src, u, out, *, bilinear: bool = True, border: bool = False):
    """Write warp2d(src, u) into ``out`` (see the module docstring for shapes)."""
    N, C, Hs, Ws = src.shape
    H, W = u.shape[2], u.shape[3]
    total = N * H * W
    if total == 0 or C == 0:
        return out
    grid = (triton.cdiv(total, _BLOCK),)
    _fwd[grid](
        src,
        u,
        out,
        C,
        Hs,
        Ws,
        H,
        W,
        H * W,
        total,
        *src.stride(),
        *u.stride(),
        *out.stride(),
        BILINEAR=bool(bilinear),
        BORDER=bool(border),
        # the interpreter's float32 -> bfloat16 cast truncates; compiled Triton rounds
        # to nearest even (fptrunc), so only the interpreter needs the manual rounding
        ROUND_BF16=bool(knobs.runtime.interpret) and out.dtype == torch.bfloat16,
        BLOCK=_BLOCK,
        num_warps=_NUM_WARPS,
    )
    return out


def warp2d_backward(grad_out, src, u, grad_src, grad_u, *, bilinear: bool = True, border: bool = False):
    """Accumulate d(loss)/d(src) into the zeroed ``grad_src`` and write d(loss)/d(u)
    into ``grad_u`` (either may be None)."""
    N, C, Hs, Ws = src.shape
    H, W = u.shape[2], u.shape[3]
    total = N * H * W
    has_gs, has_gu = grad_src is not None, grad_u is not None
    if total == 0 or not (has_gs or has_gu):
        return grad_src, grad_u
    gs = grad_src if has_gs else u  # placeholder pointer, never touched (HAS_GS=False)
    gu = grad_u if has_gu else u  # placeholder pointer, never touched (HAS_GU=False)
    grid = (triton.cdiv(total, _BLOCK),)
    _bwd[grid](
        grad_out,
        src,
        u,
        gs,
        gu,
        C,
        Hs,
        Ws,
        H,
        W,
        H * W,
        total,
        *grad_out.stride(),
        *src.stride(),
        *u.stride(),
        *gs.stride(),
        *gu.stride(),
        BILINEAR=bool(bilinear),
        BORDER=bool(border),
        HAS_GS=has_gs,
        HAS_GU=has_gu,
        BLOCK=_BLOCK,
        num_warps=_NUM_WARPS,
    )
    return grad_src, grad_u
