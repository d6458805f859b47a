"""The proxy mask without torch: NumPy and the compiled CPU kernels only.

``dilseg propagate`` is a command a script calls once per volume; importing torch alone
takes about 1.7 s of CPU here, more than registering and propagating a small volume.
This module runs the default native registration (:mod:`engine.propagate.native`:
symmetric demons on every adjacent pair, both directions in one batch, the pyramid and
the ~1.25 mm grid of :class:`~engine.propagate.native.NativeParams`) and the one-call
propagation through the same C++ kernels (``engine._C``: ``demons_step``,
``regularize_field``, ``propagate_chain``) on NumPy buffers, so the command starts in a
fraction of that. :func:`available` says when it applies (the compiled CPU module is
built and the parameters are the ones this path implements); otherwise the command uses
:class:`~engine.propagate.ProxyBuilder`. ``tests/propagate/test_lite.py`` pins it to
:class:`~engine.propagate.ProxyBuilder` on phantoms and real LA cases.
"""

from __future__ import annotations

import math
import os
from typing import Any, Optional, Sequence

import numpy as np

__all__ = ["available", "proxy"]

_F32 = np.float32


def _module() -> Any:
    """``engine._C`` when it is built and allowed, else None (no torch import)."""
    if os.environ.get("ENGINE_NO_EXTENSION", "").strip().lower() in {"1", "true", "yes", "on"}:
        return None
    if os.environ.get("ENGINE_CPU_BACKEND", "auto").strip().lower() == "reference":
        return None
    try:
        from .. import _C
    except ImportError:
        return None
    return _C


def available(params: Any = None) -> bool:
    """Whether this path can serve: the CPU module is there and ``params`` (None: the
    defaults) asks for nothing it leaves out (symmetric force, both directions, no
    update or image smoothing, fixed iterations)."""
    if _module() is None:
        return False
    if params is None:
        return True
    return (
        params.force == "symmetric"
        and params.direction == "both"
        and params.sigma_update_mm == 0
        and params.sigma_image_mm == 0
        and params.stop_mm == 0
    )


