"""slice_residuals: per-slice sums of a weighted residual along all three axes.

With ``r[z, y, x] = w * |q[z, y, x] - p[z, y, x]|`` (computed in float32):

    sz[z] = sum_{y,x} r      sy[y] = sum_{z,x} r      sx[x] = sum_{z,y} r

in ONE pass over ``(q, p, w)``; the residual volume is never materialised by the
kernels (the reference does materialise it).

* ``q`` ``[D, H, W]``: float32 / float16 / bfloat16, or uint8 (0/1 masks); any strides.
* ``p`` ``[D, H, W]``: same dtype choices (may differ from ``q``'s); any strides.
* ``w``: ``None`` (weight 1), a per-slice ``[D]`` vector (e.g. ``1 - C`` along the
  annotation axis; ``[D, 1, 1]`` is accepted too), or a full ``[D, H, W]`` volume;
  float32 / float16 / bfloat16, any strides. A per-slice weight scales each z-plane's
  sums once (no broadcast weight volume is built, no per-voxel multiply).
* Returns ``(sz [D], sy [H], sx [W])``, float32, contiguous (views of one buffer).

Accumulation is float32 throughout (the C++ kernel adds per-plane float32 sums into
per-thread double totals, so its error does not grow with D).

Not differentiable: a score for choosing slices. Inputs are detached.

Backends (all pinned to the reference by tests/ops/test_slice_residuals.py):
``reference`` (pure torch), ``cpu`` (C++/OpenMP, csrc/slice_residuals/
slice_residuals_cpu.cpp: parallel over z-planes, per-thread row/column partials
reduced at the end, no atomics), ``cuda`` (csrc/slice_residuals/slice_residuals.cu:
one zero-fill of the [D+H+W] output buffer + one kernel launch, tiles reduced in
registers/shared memory, partial sums added atomically), ``triton``
(engine/kernels/slice_residuals.py: same zero-fill + one launch).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..errors import MaskError, ShapeError
from . import _common as C
from ._declare import Kernel, Launch, declare, native, triton_module

__all__ = ["slice_residuals", "slice_residuals_reference", "IMPLS"]

DATA_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.uint8)
WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# --- reference -------------------------------------------------------------------


def slice_residuals_reference(q: Tensor, p: Tensor, w: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
    """Pure-torch slice_residuals (the oracle). ``w``: None, ``[D]`` or ``[D,H,W]``."""
    r = (q.float() - p.float()).abs_()  # float32 accumulation for every input dtype
    if w is not None:
        wf = w.float()
        if wf.dim() == 1:
            wf = wf.view(-1, 1, 1)
        r = r * wf
    return r.sum(dim=(1, 2)), r.sum(dim=(0, 2)), r.sum(dim=(0, 1))


# --- kernels: each returns the packed float32 [D+H+W] buffer cat(sz, sy, sx) ------------------


def split(out: Tensor, D: int, H: int, W: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(sz, sy, sx)``: views of the packed buffer."""
    return out[:D], out[D : D + H], out[D + H : D + H + W]


def _packed(q: Tensor, out: Optional[Tensor]) -> Tensor:
    D, H, W = q.shape
    return torch.empty(D + H + W, dtype=torch.float32, device=q.device) if out is None else out


def _weight_args(w: Optional[Tensor]):
    """(mode, tensor) where mode is 'none', 'slice' (float32 [D] contiguous) or 'full'."""
    if w is None:
        return "none", None
    if w.dim() == 1:
        return "slice", w.float().contiguous()
    return "full", w


def _native(on: Launch, q: Tensor, p: Tensor, w: Optional[Tensor], out: Optional[Tensor] = None) -> Tensor:
    """CPU / CUDA glue. ``out``: optional float32 [D+H+W] buffer (tests hand a poisoned
    one). The CUDA entry zero-fills it itself (cudaMemsetAsync) before its one kernel."""
    D, H, W = q.shape
    out = _packed(q, out)
    mode, wk = _weight_args(w)
    mod = on.mod
    rw = mod.ResidualWeight
    wmode = {"none": rw.Unweighted, "slice": rw.PerSlice, "full": rw.Full}[mode]
    wptr = 0 if wk is None else wk.data_ptr()
    if mode == "full":
        wst = list(wk.stride())
    elif mode == "slice":
        wst = [wk.stride(0), 0, 0]
    else:
        wst = [0, 0, 0]
    wdt = on.dtype(wk.dtype if mode == "full" else torch.float32)
    mod.slice_residuals(
        q.data_ptr(),
        list(q.stride()),
        on.dtype(q.dtype),
        p.data_ptr(),
        list(p.stride()),
        on.dtype(p.dtype),
        wptr,
        wst,
        wdt,
        wmode,
        out.data_ptr(),
        [D, H, W],
        on.last(q),
    )
    return out


