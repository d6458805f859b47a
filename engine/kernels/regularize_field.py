"""Triton kernel of regularize_field (contract: engine/ops/regularize_field.py).

One launch over the flat pixels ``(n, c, y, x)`` of all planes. A program holds
``BLOCK`` pixels and computes each output directly as the 2D Gaussian of the coupled
sum, ``sum_i sum_j k_i k_j c(clamp(y + i - R), clamp(x + j - R))``, where ``c`` (the
coupled ``u + step``, three planes) is read on the fly: ``(2R + 1)^2`` taps of six
loads, all from cache for the small fields of the registration. Nothing but the
output is written; the taps (at most 9) come from a small device tensor cached per
sigma, their count is a compile-time constant.

TRITON_INTERPRET is honoured per launch (engine/kernels/_jit.py) and only
``triton.language`` builtins are called.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._helpers import flat_pixels
from ._jit import LazyJit as _LazyJit

__all__ = ["regularize_field_forward", "MAX_TAPS"]

_BLOCK = 128
MAX_TAPS = 9  # radius 4: sigma <= 2


def _regularize_field_kernel(
    u_ptr,
    s_ptr,
    taps_ptr,
    out_ptr,
    C,
    H,
    W,
    HW,
    total,
    per,
    wc,
    wn,
    K: tl.constexpr,
    R: tl.constexpr,
    COUPLE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs, mask, plane, y, x = flat_pixels(total, HW, W, BLOCK)
    n = plane // C
    ch = plane - n * C
    j = n % per
    base = n - j
    prev = base + tl.where(j > 0, j - 1, 1)
    nxt = base + tl.where(j < per - 1, j + 1, per - 2)
    off_c = plane * HW
    off_p = (prev * C + ch) * HW
    off_n = (nxt * C + ch) * HW
    acc = (offs * 0).to(tl.float32)  # tl.zeros is a jit helper, not a builtin (engine/kernels/_jit.py)
    for i in tl.static_range(K):
        ki = tl.load(taps_ptr + i)
        yy = tl.minimum(tl.maximum(y + (i - R), 0), H - 1)
        for jx in tl.static_range(K):
            kj = tl.load(taps_ptr + jx)
            xx = tl.minimum(tl.maximum(x + (jx - R), 0), W - 1)
            p = yy * W + xx
            v = tl.load(u_ptr + off_c + p, mask=mask, other=0.0) + tl.load(s_ptr + off_c + p, mask=mask, other=0.0)
            if COUPLE:
                vp = tl.load(u_ptr + off_p + p, mask=mask, other=0.0) + tl.load(s_ptr + off_p + p, mask=mask, other=0.0)
                vn = tl.load(u_ptr + off_n + p, mask=mask, other=0.0) + tl.load(s_ptr + off_n + p, mask=mask, other=0.0)
                v = wc * v + wn * (vp + vn)
            acc += (ki * kj) * v
    tl.store(out_ptr + offs, acc, mask=mask)


_kernel = _LazyJit(_regularize_field_kernel)


def regularize_field_forward(
    u: torch.Tensor, step: torch.Tensor, taps: tuple[float, ...], coupling: float, groups: int, out: torch.Tensor
) -> None:
    """Write ``filter(couple(u + step))`` into ``out`` ``[N, C, H, W]`` float32 in ONE launch."""
    if len(taps) % 2 == 0 or len(taps) > MAX_TAPS:
        raise ValueError(f"taps: an odd count <= {MAX_TAPS}, got {len(taps)}")
    u, step = u.contiguous(), step.contiguous()
    N, C, H, W = u.shape
    per = N // groups
    couple = coupling != 0.0 and per >= 2
    total = N * C * H * W
    grid = (triton.cdiv(total, _BLOCK),)
    _kernel[grid](
        u,
        step,
        _taps_tensor(tuple(float(v) for v in taps), u.device),
        out,
        C,
        H,
        W,
        H * W,
        total,
        max(per, 1),
        1.0 - 2.0 * coupling,
        float(coupling),
        K=len(taps),
        R=len(taps) // 2,
        COUPLE=couple,
        BLOCK=_BLOCK,
    )


_TAPS: dict = {}


def _taps_tensor(taps: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """The taps as a float32 tensor on ``device``, copied there once per (taps, device)."""
    key = (taps, str(device))
    t = _TAPS.get(key)
    if t is None:
        if len(_TAPS) > 64:
            _TAPS.clear()
        t = _TAPS[key] = torch.tensor(taps, dtype=torch.float32, device=device)
    return t