def _threads(work: int) -> int:
    n = os.cpu_count() or 1
    return max(1, min(n, work // (1 << 15)))


# --- the pieces of native.register_stack, on float32 NumPy arrays ------------------------------


def _window(vol: np.ndarray, extent: Optional[tuple[int, int]]) -> np.ndarray:
    """:func:`engine.propagate.window_to_unit`: 1st-99th percentile window to [0, 1]."""
    ref = vol if extent is None else vol[extent[0] : extent[1] + 1]
    flat = ref.reshape(-1)
    n = flat.size
    if n == 0:
        return np.zeros_like(vol)
    k_lo = min(n, max(1, int(round(1.0 / 100.0 * (n - 1))) + 1))
    k_hi = min(n, max(1, int(round(99.0 / 100.0 * (n - 1))) + 1))
    part = np.partition(flat, (k_lo - 1, k_hi - 1))
    lo, hi = float(part[k_lo - 1]), float(part[k_hi - 1])
    if hi - lo <= 0:
        return np.zeros_like(vol)
    return np.clip((vol - _F32(lo)) / _F32(hi - lo), 0.0, 1.0).astype(_F32)


def _pool2(x: np.ndarray) -> np.ndarray:
    """``avg_pool2d(x, 2, ceil_mode=True)`` of ``[N, H, W]``: the last row / column of
    an odd size averages what it has."""
    N, H, W = x.shape
    h, w = (H + 1) // 2, (W + 1) // 2
    out = np.zeros((N, h, w), _F32)
    cnt = np.zeros((h, w), _F32)
    for dy in (0, 1):
        for dx in (0, 1):
            part = x[:, dy::2, dx::2]
            out[:, : part.shape[1], : part.shape[2]] += part
            cnt[: part.shape[1], : part.shape[2]] += 1
    return (out / cnt).astype(_F32)


def _average(x: np.ndarray, f: tuple[int, int]) -> np.ndarray:
    """``[N, H, W]`` averaged over ``f`` blocks, replicate-padded to a multiple (the sum
    in torch's avg_pool2d order, row by row, then one division)."""
    N, H, W = x.shape
    ph, pw = (-H) % f[0], (-W) % f[1]
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, ph), (0, pw)), mode="edge")
    out = np.zeros((N, x.shape[1] // f[0], x.shape[2] // f[1]), _F32)
    for dy in range(f[0]):
        for dx in range(f[1]):
            out += x[:, dy :: f[0], dx :: f[1]]
    return (out / _F32(f[0] * f[1])).astype(_F32)


def _weights(m: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Indices and weights of a linear resize from ``m`` to ``n`` samples,
    align_corners=False (:func:`engine.propagate.native._linear_weights`)."""
    src = np.maximum((np.arange(n, dtype=_F32) + _F32(0.5)) * _F32(m / n) - _F32(0.5), _F32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), m - 1)
    i1 = np.minimum(i0 + 1, m - 1)
    lam = (src - i0).astype(_F32)
    return i0, i1, (_F32(1.0) - lam).astype(_F32), lam


def _lerp(a: np.ndarray, b: np.ndarray, w0: np.ndarray, w1: np.ndarray) -> np.ndarray:
    """``a w0 + b w1``: two rounded float32 products and a rounded sum, as
    :func:`engine.propagate.native._resize_fields` computes it in torch."""
    return (a * w0 + b * w1).astype(_F32, copy=False)


def _upsample(u: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Fields ``[N, 2, h, w]`` resized bilinearly to ``size`` (the arithmetic of
    :func:`engine.propagate.native._resize_fields`), displacements scaled."""
    h, w = u.shape[-2:]
    iy0, iy1, wy0, wy1 = _weights(h, size[0])
    ix0, ix1, wx0, wx1 = _weights(w, size[1])
    rows = _lerp(u[..., ix0], u[..., ix1], wx0, wx1)  # (N, 2, h, W)
    up = _lerp(rows[..., iy0, :], rows[..., iy1, :], wy0[:, None], wy1[:, None])
    up[:, 0] *= _F32(size[0] / h)
    up[:, 1] *= _F32(size[1] / w)
    return np.ascontiguousarray(up)


def _gradient(x: np.ndarray) -> np.ndarray:
    """:func:`engine.propagate.native.image_gradient` of ``[N, H, W]``: ``[N, 2, H, W]``."""
    N, H, W = x.shape
    g = np.zeros((N, 2, H, W), _F32)
    if H > 1:
        g[:, 0, 1:-1] = (x[:, 2:] - x[:, :-2]) * _F32(0.5)
        g[:, 0, 0] = x[:, 1] - x[:, 0]
        g[:, 0, -1] = x[:, -1] - x[:, -2]
    if W > 1:
        g[:, 1, :, 1:-1] = (x[:, :, 2:] - x[:, :, :-2]) * _F32(0.5)
        g[:, 1, :, 0] = x[:, :, 1] - x[:, :, 0]
        g[:, 1, :, -1] = x[:, :, -1] - x[:, :, -2]
    return g


def _taps(sigma: float, H: int, W: int) -> list[float]:
    if sigma <= 0:
        return [1.0]
    r = max(1, int(math.ceil(2.0 * sigma)))
    if H <= r or W <= r:
        return [1.0]
    w = [math.exp(-(i * i) / (2.0 * sigma * sigma)) for i in range(-r, r + 1)]
    s = sum(w)
    return [v / s for v in w]


def _level(
    C: Any, fixed: np.ndarray, moving: np.ndarray, u: np.ndarray, iterations: int, px: Any, groups: int
) -> np.ndarray:
    N, H, W = fixed.shape
    inv_k = 1.0 / (4.0 * px.max_step * px.max_step)
    f = np.ascontiguousarray(fixed)
    m = np.ascontiguousarray(moving)
    g = _gradient(f)
    step = np.empty_like(u)
    spare = np.empty_like(u)
    taps = _taps(px.sigma_field, H, W)
    nt = _threads(u.size)
    for _ in range(iterations):
        C.demons_step(
            f.ctypes.data, m.ctypes.data, u.ctypes.data, g.ctypes.data, step.ctypes.data, N, H, W, float(inv_k), nt
        )
        C.regularize_field(
            u.ctypes.data,
            step.ctypes.data,
            spare.ctypes.data,
            N,
            2,
            H,
            W,
            taps,
            float(px.pair_coupling),
            int(groups),
            nt,
        )
        u, spare = spare, u
    return u


def _register(C: Any, vol: np.ndarray, params: Any, spacing: Optional[Sequence[float]]) -> tuple:
    """:func:`engine.propagate.native.register_stack` (direction "both") on NumPy."""
    from .params import grid_factors

    D, H, W = vol.shape
    f = grid_factors(None if spacing is None else tuple(spacing), params)
    grid_mm = params.pixel_mm if spacing is None else 0.5 * (float(spacing[0]) * f[0] + float(spacing[1]) * f[1])
    px = params.in_pixels(grid_mm)
    grid = _average(vol, f) if f != (1, 1) else vol
    fixed = np.concatenate([grid[1:], grid[:-1]])
    moving = np.concatenate([grid[:-1], grid[1:]])
    levels = len(px.iterations)
    pf, pm = [fixed], [moving]
    for _ in range(levels - 1):
        if min(pf[-1].shape[-2:]) < 8:
            break
        pf.append(_pool2(pf[-1]))
        pm.append(_pool2(pm[-1]))
    its = px.iterations[levels - len(pf) :]
    u = None
    for lvl in range(len(pf) - 1, -1, -1):
        fl, ml = pf[lvl], pm[lvl]
        if u is None:
            u = np.zeros((fl.shape[0], 2) + fl.shape[-2:], _F32)
        else:
            u = _upsample(u, fl.shape[-2:])
        u = _level(C, fl, ml, u, its[len(pf) - 1 - lvl], px, 2)
    if f != (1, 1):
        up = _upsample(u, (u.shape[-2] * f[0], u.shape[-1] * f[1]))
        u = np.ascontiguousarray(up[..., :H, :W])
    return np.ascontiguousarray(u[: D - 1]), np.ascontiguousarray(u[D - 1 :])


def proxy(
    image: np.ndarray,
    masks: dict[int, np.ndarray],
    *,
    extent: Optional[tuple[int, int]] = None,
    spacing: Optional[Sequence[float]] = None,
    fusion: str = "linear",
    min_mass: float = 0.02,
    params: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(Q, C)`` float32 ``[D, H, W]`` (annotation axis first) of the drawn ``masks``
    ``{slice: [H, W] binary}`` on ``image`` (finite float32, checked by the caller),
    as :func:`engine.propagate.assemble_proxy` gives them after
    :func:`~engine.propagate.register_volume` with the registration margin."""
    from .params import REGISTER_MARGIN, NativeParams

    C = _module()
    p = params or NativeParams()
    D, H, W = image.shape
    lo, hi = extent if extent is not None else (0, D - 1)
    inside = sorted(int(z) for z in masks if lo <= z <= hi)
    q = np.zeros((D, H, W), _F32)
    c = np.zeros((D, H, W), _F32)
    if inside:
        z0, z1 = (0, D) if extent is None else (max(0, lo - REGISTER_MARGIN), min(D, hi + 1 + REGISTER_MARGIN))
        sub = np.ascontiguousarray(image[z0:z1], dtype=_F32)
        norm = _window(sub, None if extent is None else (lo - z0, hi - z0))
        sp = None if spacing is None else tuple(spacing[1:])
        fwd, bwd = _register(C, norm, p, sp)
        fwd, bwd = np.ascontiguousarray(fwd[lo - z0 : hi - z0]), np.ascontiguousarray(bwd[lo - z0 : hi - z0])
        n = hi - lo + 1
        vol = np.zeros((n, H, W), _F32)
        ann = np.zeros(n, np.uint8)
        for z in inside:
            vol[z - lo] = masks[z]
            ann[z - lo] = 1
        fb, fa = np.empty((n, H, W), _F32), np.empty((n, H, W), _F32)
        db, da = np.empty(n, np.int32), np.empty(n, np.int32)
        qq, conf = np.empty((n, H, W), _F32), np.empty(n, _F32)
        fuse = {"linear": C.Fuse.Linear, "nearest": C.Fuse.Nearest}[fusion]
        st3 = [s // 4 for s in vol.strides]
        st4 = [s // 4 for s in fwd.strides]
        C.propagate_chain(
            vol.ctypes.data,
            st3,
            C.DType.Float32,
            ann.ctypes.data,
            1,
            fwd.ctypes.data,
            st4,
            bwd.ctypes.data,
            st4,
            fb.ctypes.data,
            fa.ctypes.data,
            db.ctypes.data,
            da.ctypes.data,
            qq.ctypes.data,
            conf.ctypes.data,
            [n, H, W],
            float(min_mass),
            fuse,
            _threads(vol.size),
        )
        q[lo : hi + 1] = qq
        c[lo : hi + 1] = conf.reshape(n, 1, 1)
    if extent is not None:
        q[:lo], q[hi + 1 :] = 0.0, 0.0
        c[:lo], c[hi + 1 :] = 1.0, 1.0
    return q, c
