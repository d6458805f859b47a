"""select_slices: greedy top-k slice proposal with a minimum gap, on the device.

Given per-slice scores (e.g. ``sz`` of :func:`engine.ops.slice_residuals`), pick
``k`` slices one at a time: each round takes the eligible slice with the highest
score (ties: the lower index), then suppresses its neighbourhood.

* ``scores`` ``[D]`` float32, any stride. NaN scores are never selected; ``±inf``
  are ordinary values.
* ``annotated`` ``[D]`` bool or None (none annotated): never selected, and they
  suppress their neighbourhood like chosen slices.
* ``k`` int ≥ 0: number of slices to return.
* ``min_gap`` int ≥ 0: a candidate ``z`` is suppressed by an annotated or already
  chosen slice ``s`` when ``|z - s| <= min_gap``; i.e. at least ``min_gap`` slices
  lie strictly between any two chosen/annotated slices. ``min_gap=0`` only excludes
  the annotated slices themselves and repeats.
* ``valid`` ``[D]`` bool or None (all valid): only these may be chosen (e.g. the
  object's extent). Invalid slices do not suppress anything.
* Returns ``[k]`` int64 on the scores' device, in selection order, padded with
  ``-1`` once no eligible slice is left.

No host synchronisation: every backend (the reference too: a loop of ``k`` rounds
of device ops, no ``.item()`` and no Python branch on tensor values) leaves the
result on the device until the caller reads it. Validation looks only at shapes,
dtypes and devices.

Backends (pinned to the reference by tests/ops/test_select_slices.py):
``reference`` (pure torch), ``cpu`` (C++, serial: D is a slice count, a few
hundred; a k×D scan costs microseconds, threads would cost more),
``cuda`` (one launch: one block, k rounds of block-wide argmax with the
eligibility flags in shared memory; D ≤ 32768, larger D goes to the next backend),
``triton`` (one launch: one program holding all D slices in registers, k rounds).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..errors import InputError, ShapeError
from . import _common as C
from ._declare import Kernel, Launch, declare, native, triton_module

__all__ = ["select_slices", "select_slices_reference", "IMPLS", "CUDA_MAX_D"]

# eligibility flags of the CUDA kernel live in 32 KiB of shared memory
# (csrc/select_slices/select_slices.h: kSelectSlicesCudaMaxD); larger D goes to the next
# backend by the rule (Triton, else the reference)
CUDA_MAX_D = 32768


# --- reference -------------------------------------------------------------------


def _initial_eligible(scores: Tensor, annotated: Optional[Tensor], min_gap: int, valid: Optional[Tensor]) -> Tensor:
    D = scores.shape[0]
    elig = ~torch.isnan(scores)
    if valid is not None:
        elig = elig & valid
    if annotated is not None:
        # any annotated slice in [z - gap, z + gap]: a window count from a prefix sum
        z = torch.arange(D, device=scores.device)
        cs = torch.cat(
            [torch.zeros(1, dtype=torch.int64, device=scores.device), torch.cumsum(annotated.to(torch.int64), 0)]
        )
        hi = (z + min_gap + 1).clamp(max=D)
        lo = (z - min_gap).clamp(min=0)
        elig = elig & ((cs.index_select(0, hi) - cs.index_select(0, lo)) == 0)
    return elig


def select_slices_reference(
    scores: Tensor, annotated: Optional[Tensor], k: int, min_gap: int = 0, valid: Optional[Tensor] = None
) -> Tensor:
    """Pure-torch select_slices (the oracle); k rounds of device ops, no host sync."""
    D = scores.shape[0]
    dev = scores.device
    if D == 0 or k == 0:
        return torch.full((k,), -1, dtype=torch.int64, device=dev)
    z = torch.arange(D, device=dev)
    elig = _initial_eligible(scores, annotated, min_gap, valid)
    picks = []
    for _ in range(min(k, D)):  # after D picks nothing is left: the rest is -1 padding
        m = scores.masked_fill(~elig, float("-inf")).max()  # a Python scalar: no host→device copy
        cand = elig & (scores == m)  # non-empty iff any slice is eligible
        first = torch.argmax(cand.to(torch.uint8))  # torch returns the first maximal index
        pick = torch.where(cand.any(), first, -1)
        picks.append(pick)
        elig = elig & ((z - pick).abs() > min_gap)  # pick = -1 leaves elig all False anyway
    if k > D:
        picks.append(torch.full((k - D,), -1, dtype=torch.int64, device=dev))
    return torch.cat([t.reshape(-1) for t in picks]).to(torch.int64)


# --- kernels ------------------------------------------------------------------------------


def _flag_args(t: Optional[Tensor]) -> tuple[int, int]:
    # bool tensors are one byte per element (0/1): passed as uint8 with their stride
    return (0, 0) if t is None else (t.data_ptr(), t.stride(0))


def _native(on: Launch, scores, annotated, k, min_gap, valid, out=None):
    D = scores.shape[0]
    if out is None:
        out = torch.empty(k, dtype=torch.int64, device=scores.device)
    if k == 0:
        return out
    if D == 0:
        return out.fill_(-1)
    a_ptr, a_st = _flag_args(annotated)
    v_ptr, v_st = _flag_args(valid)
    on.mod.select_slices(
        scores.data_ptr(), scores.stride(0), a_ptr, a_st, v_ptr, v_st, D, k, min_gap, out.data_ptr(), on.last(scores)
    )
    return out


def _cuda_capacity(scores, *rest) -> Optional[str]:
    if scores.shape[0] > CUDA_MAX_D:
        return f"D = {scores.shape[0]} exceeds the CUDA kernel's shared-memory bound {CUDA_MAX_D}"
    return None


def _triton(scores, annotated, k, min_gap, valid, out=None):
    if out is None:
        out = torch.empty(k, dtype=torch.int64, device=scores.device)
    if k and scores.shape[0] == 0:
        out.fill_(-1)
    elif k:
        triton_module().select_slices_forward(scores, annotated, k, min_gap, valid, out)
    return out


def _reference(scores, annotated, k, min_gap, valid, out=None):
    r = select_slices_reference(scores, annotated, k, min_gap, valid)
    if out is None:
        return r
    out.copy_(r)
    return out


# --- the declaration ----------------------------------------------------------------------------

select_slices_op = declare(
    "select_slices",
    "(Tensor scores, Tensor? annotated, int k, int min_gap, Tensor? valid) -> Tensor",
    reference=_reference,
    kernels={**native(_native, supports={"cuda": _cuda_capacity}), "triton": Kernel(_triton)},
    fake=lambda scores, annotated, k, min_gap, valid: scores.new_empty((k,), dtype=torch.int64),
)

IMPLS = select_slices_op.impls


# --- public entry -------------------------------------------------------------------------


def _check_flags(name: str, t: Optional[Tensor], D: int) -> None:
    if t is None:
        return
    C.check_tensor(name, t, 1, (torch.bool,))
    if t.shape[0] != D:
        raise ShapeError(f"{name} must be [D]={D} like scores; got {tuple(t.shape)}")


def validate(scores: Tensor, annotated: Optional[Tensor], k: int, min_gap: int, valid: Optional[Tensor]) -> None:
    C.check_tensor("scores", scores, 1, (torch.float32,))
    D = scores.shape[0]
    _check_flags("annotated", annotated, D)
    _check_flags("valid", valid, D)
    for name, v in (("k", k), ("min_gap", min_gap)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise InputError(f"{name} must be an int, got {type(v).__name__}")
        if v < 0:
            raise InputError(f"{name} must be >= 0, got {v}")
    if not C.same_device(scores.device, annotated, valid):
        C.check_same_device(scores=scores, annotated=annotated, valid=valid)


def select_slices(
    scores: Tensor, annotated: Optional[Tensor], k: int, min_gap: int = 0, valid: Optional[Tensor] = None
) -> Tensor:
    """Greedy top-``k`` slices by ``scores`` ``[D]`` with a minimum gap.

    Skips ``annotated`` slices (``[D]`` bool or None) and everything within
    ``min_gap`` of an annotated or already chosen slice (``|z - s| <= min_gap``);
    only ``valid`` slices (``[D]`` bool or None = all) may be chosen; NaN scores never
    are. Returns ``[k]`` int64 on the device in selection order, ``-1``-padded; ties
    go to the lower index. Makes no host synchronisation. Raises
    ``engine.errors.ShapeError`` / ``DTypeError`` / ``InputError``.
    """
    validate(scores, annotated, k, min_gap, valid)
    min_gap = min(min_gap, max(scores.shape[0], 1))  # larger gaps act the same; keeps int32 math safe
    return select_slices_op(scores, annotated, k, min_gap, valid)
