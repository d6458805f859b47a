"""confidence_map: per-voxel confidence ``1 / (1 + d)`` from annotated slices on one
or several axes (DESIGN.md §2 step 3).

For each axis ``k`` with an annotation vector ``a_k`` (``[D]``, ``[H]`` or ``[W]``
bool), ``d_k(i)`` is the distance from index ``i`` to the nearest annotated index on
that axis (found by a forward and a backward scan), ``c_k(i) = 1 / (1 + d_k(i))``,
and ``c_k = 0`` everywhere when the axis has no annotation (``None`` or all False).
The map is the maximum over axes:

    out[z, y, x] = max(c_0(z), c_1(y), c_2(x))      float32, [D, H, W]

written once, in one pass (the per-axis vectors are a few hundred values).
:func:`confidence_vector` returns the single-axis ``c_k`` as a ``[n]`` vector that
callers broadcast (e.g. as ``[D, 1, 1]``) instead of materialising a volume.

Backends (pinned to the reference by tests/ops/test_confidence_map.py):
``reference`` (pure torch: cummax / cummin scans and a broadcast max), ``cpu``
(C++/OpenMP, csrc/confidence_map/confidence_map_cpu.cpp), ``cuda``
(csrc/confidence_map/confidence_map.cu: one launch; each block rebuilds the three
vectors in shared memory with warp-ballot scans, then fills its part of the volume),
``triton`` (engine/kernels/confidence_map.py: one launch; each program computes the
distances of its tile by a blocked min-search over the axis). Not differentiable.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from . import _common as C
from ._declare import Kernel, Launch, declare, native, triton_module

__all__ = ["confidence_map", "confidence_vector", "confidence_map_reference", "confidence_vector_reference", "IMPLS"]

# CUDA keeps the three vectors in (static) shared memory: D + H + W floats at most this
# (csrc/confidence_map/confidence_map.h: kConfidenceMapMaxAxisTotal); larger shapes go
# to the next backend by the rule (Triton, else the reference).
MAX_CUDA_AXIS_TOTAL = 12288

AnnotationLike = Union[Tensor, Sequence[int], Sequence[bool], None]


# --- reference -------------------------------------------------------------------


def confidence_vector_reference(
    annotated: Optional[Tensor], n: Optional[int] = None, device: Optional[torch.device] = None
) -> Tensor:
    """``[n]`` float32 ``1/(1+d)`` from a ``[n]`` bool vector (None: zeros of length ``n``)."""
    if annotated is None:
        return torch.zeros((n,), dtype=torch.float32, device=device)
    ann = annotated.to(torch.bool)
    n = ann.shape[0]
    big = 2 * n + 2
    idx = torch.arange(n, device=ann.device, dtype=torch.int64)
    last = torch.where(ann, idx, torch.full_like(idx, -big)).cummax(0).values  # forward scan
    nxt = torch.where(ann, idx, torch.full_like(idx, 2 * big)).flip(0).cummin(0).values.flip(0)  # backward scan
    d = torch.minimum(idx - last, nxt - idx)
    return torch.where(d < big, 1.0 / (1.0 + d.to(torch.float32)), torch.zeros((), device=ann.device))


def confidence_map_reference(
    ann_d: Optional[Tensor], ann_h: Optional[Tensor], ann_w: Optional[Tensor], shape: Sequence[int]
) -> Tensor:
    """Pure-torch confidence map ``[D,H,W]`` float32 (the oracle)."""
    D, H, W = (int(s) for s in shape)
    dev = next(t.device for t in (ann_d, ann_h, ann_w) if t is not None)
    cd = confidence_vector_reference(ann_d, D, dev).view(D, 1, 1)
    ch = confidence_vector_reference(ann_h, H, dev).view(1, H, 1)
    cw = confidence_vector_reference(ann_w, W, dev).view(1, 1, W)
    return torch.maximum(torch.maximum(cd, ch), cw).expand(D, H, W).contiguous()


# --- kernels ------------------------------------------------------------------------------


def _vec_args(t: Optional[Tensor]) -> tuple[int, int]:
    return (0, 0) if t is None else (t.data_ptr(), t.stride(0))


def _first(ann_d, ann_h, ann_w) -> Tensor:
    return ann_d if ann_d is not None else (ann_h if ann_h is not None else ann_w)


def _native(on: Launch, ann_d, ann_h, ann_w, shape):
    D, H, W = (int(s) for s in shape)
    out = torch.empty((D, H, W), dtype=torch.float32, device=_first(ann_d, ann_h, ann_w).device)
    if out.numel():
        (pd, sd), (ph, sh), (pw, sw) = _vec_args(ann_d), _vec_args(ann_h), _vec_args(ann_w)
        on.mod.confidence_map(pd, sd, ph, sh, pw, sw, out.data_ptr(), [D, H, W], on.last(out))
    return out


def _cuda_capacity(ann_d, ann_h, ann_w, shape) -> Optional[str]:
    total = sum(int(s) for s in shape)
    if total > MAX_CUDA_AXIS_TOTAL:
        return f"D + H + W = {total} exceeds the CUDA kernel's shared-memory bound {MAX_CUDA_AXIS_TOTAL}"
    return None


def _triton(ann_d, ann_h, ann_w, shape):
    D, H, W = (int(s) for s in shape)
    out = torch.empty((D, H, W), dtype=torch.float32, device=_first(ann_d, ann_h, ann_w).device)
    if out.numel():
        triton_module().confidence_map(ann_d, ann_h, ann_w, out)
    return out


# --- the declaration (not differentiable) ---------------------------------------------------

confidence_map_op = declare(
    "confidence_map",
    "(Tensor? ann_d, Tensor? ann_h, Tensor? ann_w, int[] shape) -> Tensor",
    reference=confidence_map_reference,
    kernels={**native(_native, supports={"cuda": _cuda_capacity}), "triton": Kernel(_triton)},
    fake=lambda ann_d, ann_h, ann_w, shape: _first(ann_d, ann_h, ann_w).new_empty(tuple(shape), dtype=torch.float32),
)

IMPLS = confidence_map_op.impls


# --- public entries -----------------------------------------------------------------------


def _as_vector(name: str, a: AnnotationLike, n: int, device: Optional[torch.device]) -> Optional[Tensor]:
    if a is None:
        return None
    from .propagate_chain import as_annotated

    try:
        v = as_annotated(a, n, device if device is not None else (a.device if isinstance(a, Tensor) else "cpu"))
    except C.InputError as exc:
        raise type(exc)(f"{name}: {exc}") from exc
    return v


def _check_shape(shape) -> tuple[int, int, int]:
    try:
        dims = tuple(int(s) for s in shape)
    except (TypeError, ValueError) as exc:
        raise C.InputError(f"shape must be three non-negative ints (D, H, W), got {shape!r}") from exc
    if len(dims) != 3 or min(dims) < 0:
        raise C.ShapeError(f"shape must be three non-negative ints (D, H, W), got {shape!r}")
    return dims  # type: ignore[return-value]


def confidence_map(
    shape: Sequence[int], annotated: Sequence[AnnotationLike], *, device: Union[str, torch.device, None] = None
) -> Tensor:
    """Confidence ``[D, H, W]`` float32 = max over axes of ``1 / (1 + d_axis)``.

    ``annotated``: up to three entries, for axes 0, 1, 2 in order; each a bool vector
    of that axis' length, a sequence of slice indices, or None (axis not annotated).
    ``device``: where the map lives (default: the device of the first tensor entry,
    else CPU); the vectors are moved there. With no annotation at all: zeros.
    The entry reads no tensor value: bool vectors on ``device`` cost no sync; indices
    and CPU vectors are one small host-to-device copy each on CUDA (see
    :func:`engine.ops.as_annotated`). Raises ``ShapeError`` / ``DTypeError`` /
    ``InputError`` / ``SliceIndexError``.
    """
    dims = _check_shape(shape)
    if isinstance(annotated, Tensor) or not isinstance(annotated, (list, tuple)):
        raise C.InputError("annotated must be a list/tuple of up to three per-axis annotations (None for none)")
    if len(annotated) > 3:
        raise C.ShapeError(f"annotated has {len(annotated)} entries; at most three axes (D, H, W)")
    entries = list(annotated) + [None] * (3 - len(annotated))
    if device is None:
        device = next((a.device for a in entries if isinstance(a, Tensor)), torch.device("cpu"))
    device = torch.device(device)
    vecs = [_as_vector(f"annotated[{k}]", a, dims[k], device) for k, a in enumerate(entries)]
    if all(v is None for v in vecs) or min(dims) == 0:
        return torch.zeros(dims, dtype=torch.float32, device=device)
    return confidence_map_op(vecs[0], vecs[1], vecs[2], list(dims))


def confidence_vector(
    annotated: AnnotationLike, length: Optional[int] = None, *, device: Union[str, torch.device, None] = None
) -> Tensor:
    """Single-axis confidence ``[n]`` float32 ``1 / (1 + d)`` (0 everywhere without
    annotation), to broadcast as e.g. ``[D, 1, 1]``. ``length`` is required when
    ``annotated`` is given as slice indices (or None)."""
    if isinstance(annotated, Tensor) and annotated.dtype == torch.bool:
        n = annotated.shape[0] if annotated.dim() == 1 else -1
        if annotated.dim() != 1:
            raise C.ShapeError(f"annotated must be a [n] bool vector, got shape {tuple(annotated.shape)}")
        if length is not None and int(length) != n:
            raise C.ShapeError(f"annotated has length {n}, but length={length}")
    elif length is None:
        raise C.InputError("length is required when annotated is given as slice indices or None")
    else:
        n = int(length)
    return confidence_map((n, 1, 1), [annotated], device=device).view(n)
