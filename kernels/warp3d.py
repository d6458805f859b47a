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
(``LazyJit`` of kernels/_jit.py, shared), and for that reason call only builtins
of ``triton.language``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton import knobs

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
    # positions in the accumulation dtype (u's: float32, float64 for float64 data)
    pz = z.to(uz.dtype) + uz
    py = y.to(uy.dtype) + uy
    px = x.to(ux.dtype) + ux
    # NaN-safe clamps (NaN -> lower bound), as clampnan in the CPU kernel
    if BORDER:
        pz = tl.where(pz > 0, tl.where(pz < Ds - 1, pz, Ds - 1), 0)
        py = tl.where(py > 0, tl.where(py < Hs - 1, py, Hs - 1), 0)
        px = tl.where(px > 0, tl.where(px < Ws - 1, px, Ws - 1), 0)
    else:
        pz = tl.where(pz > -2, tl.where(pz < Ds + 1, pz, Ds + 1), -2)
        py = tl.where(py > -2, tl.where(py < Hs + 1, py, Hs + 1), -2)
        px = tl.where(px > -2, tl.where(px < Ws + 1, px, Ws + 1), -2)
    sp = src_ptr + n * ss0  # per-voxel base of volume n (pointer arithmetic: 64-bit)
    op = out_ptr + n * os0 + z * os2 + y * os3 + x * os4
    if BILINEAR:
        z0f = tl.floor(pz)
        y0f = tl.floor(py)
        x0f = tl.floor(px)
        wz = pz - z0f
        wy = py - y0f
        wx = px - x0f
        z0 = z0f.to(tl.int64)
        y0 = y0f.to(tl.int64)
        x0 = x0f.to(tl.int64)
        vz0 = (z0 >= 0) & (z0 < Ds)
        vz1 = (z0 + 1 >= 0) & (z0 + 1 < Ds)
        vy0 = (y0 >= 0) & (y0 < Hs)
        vy1 = (y0 + 1 >= 0) & (y0 + 1 < Hs)
        vx0 = (x0 >= 0) & (x0 < Ws)
        vx1 = (x0 + 1 >= 0) & (x0 + 1 < Ws)
        # invalid corners are masked (read 0); clamped indices keep every address in range
        oz0 = tl.minimum(tl.maximum(z0, 0), Ds - 1) * ss2
        oz1 = tl.minimum(tl.maximum(z0 + 1, 0), Ds - 1) * ss2
        oy0 = tl.minimum(tl.maximum(y0, 0), Hs - 1) * ss3
        oy1 = tl.minimum(tl.maximum(y0 + 1, 0), Hs - 1) * ss3
        ox0 = tl.minimum(tl.maximum(x0, 0), Ws - 1) * ss4
        ox1 = tl.minimum(tl.maximum(x0 + 1, 0), Ws - 1) * ss4
        az = 1 - wz
        ay = 1 - wy
        ax = 1 - wx
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
                # round float32 -> bfloat16 to nearest even by hand; the truncating cast
                # below is then exact (the interpreter's own cast truncates)
                bits = val.to(tl.uint32, bitcast=True)
                bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
                val = bits.to(tl.float32, bitcast=True)
            # one rounding to the storage dtype (round to nearest even, as the CPU kernel)
            tl.store(op, val.to(out_ptr.dtype.element_ty), mask=mask)
            sp += ss1
            op += os1
    else:
        zi = tl.floor(pz + 0.5).to(tl.int64)  # ties round up
        yi = tl.floor(py + 0.5).to(tl.int64)
        xi = tl.floor(px + 0.5).to(tl.int64)
        valid = mask & (zi >= 0) & (zi < Ds) & (yi >= 0) & (yi < Hs) & (xi >= 0) & (xi < Ws)
        off = (tl.minimum(tl.maximum(zi, 0), Ds - 1) * ss2 + tl.minimum(tl.maximum(yi, 0), Hs - 1) * ss3
               + tl.minimum(tl.maximum(xi, 0), Ws - 1) * ss4)
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
        gzs = ((pz > 0) & (pz < Ds - 1)).to(pz.dtype)
        gys = ((py > 0) & (py < Hs - 1)).to(py.dtype)
        gxs = ((px > 0) & (px < Ws - 1)).to(px.dtype)
        pz = tl.where(pz > 0, tl.where(pz < Ds - 1, pz, Ds - 1), 0)
        py = tl.where(py > 0, tl.where(py < Hs - 1, py, Hs - 1), 0)
        px = tl.where(px > 0, tl.where(px < Ws - 1, px, Ws - 1), 0)
    else:
        gzs = tl.full(pz.shape, 1, pz.dtype)
        gys = tl.full(py.shape, 1, py.dtype)
        gxs = tl.full(px.shape, 1, px.dtype)
        pz = tl.where(pz > -2, tl.where(pz < Ds + 1, pz, Ds + 1), -2)
        py = tl.where(py > -2, tl.where(py < Hs + 1, py, Hs + 1), -2)
        px = tl.where(px > -2, tl.where(px < Ws + 1, px, Ws + 1), -2)
    gop = go_ptr + n * gos0 + z * gos2 + y * gos3 + x * gos4
    sp = src_ptr + n * ss0
    gsp = gs_ptr + n * gss0
    if BILINEAR:
        z0f = tl.floor(pz)
        y0f = tl.floor(py)
        x0f = tl.floor(px)
        wz = pz - z0f
        wy = py - y0f
        wx = px - x0f
        z0 = z0f.to(tl.int64)
        y0 = y0f.to(tl.int64)
        x0 = x0f.to(tl.int64)
        vz0 = (z0 >= 0) & (z0 < Ds)
        vz1 = (z0 + 1 >= 0) & (z0 + 1 < Ds)
        vy0 = (y0 >= 0) & (y0 < Hs)
        vy1 = (y0 + 1 >= 0) & (y0 + 1 < Hs)
        vx0 = (x0 >= 0) & (x0 < Ws)
        vx1 = (x0 + 1 >= 0) & (x0 + 1 < Ws)
        zc0 = tl.minimum(tl.maximum(z0, 0), Ds - 1)
        zc1 = tl.minimum(tl.maximum(z0 + 1, 0), Ds - 1)
        yc0 = tl.minimum(tl.maximum(y0, 0), Hs - 1)
        yc1 = tl.minimum(tl.maximum(y0 + 1, 0), Hs - 1)
        xc0 = tl.minimum(tl.maximum(x0, 0), Ws - 1)
        xc1 = tl.minimum(tl.maximum(x0 + 1, 0), Ws - 1)
        m000 = mask & vz0 & vy0 & vx0
        m001 = mask & vz0 & vy0 & vx1
        m010 = mask & vz0 & vy1 & vx0
        m011 = mask & vz0 & vy1 & vx1
        m100 = mask & vz1 & vy0 & vx0
        m101 = mask & vz1 & vy0 & vx1
        m110 = mask & vz1 & vy1 & vx0
        m111 = mask & vz1 & vy1 & vx1
        az = 1 - wz
        ay = 1 - wy
        ax = 1 - wx
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
            zi = tl.floor(pz + 0.5).to(tl.int64)  # ties round up
            yi = tl.floor(py + 0.5).to(tl.int64)
            xi = tl.floor(px + 0.5).to(tl.int64)
            valid = mask & (zi >= 0) & (zi < Ds) & (yi >= 0) & (yi < Hs) & (xi >= 0) & (xi < Ws)
            off = (tl.minimum(tl.maximum(zi, 0), Ds - 1) * gss2 + tl.minimum(tl.maximum(yi, 0), Hs - 1) * gss3
                   + tl.minimum(tl.maximum(xi, 0), Ws - 1) * gss4)
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