def _triton(q, p, w, out=None):
    out = _packed(q, out)
    out.zero_()  # launch 1: zero-fill (the kernel adds partial sums atomically)
    mode, wk = _weight_args(w)
    triton_module().slice_residuals_forward(q, p, wk, mode, out)  # launch 2
    return out


def _reference(q, p, w, out=None):
    sums = slice_residuals_reference(q, p, w)
    if out is None:
        return torch.cat(sums)
    D, H, W = q.shape
    for dst, src in zip(split(out, D, H, W), sums):
        dst.copy_(src)
    return out


# --- the declaration (one output: the native kernels write the three sums into one buffer) ------

slice_residuals_op = declare(
    "slice_residuals",
    "(Tensor q, Tensor p, Tensor? w) -> Tensor",
    reference=_reference,
    kernels={**native(_native), "triton": Kernel(_triton)},
    fake=lambda q, p, w: q.new_empty((q.shape[0] + q.shape[1] + q.shape[2],), dtype=torch.float32),
)

IMPLS = slice_residuals_op.impls


# --- public entry -------------------------------------------------------------------------


def validate(q: Tensor, p: Tensor, w: Optional[Tensor], check_finite: bool) -> Optional[Tensor]:
    """Check arguments; returns ``w`` normalised to None / ``[D]`` / ``[D,H,W]``."""
    C.check_tensor("q", q, 3, DATA_DTYPES)
    C.check_tensor("p", p, 3, DATA_DTYPES)
    if p.shape != q.shape:
        raise ShapeError(f"q and p must have the same shape [D,H,W]; got {tuple(q.shape)} and {tuple(p.shape)}")
    if min(q.shape) < 1:
        raise ShapeError(f"q must be a non-empty [D,H,W] volume, got {tuple(q.shape)}")
    D, H, W = q.shape
    if w is not None:
        if not isinstance(w, Tensor):
            raise C.InputError(f"w must be None or a torch.Tensor, got {type(w).__name__}")
        if w.dtype not in WEIGHT_DTYPES:
            raise C.DTypeError(f"w has dtype {w.dtype}; expected one of {[str(d) for d in WEIGHT_DTYPES]}")
        if w.dim() == 3 and tuple(w.shape) == (D, 1, 1):
            w = w.reshape(D)
        if not (tuple(w.shape) == (D,) or tuple(w.shape) == (D, H, W)):
            raise ShapeError(f"w must be [D]={D} (per slice) or [D,H,W]={(D, H, W)}; got {tuple(w.shape)}")
    if not C.same_device(q.device, p, w):
        C.check_same_device(q=q, p=p, w=w)
    if check_finite:
        C.check_finite("q", q)
        C.check_finite("p", p)
        if w is not None:
            C.check_finite("w", w)
        for name, t in (("q", q), ("p", p)):
            if t.dtype == torch.uint8 and bool((t > 1).any()):
                raise MaskError(f"{name} is a uint8 mask with values other than 0 and 1")
    return w


def slice_residuals(
    q: Tensor, p: Tensor, w: Optional[Tensor] = None, *, check_finite: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-slice sums of ``w * |q - p|`` along z, y and x of ``[D, H, W]`` volumes.

    Returns ``(sz [D], sy [H], sx [W])`` float32. ``w``: None, ``[D]`` (per slice)
    or ``[D,H,W]``. The entry checks types, shapes, dtypes and devices, all metadata:
    no value is read, no device sync. ``check_finite=True`` also runs the value scans
    (NaN/Inf in ``q``, ``p``, ``w``; uint8 masks holding values other than 0 and 1),
    each reading every value (a sync on CUDA); data is checked once where it enters
    the engine, and the kernels stay memory-safe without it (NaN propagates into the
    sums). Raises ``engine.errors.ShapeError`` / ``DTypeError`` / ``InputError``, and
    ``NonFiniteError`` / ``MaskError`` when ``check_finite=True``.
    Not differentiable (inputs are detached).
    """
    w = validate(q, p, w, check_finite)
    D, H, W = q.shape
    return split(slice_residuals_op(q, p, w), D, H, W)
