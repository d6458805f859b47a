"""Triton kernel of demons_step (contract: engine/ops/demons_step.py).

One launch over the flat pixels ``(n, y, x)`` of all pairs. A program holds a tile
``[BLOCK, 8]``: its pixels times the five points of the gradient stencil (centre,
row above / below, column left / right, clamped at the border; three padding
columns masked off). It warps all of them at once (bilinear, border padding, each
point with the displacement of its own pixel, as ``warp2d`` then ``image_gradient``
would), extracts the five values per pixel by masked row sums (``tl.reduce`` with the
standard combine function, see engine/kernels/_jit.py), and writes only the
step. No warped image is materialised.

TRITON_INTERPRET is honoured per launch (engine/kernels/_jit.py); the warp is the
shared sampling helpers of engine/kernels/_helpers.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._helpers import bilinear, flat_pixels, linear_taps, pad_position
from ._jit import LazyJit as _LazyJit

__all__ = ["demons_step_forward"]

_BLOCK = 128


def _demons_step_kernel(fixed_ptr, moving_ptr, u_ptr, gf_ptr, out_ptr, H, W, HW, total, inv_k, BLOCK: tl.constexpr):
    _, mask, n, y, x = flat_pixels(total, HW, W, BLOCK)
    ym = tl.maximum(y - 1, 0)
    yp = tl.minimum(y + 1, H - 1)
    xm = tl.maximum(x - 1, 0)
    xp = tl.minimum(x + 1, W - 1)

    k = tl.arange(0, 8)[None, :]  # stencil column: 0 centre, 1 y-1, 2 y+1, 3 x-1, 4 x+1
    sy = tl.where(k == 1, ym[:, None], tl.where(k == 2, yp[:, None], y[:, None]))
    sx = tl.where(k == 3, xm[:, None], tl.where(k == 4, xp[:, None], x[:, None]))
    m2 = mask[:, None] & (k < 5)
    ub = u_ptr + n[:, None] * 2 * HW + sy * W + sx
    uy = tl.load(ub, mask=m2, other=0.0)
    ux = tl.load(ub + HW, mask=m2, other=0.0)
    # border padding (NaN -> 0), bilinear: the shared sampling helpers
    py = pad_position(sy.to(tl.float32) + uy, H, True)
    px = pad_position(sx.to(tl.float32) + ux, W, True)
    yc0, yc1, ay, wy, vy0, vy1 = linear_taps(py, H)
    xc0, xc1, ax, wx, vx0, vx1 = linear_taps(px, W)
    mw = bilinear(
        moving_ptr + n[:, None] * HW,
        yc0 * W,
        yc1 * W,
        xc0,
        xc1,
        ay,
        wy,
        ax,
        wx,
        m2 & vy0 & vx0,
        m2 & vy0 & vx1,
        m2 & vy1 & vx0,
        m2 & vy1 & vx1,
    )

    mc = tl.reduce(tl.where(k == 0, mw, 0.0), 1, tl.standard._sum_combine)
    m_ym = tl.reduce(tl.where(k == 1, mw, 0.0), 1, tl.standard._sum_combine)
    m_yp = tl.reduce(tl.where(k == 2, mw, 0.0), 1, tl.standard._sum_combine)
    m_xm = tl.reduce(tl.where(k == 3, mw, 0.0), 1, tl.standard._sum_combine)
    m_xp = tl.reduce(tl.where(k == 4, mw, 0.0), 1, tl.standard._sum_combine)
    ry = tl.where(yp - ym == 2, 0.5, 1.0)  # central inside, one-sided at the border
    rx = tl.where(xp - xm == 2, 0.5, 1.0)
    base = n * 2 * HW + y * W + x
    gfy = tl.load(gf_ptr + base, mask=mask, other=0.0)
    gfx = tl.load(gf_ptr + base + HW, mask=mask, other=0.0)
    gy = ((m_yp - m_ym) * ry + gfy) * 0.5
    gx = ((m_xp - m_xm) * rx + gfx) * 0.5
    diff = tl.load(fixed_ptr + n * HW + y * W + x, mask=mask, other=0.0) - mc
    den = tl.maximum(gy * gy + gx * gx + inv_k * (diff * diff), 1e-12)
    scale = diff / den
    tl.store(out_ptr + base, gy * scale, mask=mask)
    tl.store(out_ptr + base + HW, gx * scale, mask=mask)


_kernel = _LazyJit(_demons_step_kernel)


def demons_step_forward(
    fixed: torch.Tensor, moving: torch.Tensor, u: torch.Tensor, g_fixed: torch.Tensor, inv_k: float, out: torch.Tensor
) -> None:
    """Write the demons step into ``out`` ``[N, 2, H, W]`` float32 in ONE launch."""
    fixed, moving, u, g_fixed = (t.contiguous() for t in (fixed, moving, u, g_fixed))
    N, _, H, W = fixed.shape
    total = N * H * W
    grid = (triton.cdiv(total, _BLOCK),)
    _kernel[grid](fixed, moving, u, g_fixed, out, H, W, H * W, total, float(inv_k), BLOCK=_BLOCK)
