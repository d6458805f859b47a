"""Triton kernel of propagate_chain (see engine/ops/propagate_chain.py for the contract;
the CUDA kernel csrc/propagate_chain/propagate_chain.cu follows the same plan).

ONE launch for the whole volume: the grid has ``D + 1`` programs; program ``s < D``
serves the segment that ends at annotated slice ``s`` (and writes slice ``s``
itself), program ``D`` the segment above the last annotated slice; programs of
unannotated ``s`` do nothing. Without any annotation program ``D`` zero-fills.

Triton expresses the sequential chain as a runtime loop over steps inside the
program; within a step, loops over ``BLOCK``-pixel tiles. Each step:

1. gather the new slice of the up chain (from ``from_below[z-1]``, or from the
   source mask on the first step) and of the down chain, tile by tile, bilinear with
   zeros padding (warp2d's arithmetic), store it in the output volume and accumulate
   the masses (fp32);
2. ``tl.debug_barrier()``; a chain whose mass fell below ``min_mass * source mass``
   dies;
3. re-read each tile (zeroed if the chain died) and fuse ``q`` for every slice whose
   second contributor has just been produced;
4. ``tl.debug_barrier()`` before the next step gathers the slice.

Triton has no user-managed shared memory that persists across loop iterations, so
the running mask lives in the output volume itself (fp32, L2-resident); the
barriers are CTA-wide ``bar.sync``, which makes the program's global writes visible
to all of its threads. Parallelism: one program (one SM) per segment, as the CUDA
kernel.

Masks that are not float32 are converted to float32 by the launcher first (one
extra elementwise launch; the CUDA kernel reads every dtype directly): the first
step then gathers from an fp32 slice like every later step, so one gather serves
both (a pointer select instead of a second, differently typed gather).

TRITON_INTERPRET is honoured per launch (the kernel and the shared sampling helpers
of engine/kernels/_helpers.py are jitted lazily, once per mode: engine/kernels/_jit.py);
reductions go through ``tl.reduce`` with the standard combine functions: ``tl.sum`` /
``tl.max`` are Triton's own ``@triton.jit`` functions, decorated in whatever mode was
active when triton was imported, and a compiled-mode function cannot run under the
interpreter.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._helpers import bilinear, linear_taps, pad_position
from ._jit import LazyJit as _LazyJit

__all__ = ["propagate_chain"]

_FUSE = {"none": 0, "nearest": 1, "linear": 2}


def _propagate_chain_kernel(
    masks_ptr,
    ms0,
    ms1,
    ms2,
    ann_ptr,
    ann_st,
    fwd_ptr,
    fs0,
    fs1,
    fs2,
    fs3,
    bwd_ptr,
    bs0,
    bs1,
    bs2,
    bs3,
    fb_ptr,
    fa_ptr,
    db_ptr,
    da_ptr,
    q_ptr,
    conf_ptr,
    D,
    H,
    W,
    min_mass,
    FUSE: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    hi = tl.program_id(0)  # int32: annotated slice ending the segment, or D
    ann_hi = tl.load(ann_ptr + hi.to(tl.int64) * ann_st, mask=hi < D, other=0)
    if (hi == D) | (ann_hi != 0):
        HW = H * W
        # lo: the last annotated slice below hi (-1: none)
        lo = hi * 0 - 1
        for j0 in range(0, D, BLOCK_D):
            j = j0 + tl.arange(0, BLOCK_D)
            a = tl.load(ann_ptr + j.to(tl.int64) * ann_st, mask=j < hi, other=0)
            lo = tl.maximum(lo, tl.reduce(tl.where(a != 0, j, -1), 0, tl.standard._elementwise_max))
        up = lo >= 0
        down = hi < D
        L = hi - lo - 1

        # distances and confidence of slices lo+1 .. hi (hi only when annotated)
        zend = tl.where(down, hi, D - 1)
        for z0 in range(0, D, BLOCK_D):
            z = z0 + tl.arange(0, BLOCK_D)
            zm = (z > lo) & (z <= zend)
            db = tl.where(z == hi, 0, tl.where(up, z - lo, -1))  # z == hi: annotated
            da = tl.where(down, hi - z, -1)
            d = tl.where(db < 0, da, tl.where(da < 0, db, tl.minimum(db, da)))
            c = tl.where(d < 0, 0.0, 1.0 / (1.0 + tl.maximum(d, 0).to(tl.float32)))
            tl.store(db_ptr + z, db, mask=zm)
            tl.store(da_ptr + z, da, mask=zm)
            tl.store(conf_ptr + z, c, mask=zm)

        # Masks combine tensors with scalar flags through tl.where(flag, m, False): the
        # interpreter turns `bool tensor & bool scalar` into int32, which tl.load rejects.
        if up | down:
            lo_c = tl.maximum(lo, 0).to(tl.int64)  # clamped: only used when up
            hi_c = tl.minimum(hi, D - 1).to(tl.int64)  # only used when down
            # annotated slice hi (own mask everywhere) and the source masses
            acc_u = tl.full((BLOCK,), 0.0, tl.float32)
            acc_d = tl.full((BLOCK,), 0.0, tl.float32)
            for t0 in range(0, HW, BLOCK):
                p = t0 + tl.arange(0, BLOCK)
                pm = p < HW
                y = p // W
                x = p - y * W
                off = y.to(tl.int64) * ms1 + x.to(tl.int64) * ms2
                vu = tl.load(masks_ptr + lo_c * ms0 + off, mask=tl.where(up, pm, False), other=0.0)
                vd = tl.load(masks_ptr + hi_c * ms0 + off, mask=tl.where(down, pm, False), other=0.0)
                acc_u += vu
                acc_d += vd
                md = tl.where(down, pm, False)
                tl.store(fb_ptr + hi_c * HW + p, vd, mask=md)
                tl.store(fa_ptr + hi_c * HW + p, vd, mask=md)
                if FUSE != 0:
                    tl.store(q_ptr + hi_c * HW + p, tl.minimum(tl.maximum(vd, 0.0), 1.0), mask=md)
            thr_u = min_mass * tl.reduce(acc_u, 0, tl.standard._sum_combine)  # fp32 mass
            thr_d = min_mass * tl.reduce(acc_d, 0, tl.standard._sum_combine)

            alive_u = up
            alive_d = down
            for i in range(1, L + 1):
                zu = (lo + i).to(tl.int64)
                zd = (hi - i).to(tl.int64)
                first = i == 1
                # previous slice of each chain: the source mask on the first step
                src_u = tl.where(first, masks_ptr + lo_c * ms0, fb_ptr + (zu - 1) * HW)
                su_y = tl.where(first, ms1, W).to(tl.int64)
                su_x = tl.where(first, ms2, 1).to(tl.int64)
                src_d = tl.where(first, masks_ptr + hi_c * ms0, fa_ptr + (zd + 1) * HW)
                sd_y = su_y
                sd_x = su_x
                # pass 1: gather, store, accumulate the masses
                acc_u = tl.full((BLOCK,), 0.0, tl.float32)
                acc_d = tl.full((BLOCK,), 0.0, tl.float32)
                for t0 in range(0, HW, BLOCK):
                    p = t0 + tl.arange(0, BLOCK)
                    pm = p < HW
                    y = p // W
                    x = p - y * W
                    yf = y.to(tl.float32)
                    xf = x.to(tl.float32)
                    for c in tl.static_range(2):  # 0: up chain (fwd), 1: down chain (bwd)
                        if c == 0:
                            m = tl.where(alive_u, pm, False)
                            fo = (zu - 1) * fs0 + y.to(tl.int64) * fs2 + x.to(tl.int64) * fs3
                            uy = tl.load(fwd_ptr + fo, mask=m, other=0.0)
                            ux = tl.load(fwd_ptr + fo + fs1, mask=m, other=0.0)
                            src = src_u
                            sy = su_y
                            sx = su_x
                        else:
                            m = tl.where(alive_d, pm, False)
                            fo = zd * bs0 + y.to(tl.int64) * bs2 + x.to(tl.int64) * bs3
                            uy = tl.load(bwd_ptr + fo, mask=m, other=0.0)
                            ux = tl.load(bwd_ptr + fo + bs1, mask=m, other=0.0)
                            src = src_d
                            sy = sd_y
                            sx = sd_x
                        # bilinear, zeros padding (warp2d's arithmetic: the shared helpers)
                        py = pad_position(yf + uy, H, False)
                        px = pad_position(xf + ux, W, False)
                        yc0, yc1, ay, wy, vy0, vy1 = linear_taps(py, H)
                        xc0, xc1, ax, wx, vx0, vx1 = linear_taps(px, W)
                        v = bilinear(
                            src,
                            yc0 * sy,
                            yc1 * sy,
                            xc0 * sx,
                            xc1 * sx,
                            ay,
                            wy,
                            ax,
                            wx,
                            m & vy0 & vx0,
                            m & vy0 & vx1,
                            m & vy1 & vx0,
                            m & vy1 & vx1,
                        )
                        if c == 0:
                            tl.store(fb_ptr + zu * HW + p, v, mask=m)
                            acc_u += tl.where(m, v, 0.0)
                        else:
                            tl.store(fa_ptr + zd * HW + p, v, mask=m)
                            acc_d += tl.where(m, v, 0.0)
                tl.debug_barrier()
                keep_u = alive_u & (tl.reduce(acc_u, 0, tl.standard._sum_combine) >= thr_u)
                keep_d = alive_d & (tl.reduce(acc_d, 0, tl.standard._sum_combine) >= thr_d)
                # pass 2: finalise (zero a chain that ended), fuse
                for t0 in range(0, HW, BLOCK):
                    p = t0 + tl.arange(0, BLOCK)
                    pm = p < HW
                    vu = tl.load(fb_ptr + zu * HW + p, mask=tl.where(keep_u, pm, False), other=0.0)
                    vd = tl.load(fa_ptr + zd * HW + p, mask=tl.where(keep_d, pm, False), other=0.0)
                    tl.store(fb_ptr + zu * HW + p, vu, mask=tl.where(up, pm, False))
                    tl.store(fa_ptr + zd * HW + p, vd, mask=tl.where(down, pm, False))
                    # below the first annotated slice only the down chain, above the last
                    # only the up chain: the missing contributor is zero
                    zero = tl.full((BLOCK,), 0.0, tl.float32)
                    tl.store(fb_ptr + zd * HW + p, zero, mask=tl.where(lo < 0, pm, False))
                    tl.store(fa_ptr + zu * HW + p, zero, mask=tl.where(hi >= D, pm, False))
                    if FUSE != 0:
                        tl.store(
                            q_ptr + zd * HW + p, tl.minimum(tl.maximum(vd, 0.0), 1.0), mask=tl.where(lo < 0, pm, False)
                        )
                        tl.store(
                            q_ptr + zu * HW + p, tl.minimum(tl.maximum(vu, 0.0), 1.0), mask=tl.where(hi >= D, pm, False)
                        )
                        both = up & down
                        for c in tl.static_range(2):
                            if c == 0:
                                # slice zu got its down contributor at step hi - zu (<= i)
                                zz = zu
                                fz = both & (hi - zu <= i)
                                mine = vu
                                other = tl.load(
                                    fa_ptr + zu * HW + p, mask=tl.where(fz & (zu != zd), pm, False), other=0.0
                                )
                                other = tl.where(zu == zd, vd, other)
                                fbv = mine
                                fav = other
                            else:
                                # slice zd got its up contributor strictly earlier, at step zd - lo
                                zz = zd
                                fz = both & (zd - lo < i)
                                fbv = tl.load(fb_ptr + zd * HW + p, mask=tl.where(fz, pm, False), other=0.0)
                                fav = vd
                            dbz = (zz - lo).to(tl.int32)
                            daz = (hi - zz).to(tl.int32)
                            if FUSE == 1:  # nearest; ties: the average
                                qv = tl.where(dbz < daz, fbv, tl.where(daz < dbz, fav, 0.5 * (fbv + fav)))
                            else:  # linear: (b-z)/(b-a) from below, (z-a)/(b-a) from above
                                spanf = tl.maximum(dbz + daz, 1).to(tl.float32)
                                qv = (daz.to(tl.float32) / spanf) * fbv + (dbz.to(tl.float32) / spanf) * fav
                            tl.store(
                                q_ptr + zz * HW + p, tl.minimum(tl.maximum(qv, 0.0), 1.0), mask=tl.where(fz, pm, False)
                            )
                alive_u = keep_u
                alive_d = keep_d
                tl.debug_barrier()
        else:
            # no annotation at all: no contributor anywhere
            n = ((hi * 0).to(tl.int64) + D) * HW  # int64 (D may be a specialised constexpr)
            zero = tl.full((BLOCK,), 0.0, tl.float32)
            for e0 in range(0, n, BLOCK):
                e = e0 + tl.arange(0, BLOCK).to(tl.int64)
                em = e < n
                tl.store(fb_ptr + e, zero, mask=em)
                tl.store(fa_ptr + e, zero, mask=em)
                if FUSE != 0:
                    tl.store(q_ptr + e, zero, mask=em)


_kernel = _LazyJit(_propagate_chain_kernel)


def propagate_chain(
    masks: torch.Tensor,
    annotated: torch.Tensor,
    fwd: torch.Tensor,
    bwd: torch.Tensor,
    from_below: torch.Tensor,
    from_above: torch.Tensor,
    dist_below: torch.Tensor,
    dist_above: torch.Tensor,
    q: torch.Tensor,
    conf: torch.Tensor,
    *,
    min_mass: float,
    fuse: str,
) -> None:
    """Launch the kernel (one launch; plus a float32 conversion for non-float32
    masks). Outputs are contiguous and written entirely; ``q`` is ignored for
    ``fuse="none"``. ``annotated`` is a [D] bool/uint8 vector."""
    D, H, W = masks.shape
    if D * H * W == 0:
        return
    if masks.dtype != torch.float32:
        masks = masks.to(torch.float32)  # exact for every accepted dtype within [0, 1]
    ann = annotated.view(torch.uint8) if annotated.dtype == torch.bool else annotated
    code = _FUSE[fuse]
    qq = q if code != 0 else from_below  # never written when fuse == "none"
    fwd_s = fwd.stride() if fwd.numel() else (0, 0, 0, 0)
    bwd_s = bwd.stride() if bwd.numel() else (0, 0, 0, 0)
    fptr = fwd if fwd.numel() else from_below  # D == 1: never read
    bptr = bwd if bwd.numel() else from_below
    BLOCK = 1024 if H * W >= 1024 else max(16, triton.next_power_of_2(H * W))
    BLOCK_D = max(16, min(1024, triton.next_power_of_2(D)))
    _kernel[(D + 1,)](
        masks,
        *masks.stride(),
        ann,
        ann.stride(0),
        fptr,
        *fwd_s,
        bptr,
        *bwd_s,
        from_below,
        from_above,
        dist_below,
        dist_above,
        qq,
        conf,
        D,
        H,
        W,
        float(min_mass),
        FUSE=code,
        BLOCK=BLOCK,
        BLOCK_D=BLOCK_D,
        num_warps=8,
    )
