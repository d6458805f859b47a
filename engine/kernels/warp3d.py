"""Triton kernels of warp3d (the contract: csrc/warp3d/warp3d.h; semantics: the CPU
kernel csrc/warp3d/warp3d_cpu.cpp, which these follow step for step).

    out[n, c, z, y, x] = src[n, c](z + u[n, 0, z, y, x], y + u[n, 1, z, y, x], x + u[n, 2, z, y, x])

Launchers (called by engine/ops/warp3d.py, which validates and allocates):

* ``warp3d_forward(src, u, out, bilinear=True, border=False)``
  ``src`` [N, C, Ds, Hs, Ws] float32/float64/float16/bfloat16 (uint8 with
  ``bilinear=False``), any strides; ``u`` [N, 3, D, H, W] in the accumulation dtype
  (float32, float64 for float64 sources), any strides; ``out`` [N, C, D, H, W] in
  src's dtype, any strides (written completely).
* ``warp3d_backward(grad_out, src, u, grad_src, grad_u, bilinear=True, border=False)``
  ``grad_out`` [N, C, D, H, W] in src's dtype; ``grad_src`` [N, C, Ds, Hs, Ws] in the
  accumulation dtype, ZERO-INITIALISED by the caller (scattered into with atomic
  adds), or None; ``grad_u`` [N, 3, D, H, W] in the accumulation dtype (written
  completely), or None.

One program per BLOCK output voxels of the flattened (n, z, y, x) index (int64),
looping over channels; accumulation in u's dtype (float32, or float64 for float64
inputs). Kernels are jitted at launch time in the mode TRITON_INTERPRET asks for
(engine/kernels/_jit.py); the sampling steps are the shared helpers of
engine/kernels/_helpers.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton import knobs

from ._helpers import border_gate, linear_taps, nearest_tap, pad_position, round_bf16
from ._jit import LazyJit as _LazyJit

__all__ = ["warp3d_forward", "warp3d_backward"]

_BLOCK = 256
_NUM_WARPS = 4


def _warp3d_fwd_kernel(
    src_ptr, u_ptr, out_ptr,
    C, Ds, Hs, Ws, D, H, W, HW, DHW, total,
    ss0, ss1, ss2, ss3, ss4,
    us0, us1, us2, us3, us4,
    os0, os1, os2, os3, os4,
    BILINEAR: tl.constexpr, BORDER: tl.constexpr, ROUND_BF16: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)  # flat (n, z, y, x), int64
    mask = offs < total
    n = offs // DHW
    rem = offs - n * DHW
    z = rem // HW
    rem = rem - z * HW
    y = rem // W
    x = rem - y * W
    ub = u_ptr + n * us0 + z * us2 + y * us3 + x * us4
    uz = tl.load(ub, mask=mask, other=0.0)
    uy = tl.load(ub + us1, mask=mask, other=0.0)
    ux = tl.load(ub + 2 * us1, mask=mask, other=0.0)
    # positions in the accumulation dtype (u's: float32, float64 for float64 data),
    # under the padding rule (NaN-safe clamps)
    pz = pad_position(z.to(uz.dtype) + uz, Ds, BORDER)
    py = pad_position(y.to(uy.dtype) + uy, Hs, BORDER)
    px = pad_position(x.to(ux.dtype) + ux, Ws, BORDER)
    sp = src_ptr + n * ss0  # per-voxel base of volume n (pointer arithmetic: 64-bit)
    op = out_ptr + n * os0 + z * os2 + y * os3 + x * os4
    if BILINEAR:
        zc0, zc1, az, wz, vz0, vz1 = linear_taps(pz, Ds)
        yc0, yc1, ay, wy, vy0, vy1 = linear_taps(py, Hs)
        xc0, xc1, ax, wx, vx0, vx1 = linear_taps(px, Ws)
        # invalid corners are masked (read 0); clamped indices keep every address in range
        oz0 = zc0 * ss2
        oz1 = zc1 * ss2
        oy0 = yc0 * ss3
        oy1 = yc1 * ss3
        ox0 = xc0 * ss4
        ox1 = xc1 * ss4
        # weight products in the reference's order: (wz * wy) * wx
        w00 = az * ay
        w01 = az * wy
        w10 = wz * ay
        w11 = wz * wy
        m000 = mask & vz0 & vy0 & vx0
        m001 = mask & vz0 & vy0 & vx1
        m010 = mask & vz0 & vy1 & vx0
        m011 = mask & vz0 & vy1 & vx1
        m100 = mask & vz1 & vy0 & vx0
        m101 = mask & vz1 & vy0 & vx1
        m110 = mask & vz1 & vy1 & vx0
        m111 = mask & vz1 & vy1 & vx1
        for _c in range(0, C):
            # loads widen exactly to the accumulation dtype
            v000 = tl.load(sp + oz0 + oy0 + ox0, mask=m000, other=0.0).to(wz.dtype)
            v001 = tl.load(sp + oz0 + oy0 + ox1, mask=m001, other=0.0).to(wz.dtype)
            v010 = tl.load(sp + oz0 + oy1 + ox0, mask=m010, other=0.0).to(wz.dtype)
            v011 = tl.load(sp + oz0 + oy1 + ox1, mask=m011, other=0.0).to(wz.dtype)
            v100 = tl.load(sp + oz1 + oy0 + ox0, mask=m100, other=0.0).to(wz.dtype)
            v101 = tl.load(sp + oz1 + oy0 + ox1, mask=m101, other=0.0).to(wz.dtype)
            v110 = tl.load(sp + oz1 + oy1 + ox0, mask=m110, other=0.0).to(wz.dtype)
            v111 = tl.load(sp + oz1 + oy1 + ox1, mask=m111, other=0.0).to(wz.dtype)
            val = (w00 * ax * v000 + w00 * wx * v001 + w01 * ax * v010 + w01 * wx * v011
                   + w10 * ax * v100 + w10 * wx * v101 + w11 * ax * v110 + w11 * wx * v111)
            if ROUND_BF16:
                val = round_bf16(val)
            # one rounding to the storage dtype (round to nearest even, as the CPU kernel)
            tl.store(op, val.to(out_ptr.dtype.element_ty), mask=mask)
            sp += ss1
            op += os1
    else:
        zi, vz = nearest_tap(pz, Ds)
        yi, vy = nearest_tap(py, Hs)
        xi, vx = nearest_tap(px, Ws)
        valid = mask & vz & vy & vx
        off = zi * ss2 + yi * ss3 + xi * ss4
        for _c in range(0, C):
            v = tl.load(sp + off, mask=valid, other=0)  # a copy: no conversion (uint8 too)
            tl.store(op, v, mask=mask)
            sp += ss1
            op += os1


def _warp3d_bwd_kernel(
    go_ptr, src_ptr, u_ptr, gs_ptr, gu_ptr,
    C, Ds, Hs, Ws, D, H, W, HW, DHW, total,
    gos0, gos1, gos2, gos3, gos4,
    ss0, ss1, ss2, ss3, ss4,
    us0, us1, us2, us3, us4,
    gss0, gss1, gss2, gss3, gss4,
    gus0, gus1, gus2, gus3, gus4,
    BILINEAR: tl.constexpr, BORDER: tl.constexpr, HAS_GS: tl.constexpr, HAS_GU: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)  # flat (n, z, y, x), int64
    mask = offs < total
    n = offs // DHW
    rem = offs - n * DHW
    z = rem // HW
    rem = rem - z * HW
    y = rem // W
    x = rem - y * W
    ub = u_ptr + n * us0 + z * us2 + y * us3 + x * us4
    uz = tl.load(ub, mask=mask, other=0.0)
    uy = tl.load(ub + us1, mask=mask, other=0.0)
    ux = tl.load(ub + 2 * us1, mask=mask, other=0.0)
    # positions in the accumulation dtype (u's: float32, float64 for float64 data)
    pz = z.to(uz.dtype) + uz
    py = y.to(uy.dtype) + uy
    px = x.to(ux.dtype) + ux
    gz_acc = tl.full(pz.shape, 0, pz.dtype)
    gy_acc = tl.full(py.shape, 0, py.dtype)
    gx_acc = tl.full(px.shape, 0, px.dtype)
    if BORDER:
        # no gradient w.r.t. u along an axis where the position is clamped (NaN counts
        # as clamped)
        gzs = border_gate(pz, Ds)
        gys = border_gate(py, Hs)
        gxs = border_gate(px, Ws)
    else:
        gzs = tl.full(pz.shape, 1, pz.dtype)
        gys = tl.full(py.shape, 1, py.dtype)
        gxs = tl.full(px.shape, 1, px.dtype)
    pz = pad_position(pz, Ds, BORDER)
    py = pad_position(py, Hs, BORDER)
    px = pad_position(px, Ws, BORDER)
    gop = go_ptr + n * gos0 + z * gos2 + y * gos3 + x * gos4
    sp = src_ptr + n * ss0
    gsp = gs_ptr + n * gss0
    if BILINEAR:
        zc0, zc1, az, wz, vz0, vz1 = linear_taps(pz, Ds)
        yc0, yc1, ay, wy, vy0, vy1 = linear_taps(py, Hs)
        xc0, xc1, ax, wx, vx0, vx1 = linear_taps(px, Ws)
        m000 = mask & vz0 & vy0 & vx0
        m001 = mask & vz0 & vy0 & vx1
        m010 = mask & vz0 & vy1 & vx0
        m011 = mask & vz0 & vy1 & vx1
        m100 = mask & vz1 & vy0 & vx0
        m101 = mask & vz1 & vy0 & vx1
        m110 = mask & vz1 & vy1 & vx0
        m111 = mask & vz1 & vy1 & vx1
        w00 = az * ay
        w01 = az * wy
        w10 = wz * ay
        w11 = wz * wy
        for _c in range(0, C):
            # grad_out widens exactly to the accumulation dtype
            g = tl.load(gop, mask=mask, other=0.0).to(wz.dtype)
            if HAS_GS:
                gz0 = gsp + zc0 * gss2
                gz1 = gsp + zc1 * gss2
                tl.atomic_add(gz0 + yc0 * gss3 + xc0 * gss4, w00 * ax * g, mask=m000, sem="relaxed")
                tl.atomic_add(gz0 + yc0 * gss3 + xc1 * gss4, w00 * wx * g, mask=m001, sem="relaxed")
                tl.atomic_add(gz0 + yc1 * gss3 + xc0 * gss4, w01 * ax * g, mask=m010, sem="relaxed")
                tl.atomic_add(gz0 + yc1 * gss3 + xc1 * gss4, w01 * wx * g, mask=m011, sem="relaxed")
                tl.atomic_add(gz1 + yc0 * gss3 + xc0 * gss4, w10 * ax * g, mask=m100, sem="relaxed")
                tl.atomic_add(gz1 + yc0 * gss3 + xc1 * gss4, w10 * wx * g, mask=m101, sem="relaxed")
                tl.atomic_add(gz1 + yc1 * gss3 + xc0 * gss4, w11 * ax * g, mask=m110, sem="relaxed")
                tl.atomic_add(gz1 + yc1 * gss3 + xc1 * gss4, w11 * wx * g, mask=m111, sem="relaxed")
            if HAS_GU:
                # an invalid corner reads 0: its derivative weight is 0 in the CPU kernel
                sz0 = sp + zc0 * ss2
                sz1 = sp + zc1 * ss2
                v000 = tl.load(sz0 + yc0 * ss3 + xc0 * ss4, mask=m000, other=0.0).to(wz.dtype)
                v001 = tl.load(sz0 + yc0 * ss3 + xc1 * ss4, mask=m001, other=0.0).to(wz.dtype)
                v010 = tl.load(sz0 + yc1 * ss3 + xc0 * ss4, mask=m010, other=0.0).to(wz.dtype)
                v011 = tl.load(sz0 + yc1 * ss3 + xc1 * ss4, mask=m011, other=0.0).to(wz.dtype)
                v100 = tl.load(sz1 + yc0 * ss3 + xc0 * ss4, mask=m100, other=0.0).to(wz.dtype)
                v101 = tl.load(sz1 + yc0 * ss3 + xc1 * ss4, mask=m101, other=0.0).to(wz.dtype)
                v110 = tl.load(sz1 + yc1 * ss3 + xc0 * ss4, mask=m110, other=0.0).to(wz.dtype)
                v111 = tl.load(sz1 + yc1 * ss3 + xc1 * ss4, mask=m111, other=0.0).to(wz.dtype)
                gz_acc += g * (ay * ax * (v100 - v000) + ay * wx * (v101 - v001)
                               + wy * ax * (v110 - v010) + wy * wx * (v111 - v011))
                gy_acc += g * (az * ax * (v010 - v000) + az * wx * (v011 - v001)
                               + wz * ax * (v110 - v100) + wz * wx * (v111 - v101))
                gx_acc += g * (az * ay * (v001 - v000) + az * wy * (v011 - v010)
                               + wz * ay * (v101 - v100) + wz * wy * (v111 - v110))
            gop += gos1
            sp += ss1
            gsp += gss1
    else:
        if HAS_GS:
            zi, vz = nearest_tap(pz, Ds)
            yi, vy = nearest_tap(py, Hs)
            xi, vx = nearest_tap(px, Ws)
            valid = mask & vz & vy & vx
            off = zi * gss2 + yi * gss3 + xi * gss4
            for _c in range(0, C):
                # grad_out widens exactly to the accumulation dtype
                g = tl.load(gop, mask=mask, other=0.0).to(pz.dtype)
                tl.atomic_add(gsp + off, g, mask=valid, sem="relaxed")
                gop += gos1
                gsp += gss1
        # nearest: piecewise constant in u, zero gradient (accumulators stay 0)
    if HAS_GU:
        gub = gu_ptr + n * gus0 + z * gus2 + y * gus3 + x * gus4
        tl.store(gub, gz_acc * gzs, mask=mask)
        tl.store(gub + gus1, gy_acc * gys, mask=mask)
        tl.store(gub + 2 * gus1, gx_acc * gxs, mask=mask)


_fwd = _LazyJit(_warp3d_fwd_kernel)
_bwd = _LazyJit(_warp3d_bwd_kernel)


def warp3d_forward(src, u, out, *, bilinear: bool = True, border: bool = False):
    """Write warp3d(src, u) into ``out`` (see the module docstring for shapes)."""
    N, C, Ds, Hs, Ws = src.shape
    D, H, W = u.shape[2], u.shape[3], u.shape[4]
    total = N * D * H * W
    if total == 0 or C == 0:
        return out
    grid = (triton.cdiv(total, _BLOCK),)
    _fwd[grid](
        src, u, out,
        C, Ds, Hs, Ws, D, H, W, H * W, D * H * W, total,
        *src.stride(), *u.stride(), *out.stride(),
        BILINEAR=bool(bilinear), BORDER=bool(border),
        # the interpreter's float32 -> bfloat16 cast truncates; compiled Triton rounds
        # to nearest even (fptrunc), so only the interpreter needs the manual rounding
        ROUND_BF16=bool(knobs.runtime.interpret) and out.dtype == torch.bfloat16,
        BLOCK=_BLOCK, num_warps=_NUM_WARPS,
    )
    return out


def warp3d_backward(grad_out, src, u, grad_src, grad_u, *, bilinear: bool = True, border: bool = False):
    """Accumulate d(loss)/d(src) into the zeroed ``grad_src`` and write d(loss)/d(u)
    into ``grad_u`` (either may be None)."""
    N, C, Ds, Hs, Ws = src.shape
    D, H, W = u.shape[2], u.shape[3], u.shape[4]
    total = N * D * H * W
    has_gs, has_gu = grad_src is not None, grad_u is not None
    if total == 0 or not (has_gs or has_gu):
        return grad_src, grad_u
    gs = grad_src if has_gs else u  # placeholder pointer, never touched (HAS_GS=False)
    gu = grad_u if has_gu else u  # placeholder pointer, never touched (HAS_GU=False)
    grid = (triton.cdiv(total, _BLOCK),)
    _bwd[grid](
        grad_out, src, u, gs, gu,
        C, Ds, Hs, Ws, D, H, W, H * W, D * H * W, total,
        *grad_out.stride(), *src.stride(), *u.stride(), *gs.stride(), *gu.stride(),
        BILINEAR=bool(bilinear), BORDER=bool(border), HAS_GS=has_gs, HAS_GU=has_gu,
        BLOCK=_BLOCK, num_warps=_NUM_WARPS,
    )
    return grad_src, grad_u
