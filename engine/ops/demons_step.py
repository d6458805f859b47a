"""demons_step: one fused iteration of symmetric (ESM) demons on a batch of 2D pairs.

The inner loop of the native registration (engine/propagate/native.py), for every
pair ``n`` at once::

    mw   = warp2d(moving, u, "bilinear", "border")          # moving pulled back by u
    g    = (grad(mw) + g_fixed) / 2                          # symmetric force direction
    diff = fixed - mw
    step = g * diff / max(|g|^2 + inv_k * diff^2, 1e-12)     # |step| <= 1 / (2 sqrt(inv_k))

``grad`` is the central difference, one-sided on the first and last row/column and 0
along an axis of size 1 (:func:`engine.propagate.native.image_gradient`). With
``inv_k = 1 / (4 max_step^2)`` the denominator is at least ``|g| |diff| / max_step``,
which bounds each step to ``max_step`` pixels.

Shapes: ``fixed``, ``moving`` ``[N, 1, H, W]``; ``u``, ``g_fixed`` ``[N, 2, H, W]``
(channel 0 rows, 1 columns); the result ``[N, 2, H, W]``; all float32.

Backends (pinned to the reference by tests/ops/test_demons_step.py):
``reference`` (pure torch: warp2d_reference, the gradient stencil, elementwise
math — ten-odd full-size temporaries per iteration), ``cpu`` (C++/OpenMP,
csrc/demons_step/demons_step_cpu.cpp: one pass per pair through a scratch plane),
``triton`` (engine/kernels/demons_step.py: one launch, each program recomputes the five
warped samples of its stencil, nothing but the step is written). There is no
hand-written CUDA kernel: the Triton kernel serves CUDA tensors, and a pointwise
stencil gains nothing from one. Not differentiable (registration never
differentiates through its own update).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _common as C
from ._declare import Kernel, Launch, declare, native, triton_module
from .warp2d import warp2d_reference

__all__ = ["demons_step", "demons_step_reference", "IMPLS"]


# --- reference -------------------------------------------------------------------


def _gradient(x: Tensor) -> Tensor:
    """Central differences of ``[N, 1, H, W]`` (one-sided at the border, 0 along a
    size-1 axis): ``[N, 2, H, W]``."""
    N, _, H, W = x.shape
    g = x.new_zeros((N, 2, H, W))
    if H > 1:
        g[:, 0, 1:-1] = (x[:, 0, 2:] - x[:, 0, :-2]) * 0.5
        g[:, 0, 0] = x[:, 0, 1] - x[:, 0, 0]
        g[:, 0, -1] = x[:, 0, -1] - x[:, 0, -2]
    if W > 1:
        g[:, 1, :, 1:-1] = (x[:, 0, :, 2:] - x[:, 0, :, :-2]) * 0.5
        g[:, 1, :, 0] = x[:, 0, :, 1] - x[:, 0, :, 0]
        g[:, 1, :, -1] = x[:, 0, :, -1] - x[:, 0, :, -2]
    return g


def demons_step_reference(fixed: Tensor, moving: Tensor, u: Tensor, g_fixed: Tensor, inv_k: float) -> Tensor:
    """Pure-torch demons step (the oracle)."""
    mw = warp2d_reference(moving, u, "bilinear", "border")
    diff = fixed - mw
    g = (_gradient(mw) + g_fixed) * 0.5
    den = (g * g).sum(1, keepdim=True) + inv_k * (diff * diff)
    return g * (diff / den.clamp_min(1e-12))


# --- kernels ------------------------------------------------------------------------------


def _native(on: Launch, fixed, moving, u, g_fixed, inv_k, out=None):
    fixed, moving, u, g_fixed = (t.contiguous() for t in (fixed, moving, u, g_fixed))
    N, _, H, W = fixed.shape
    out = torch.empty((N, 2, H, W), dtype=torch.float32, device=fixed.device) if out is None else out
    if out.numel():
        on.mod.demons_step(
            fixed.data_ptr(),
            moving.data_ptr(),
            u.data_ptr(),
            g_fixed.data_ptr(),
            out.data_ptr(),
            N,
            H,
            W,
            float(inv_k),
            on.last(fixed),
        )
    return out


def _triton(fixed, moving, u, g_fixed, inv_k, out=None):
    N, _, H, W = fixed.shape
    out = torch.empty((N, 2, H, W), dtype=torch.float32, device=fixed.device) if out is None else out
    if out.numel():
        triton_module().demons_step_forward(fixed, moving, u, g_fixed, float(inv_k), out)
    return out


def _reference(fixed, moving, u, g_fixed, inv_k, out=None):
    r = demons_step_reference(fixed, moving, u, g_fixed, inv_k)
    return r if out is None else out.copy_(r)


# --- the declaration (not differentiable); dilseg::demons_step_out writes into out ---------------

demons_step_op = declare(
    "demons_step",
    "(Tensor fixed, Tensor moving, Tensor u, Tensor g_fixed, float inv_k) -> Tensor",
    reference=_reference,
    kernels={**native(_native, backends=("cpu",)), "triton": Kernel(_triton)},
    fake=lambda fixed, moving, u, g_fixed, inv_k: fixed.new_empty(
        (fixed.shape[0], 2, fixed.shape[2], fixed.shape[3]), dtype=torch.float32
    ),
    out=True,
)

IMPLS = demons_step_op.impls


# --- public entry -----------------------------------------------------------------------


def demons_step(
    fixed: Tensor,
    moving: Tensor,
    u: Tensor,
    g_fixed: Tensor,
    inv_k: float,
    *,
    out: Optional[Tensor] = None,
    check_finite: bool = False,
) -> Tensor:
    """The demons step ``[N, 2, H, W]`` of every pair (module docstring).

    ``out``: a contiguous float32 ``[N, 2, H, W]`` tensor on the inputs' device,
    sharing no memory with them, to write into (the registration loop reuses one: a
    fresh multi-megabyte output costs first-touch page faults on the CPU).

    The entry checks types, shapes, dtypes, devices, ``inv_k`` and ``out``, all
    metadata: no value is read, no device sync. ``check_finite=True`` also scans the
    four inputs for NaN/Inf (reads every value: a sync on CUDA); data is checked once
    where it enters the engine, the registration loop leaves it off. Raises
    ``engine.errors.ShapeError`` / ``DTypeError`` / ``InputError``, and
    ``NonFiniteError`` when ``check_finite=True``.
    """
    for name, t, ch in (("fixed", fixed, 1), ("moving", moving, 1), ("u", u, 2), ("g_fixed", g_fixed, 2)):
        C.check_tensor(name, t, 4, (torch.float32,))
        if t.shape[1] != ch:
            raise C.ShapeError(f"{name} must be [N, {ch}, H, W], got {tuple(t.shape)}")
    if not C.same_device(fixed.device, moving, u, g_fixed):
        C.check_same_device(fixed=fixed, moving=moving, u=u, g_fixed=g_fixed)
    N, _, H, W = fixed.shape
    for name, t in (("moving", moving), ("u", u), ("g_fixed", g_fixed)):
        if t.shape[0] != N or tuple(t.shape[2:]) != (H, W):
            raise C.ShapeError(f"{name} {tuple(t.shape)} does not match fixed {tuple(fixed.shape)}")
    if not isinstance(inv_k, (int, float)) or isinstance(inv_k, bool) or not inv_k >= 0:
        raise C.InputError(f"inv_k must be a number >= 0, got {inv_k!r}")
    if out is not None:
        C.check_out("out", out, u, fixed=fixed, moving=moving, u=u, g_fixed=g_fixed)
    if check_finite:
        for name, t in (("fixed", fixed), ("moving", moving), ("u", u), ("g_fixed", g_fixed)):
            C.check_finite(name, t)
    if out is not None:
        demons_step_op.call_out(fixed, moving, u, g_fixed, float(inv_k), out)
        return out
    return demons_step_op(fixed, moving, u, g_fixed, float(inv_k))
