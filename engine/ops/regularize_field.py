"""regularize_field: the regularisation half of one demons iteration, fused.

After :func:`engine.ops.demons_step` the native registration (engine/propagate/native.py)
adds the step to the field, smooths the sum with a Gaussian (the elastic
regulariser) and pulls the field of every slice pair towards those of its two
neighbouring pairs (the coupling along the slice axis)::

    a   = u + step                                             [N, C, H, W]
    c   = couple(a):  c[n] = (1 - 2w) a[n] + w (a[n-1] + a[n+1])   within each of
          ``groups`` contiguous runs of the batch, mirrored at a run's ends
          (a[-1] -> a[1], a[n] -> a[n-2]); runs of one entry are left alone; w = 0: c = a
    out = G_sigma * c                                          separable Gaussian, taps
          exp(-i^2 / 2 sigma^2) / sum for |i| <= ceil(2 sigma) (at least 1), replicate
          border; skipped when sigma <= 0 or H or W is not larger than the radius

Coupling (along ``n``) and smoothing (along ``y``, ``x``) are linear maps on different
axes, so they commute; the registration applied them as smooth-then-couple, the
kernels couple first (one pass over three planes into a scratch plane) and then
smooth: equal up to float rounding, pinned by tests/ops/test_regularize_field.py.

Shapes: ``u``, ``step`` ``[N, C, H, W]`` float32 (C is 2 for displacement fields, any
C works); the result has their shape.

Backends: ``reference`` (pure torch: index gathers, the formula above as written;
about 25 small tensor ops per call in the registration's old composition), ``cpu``
(C++/OpenMP, csrc/regularize_field/regularize_field_cpu.cpp: one task per plane,
couple -> vertical -> horizontal through two per-thread scratch planes, nothing
allocated), ``triton`` (engine/kernels/regularize_field.py: one launch, each program
computes the 2D Gaussian of its pixels directly from the coupled sum, nothing but
the output written). No hand-written CUDA kernel: as for demons_step, the Triton
kernel serves CUDA tensors and a small stencil gains nothing from one. Not
differentiable (the registration never differentiates through its update).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Optional

import torch
from torch import Tensor

from . import _common as C
from ._declare import Kernel, Launch, declare, native, triton_module

__all__ = ["regularize_field", "regularize_field_reference", "gaussian_taps", "IMPLS"]


@lru_cache(maxsize=32)
def gaussian_taps(sigma: float) -> tuple[float, ...]:
    """Normalised 1D Gaussian taps of radius ``max(1, ceil(2 sigma))`` (``sigma > 0``)."""
    r = max(1, int(math.ceil(2.0 * sigma)))
    w = [math.exp(-(i * i) / (2.0 * sigma * sigma)) for i in range(-r, r + 1)]
    s = sum(w)
    return tuple(v / s for v in w)


def _smooths(sigma: float, H: int, W: int) -> bool:
    if sigma <= 0:
        return False
    r = len(gaussian_taps(sigma)) // 2
    return H > r and W > r


# --- reference ----------------------------------------------------------------------


def _couple_reference(a: Tensor, w: float, groups: int) -> Tensor:
    N = a.shape[0]
    n = N // groups
    if w == 0 or n < 2:
        return a
    g = a.reshape(groups, n, *a.shape[1:])
    j = torch.arange(n, device=a.device)
    prev = torch.where(j > 0, j - 1, torch.ones_like(j))
    nxt = torch.where(j < n - 1, j + 1, torch.full_like(j, n - 2))
    return ((1 - 2 * w) * g + w * (g[:, prev] + g[:, nxt])).reshape(a.shape)


def _smooth_axis_reference(x: Tensor, taps: tuple[float, ...], dim: int) -> Tensor:
    r = len(taps) // 2
    size = x.shape[dim]
    out = torch.zeros_like(x)
    for i, t in enumerate(taps):
        idx = (torch.arange(size, device=x.device) + (i - r)).clamp(0, size - 1)
        out = out + t * x.index_select(dim, idx)
    return out


def regularize_field_reference(u: Tensor, step: Tensor, sigma: float, coupling: float, groups: int) -> Tensor:
    """Pure-torch regularisation (the oracle): sum, couple, separable Gaussian."""
    c = _couple_reference(u + step, coupling, groups)
    H, W = u.shape[-2:]
    if not _smooths(sigma, H, W):
        return c
    taps = gaussian_taps(float(sigma))
    return _smooth_axis_reference(_smooth_axis_reference(c, taps, -2), taps, -1)


# --- kernels ----------------------------------------------------------------------------------


def _taps_for(sigma: float, H: int, W: int) -> tuple[float, ...]:
    """The kernels' taps: the Gaussian's, or the single tap (1,) where no smoothing applies."""
    return gaussian_taps(float(sigma)) if _smooths(sigma, H, W) else (1.0,)


def _native(on: Launch, u, step, sigma, coupling, groups, out=None):
    u, step = u.contiguous(), step.contiguous()
    N, Cc, H, W = u.shape
    out = torch.empty_like(u) if out is None else out
    if out.numel():
        on.mod.regularize_field(
            u.data_ptr(),
            step.data_ptr(),
            out.data_ptr(),
            N,
            Cc,
            H,
            W,
            list(_taps_for(sigma, H, W)),
            float(coupling),
            int(groups),
            on.last(u),
        )
    return out


def _triton(u, step, sigma, coupling, groups, out=None):
    N, Cc, H, W = u.shape
    out = torch.empty_like(u.contiguous()) if out is None else out
    if out.numel():
        triton_module().regularize_field_forward(u, step, _taps_for(sigma, H, W), float(coupling), int(groups), out)
    return out


def _reference(u, step, sigma, coupling, groups, out=None):
    r = regularize_field_reference(u, step, sigma, coupling, groups)
    return r if out is None else out.copy_(r)


# --- the declaration (not differentiable); dilseg::regularize_field_out writes into out ----------

regularize_field_op = declare(
    "regularize_field",
    "(Tensor u, Tensor step, float sigma, float coupling, int groups) -> Tensor",
    reference=_reference,
    kernels={**native(_native, backends=("cpu",)), "triton": Kernel(_triton)},
    fake=lambda u, step, sigma, coupling, groups: torch.empty_like(u, memory_format=torch.contiguous_format),
    out=True,
)

IMPLS = regularize_field_op.impls


# --- public entry ------------------------------------------------------------------------------


def regularize_field(
    u: Tensor,
    step: Tensor,
    sigma: float,
    coupling: float = 0.0,
    groups: int = 1,
    *,
    out: Optional[Tensor] = None,
    check_finite: bool = False,
) -> Tensor:
    """``G_sigma * couple(u + step)`` ``[N, C, H, W]`` (module docstring).

    ``coupling`` in [0, 0.5]; ``groups`` divides N. ``out``: a contiguous float32
    tensor of ``u``'s shape on its device, sharing no memory with ``u`` or ``step``, to
    write into (an iteration loop reuses two buffers: a fresh multi-megabyte output
    costs more in first-touch page faults on the CPU than the kernel's own work).
    The entry checks types, shapes, dtypes, devices, the numbers and ``out``, all
    metadata: no value is read, no device sync. ``check_finite=True`` also scans ``u``
    and ``step`` for NaN/Inf (reads every value: a sync on CUDA); data is checked once
    where it enters the engine, the registration loop leaves it off. Raises
    ``engine.errors.ShapeError`` / ``DTypeError`` / ``InputError``, and
    ``NonFiniteError`` when ``check_finite=True``.
    """
    for name, t in (("u", u), ("step", step)):
        C.check_tensor(name, t, 4, (torch.float32,))
    if step.device != u.device:
        C.check_same_device(u=u, step=step)
    if tuple(step.shape) != tuple(u.shape):
        raise C.ShapeError(f"step {tuple(step.shape)} does not match u {tuple(u.shape)}")
    for name, v, lo, hi in (("sigma", sigma, 0.0, 64.0), ("coupling", coupling, 0.0, 0.5)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not lo <= float(v) <= hi:
            raise C.InputError(f"{name} must be a number in [{lo}, {hi}], got {v!r}")
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1 or u.shape[0] % groups:
        raise C.InputError(f"groups must be an int >= 1 that divides N={u.shape[0]}, got {groups!r}")
    if out is not None:
        C.check_out("out", out, u, u=u, step=step)
    if check_finite:
        C.check_finite("u", u)
        C.check_finite("step", step)
    if out is not None:
        regularize_field_op.call_out(u, step, float(sigma), float(coupling), int(groups), out)
        return out
    return regularize_field_op(u, step, float(sigma), float(coupling), int(groups))
