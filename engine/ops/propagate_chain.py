"""propagate_chain: push the annotated 2D masks of a volume through the chained
adjacent-slice displacement fields, in both directions, and fuse the contributors.

Inputs (D slices of H x W):

* ``masks`` ``[D, H, W]`` float32 / float16 / bfloat16 / float64 / uint8, soft masks in
  ``[0, 1]`` (uint8: 0 / 1), any strides. Only the annotated slices are read.
* ``annotated`` ``[D]`` bool (any device; a sequence of slice indices in any order is
  accepted too).
* ``fwd`` ``[D-1, 2, H, W]`` float32: ``fwd[z]`` pushes slice ``z`` to slice ``z+1`` by
  pull-back, ``m_{z+1}(p) = m_z(p + fwd[z](p))`` (channel 0 rows, 1 columns, pixels;
  bilinear, zeros padding: exactly :func:`engine.ops.warp2d` semantics).
* ``bwd`` ``[D-1, 2, H, W]`` float32: ``bwd[z]`` pushes slice ``z+1`` to slice ``z``,
  ``m_z(p) = m_{z+1}(p + bwd[z](p))``.
* ``min_mass`` (default 0.02): a chain stops when its mask's sum falls below
  ``min_mass * sum(mask of its source slice)``; from that slice on its contributor is
  an explicit zero mask (the object has ended), still with its distance.
* ``fuse``: ``"none"`` | ``"nearest"`` | ``"linear"`` (see below).

Chains: from every annotated slice ``a`` one chain goes up (``a+1, a+2, ...``) and
one goes down, each stopping before the next annotated slice (a chain never writes
onto or across an annotated slice) or at the volume's end. Running masks are fp32.

Outputs (:class:`PropagateChainResult`):

* ``from_below`` ``[D, H, W]`` float32: for slice ``z`` the mask pushed up from the
  nearest annotated ``a <= z`` (annotated slices: their own mask; no annotated slice
  below: zeros); ``from_above`` likewise, pushed down from the nearest ``b >= z``.
* ``dist_below`` / ``dist_above`` ``[D]`` int32: ``z - a`` / ``b - z``, or -1 where
  there is no such annotated slice.
* ``q`` ``[D, H, W]`` float32 in [0, 1] (None for ``fuse="none"``): with both
  contributors, ``nearest`` takes the closer one (ties: the average) and ``linear``
  weights ``(b-z)/(b-a)`` for from_below and ``(z-a)/(b-a)`` for from_above (an
  annotated slice: its own mask); with one contributor, that one; with none, 0.
  Clamped to [0, 1] (bilinear sums may exceed 1 by an ulp).
* ``confidence`` ``[D]`` float32: ``1 / (1 + d)``, ``d = min`` of the available
  distances (annotated slices 1; no annotated slice at all: 0).

Backends (all pinned to the reference by tests/ops/test_propagate_chain.py):
``reference`` (pure torch, a loop over chains and slices through ``warp2d_reference``),
``cpu`` (C++/OpenMP, csrc/propagate_chain/propagate_chain_cpu.cpp: parallel over
chains, and over the rows of each step when there are fewer chains than threads),
``cuda`` (csrc/propagate_chain/propagate_chain.cu: ONE kernel launch for the whole
volume, one block per segment between consecutive annotated slices stepping its two
chains, running masks in shared memory when they fit, no host synchronisation),
``triton`` (engine/kernels/propagate_chain.py: one launch, one program per segment looping
over its slices; non-float32 masks are first converted to float32, one more launch).
Not differentiable (masks are data): no autograd is registered.

The CUDA path is one launch per call by construction: outputs come from
``torch.empty`` (no fill kernel; the kernel writes every element, zero masks
included), the annotated vector is read on the device (no copy, no sync to find the
segments), and the host function issues exactly one ``<<<>>>``;
tests/ops/test_propagate_chain.py::test_cuda_is_one_launch checks it with the torch
profiler (with the default ``check_inputs=False``: the input scan launches reductions).

The mass threshold compares sums accumulated in different orders by each backend; a
chain whose mass lands within rounding of the threshold may stop one slice apart
between backends (tests keep away from that edge).
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor

from . import _common as C
from ._declare import Kernel, Launch, declare, native, triton_module
from .warp2d import warp2d_reference

__all__ = ["propagate_chain", "propagate_chain_reference", "PropagateChainResult", "IMPLS", "FUSE_MODES"]

FUSE_MODES = ("none", "nearest", "linear")
MASK_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.uint8)


class PropagateChainResult(NamedTuple):
    from_below: Tensor  # [D, H, W] float32
    from_above: Tensor  # [D, H, W] float32
    dist_below: Tensor  # [D] int32, -1: none
    dist_above: Tensor  # [D] int32, -1: none
    q: Optional[Tensor]  # [D, H, W] float32, None for fuse="none"
    confidence: Tensor  # [D] float32


# --- reference -------------------------------------------------------------------


def fuse_reference(from_below: Tensor, from_above: Tensor, dist_below: Tensor, dist_above: Tensor, fuse: str) -> Tensor:
    """Fused proxy ``Q`` ``[D,H,W]`` float32 from the two contributors (see module doc)."""
    db = dist_below.view(-1, 1, 1)
    da = dist_above.view(-1, 1, 1)
    hb, ha = db >= 0, da >= 0
    zero = torch.zeros((), dtype=torch.float32, device=from_below.device)
    if fuse == "nearest":
        both = torch.where(db < da, from_below, torch.where(da < db, from_above, 0.5 * (from_below + from_above)))
    else:
        span = (db + da).clamp_min(1).to(torch.float32)  # b - a; 0 only on annotated slices
        wb = da.to(torch.float32) / span  # weight of from_below: (b - z) / (b - a)
        wa = db.to(torch.float32) / span  # weight of from_above: (z - a) / (b - a)
        both = torch.where((db + da) == 0, from_below, wb * from_below + wa * from_above)
    q = torch.where(hb & ha, both, torch.where(hb, from_below, torch.where(ha, from_above, zero)))
    return q.clamp(0.0, 1.0)


def confidence_reference(dist_below: Tensor, dist_above: Tensor) -> Tensor:
    """``1 / (1 + d)`` with ``d`` the smaller available distance; 0 with none."""
    big = torch.iinfo(torch.int32).max
    d = torch.minimum(torch.where(dist_below >= 0, dist_below, big), torch.where(dist_above >= 0, dist_above, big))
    return torch.where(d < big, 1.0 / (1.0 + d.to(torch.float32)), torch.zeros((), device=d.device))


def propagate_chain_reference(
    masks: Tensor, annotated: Tensor, fwd: Tensor, bwd: Tensor, min_mass: float = 0.02, fuse: str = "none"
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Pure-torch propagate_chain (the oracle): a loop over chains and slices.

    Returns the tuple ``(from_below, from_above, dist_below, dist_above, q, confidence)``
    where ``q`` is an empty ``[0]`` tensor for ``fuse="none"`` (the custom-op schema);
    the public :func:`propagate_chain` turns it into a :class:`PropagateChainResult`.
    """
    D, H, W = masks.shape
    dev = masks.device
    ann = annotated.to(device="cpu", dtype=torch.bool).reshape(-1).tolist()
    from_below = torch.zeros((D, H, W), dtype=torch.float32, device=dev)
    from_above = torch.zeros((D, H, W), dtype=torch.float32, device=dev)
    dist_below = [-1] * D
    dist_above = [-1] * D
    fwd32 = fwd.to(torch.float32)
    bwd32 = bwd.to(torch.float32)

    def run(a: int, step: int, out: Tensor, dist: list) -> None:
        cur = masks[a].to(torch.float32)
        thr = min_mass * float(cur.sum())
        alive = True
        z = a + step
        while 0 <= z < D and not ann[z]:
            if alive:
                field = fwd32[z - 1] if step > 0 else bwd32[z]
                cur = warp2d_reference(cur[None, None], field[None], "bilinear", "zeros")[0, 0]
                if float(cur.sum()) < thr:
                    alive = False
                    cur = torch.zeros_like(cur)
            out[z] = cur
            dist[z] = abs(z - a)
            z += step

    for a in range(D):
        if not ann[a]:
            continue
        own = masks[a].to(torch.float32)
        from_below[a] = own
        from_above[a] = own
        dist_below[a] = dist_above[a] = 0
        run(a, +1, from_below, dist_below)
        run(a, -1, from_above, dist_above)
    db = torch.tensor(dist_below, dtype=torch.int32, device=dev)
    da = torch.tensor(dist_above, dtype=torch.int32, device=dev)
    if fuse == "none":
        q = torch.empty((0,), dtype=torch.float32, device=dev)
    else:
        q = fuse_reference(from_below, from_above, db, da, fuse)
    return from_below, from_above, db, da, q, confidence_reference(db, da)


# --- kernels ------------------------------------------------------------------------------

_FUSE_ENUM = {"none": "None_", "nearest": "Nearest", "linear": "Linear"}  # names of the bound enum


def _outputs(masks: Tensor, fuse: str):
    D, H, W = masks.shape
    dev = masks.device
    # torch.empty only: the kernels write every element (a fill would be a launch)
    fb = torch.empty((D, H, W), dtype=torch.float32, device=dev)
    fa = torch.empty((D, H, W), dtype=torch.float32, device=dev)
    db = torch.empty((D,), dtype=torch.int32, device=dev)
    da = torch.empty((D,), dtype=torch.int32, device=dev)
    q = torch.empty((D, H, W) if fuse != "none" else (0,), dtype=torch.float32, device=dev)
    conf = torch.empty((D,), dtype=torch.float32, device=dev)
    return fb, fa, db, da, q, conf


def _as_flags(annotated: Tensor) -> Tensor:
    return annotated if annotated.dtype in (torch.bool, torch.uint8) else annotated.to(torch.bool)


def _native(on: Launch, masks: Tensor, annotated: Tensor, fwd: Tensor, bwd: Tensor, min_mass: float, fuse: str):
    outs = _outputs(masks, fuse)
    fb, fa, db, da, q, conf = outs
    D, H, W = masks.shape
    ann = _as_flags(annotated)
    mod = on.mod
    mod.propagate_chain(
        masks.data_ptr(),
        list(masks.stride()),
        on.dtype(masks.dtype),
        ann.data_ptr(),
        ann.stride(0),
        fwd.data_ptr(),
        list(fwd.stride()),
        bwd.data_ptr(),
        list(bwd.stride()),
        fb.data_ptr(),
        fa.data_ptr(),
        db.data_ptr(),
        da.data_ptr(),
        q.data_ptr() if fuse != "none" else 0,
        conf.data_ptr(),
        [D, H, W],
        float(min_mass),
        getattr(mod.Fuse, _FUSE_ENUM[fuse]),
        on.last(masks),
    )
    return outs


def _triton(masks, annotated, fwd, bwd, min_mass, fuse):
    outs = _outputs(masks, fuse)
    triton_module().propagate_chain(masks, _as_flags(annotated), fwd, bwd, *outs, min_mass=float(min_mass), fuse=fuse)
    return outs


def _nonempty(masks, *rest) -> Optional[str]:
    # the kernels assume D, H, W >= 1 (the public entry rejects empty volumes; a direct
    # call of the custom op with one is served by the reference)
    return None if masks.numel() else "empty volume"


# --- the declaration (no autograd: masks are data) -------------------------------------------


def _fake(masks, annotated, fwd, bwd, min_mass, fuse):
    D, H, W = masks.shape
    vol = lambda: masks.new_empty((D, H, W), dtype=torch.float32)  # noqa: E731
    vec = lambda dt: masks.new_empty((D,), dtype=dt)  # noqa: E731
    q = vol() if fuse != "none" else masks.new_empty((0,), dtype=torch.float32)
    return vol(), vol(), vec(torch.int32), vec(torch.int32), q, vec(torch.float32)


propagate_chain_op = declare(
    "propagate_chain",
    "(Tensor masks, Tensor annotated, Tensor fwd, Tensor bwd, float min_mass, str fuse)"
    " -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    reference=propagate_chain_reference,
    kernels={**native(_native, supports={"cpu": _nonempty, "cuda": _nonempty}), "triton": Kernel(_triton, _nonempty)},
    fake=_fake,
)

IMPLS = propagate_chain_op.impls


# --- public entry -------------------------------------------------------------------------


def as_annotated(annotated: Union[Tensor, Sequence[int], Sequence[bool]], D: int, device: torch.device) -> Tensor:
    """``[D]`` bool on ``device`` from a bool vector or a sequence of slice indices.

    Costs on CUDA: a bool vector already on ``device`` is used as is (no sync); a CPU
    bool vector, Python bools or Python indices are copied to the device (one small,
    synchronous host-to-device copy); a tensor of indices is read on the host to check
    its range (``tolist``: a device sync when it lives on the GPU). Callers on a
    round's hot path pass a bool vector on the device."""
    if isinstance(annotated, Tensor) and annotated.dtype == torch.bool:
        if annotated.dim() != 1 or annotated.shape[0] != D:
            raise C.ShapeError(f"annotated must be a bool vector of length D={D}, got shape {tuple(annotated.shape)}")
        return annotated.to(device)
    if isinstance(annotated, Tensor):
        if annotated.is_floating_point() or annotated.dim() > 1:
            raise C.DTypeError(
                f"annotated must be a [D] bool vector or integer slice indices; got {annotated.dtype} "
                f"of shape {tuple(annotated.shape)}"
            )
        idx = [int(i) for i in annotated.reshape(-1).tolist()]
    else:
        try:
            seq = list(annotated)
        except TypeError as exc:
            raise C.InputError(
                f"annotated must be a bool vector or a sequence of slice indices, got {type(annotated).__name__}"
            ) from exc
        if seq and all(isinstance(v, bool) for v in seq):
            if len(seq) != D:
                raise C.ShapeError(f"annotated bool sequence has length {len(seq)}, expected D={D}")
            return torch.tensor(seq, dtype=torch.bool, device=device)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in seq):
            raise C.InputError("annotated must be all bools (a [D] mask) or all ints (slice indices)")
        idx = seq
    bad = [i for i in idx if not 0 <= i < D]
    if bad:
        from ..errors import SliceIndexError

        raise SliceIndexError(f"annotated slice indices {bad} out of range [0, {D})")
    out = torch.zeros(D, dtype=torch.bool)
    if idx:
        out[torch.tensor(idx, dtype=torch.long)] = True
    return out.to(device)


def validate(
    masks: Tensor, annotated: Tensor, fwd: Tensor, bwd: Tensor, min_mass: float, fuse: str, check_inputs: bool
) -> None:
    C.check_tensor("masks", masks, 3, MASK_DTYPES)
    C.check_tensor("fwd", fwd, 4, (torch.float32,))
    C.check_tensor("bwd", bwd, 4, (torch.float32,))
    C.check_choice("fuse", fuse, FUSE_MODES)
    if not C.same_device(masks.device, fwd, bwd):
        C.check_same_device(masks=masks, fwd=fwd, bwd=bwd)
    D, H, W = masks.shape
    want = (max(D - 1, 0), 2, H, W)
    for name, f in (("fwd", fwd), ("bwd", bwd)):
        if tuple(f.shape) != want:
            raise C.ShapeError(
                f"{name} must be [D-1, 2, H, W] = {list(want)} for masks {tuple(masks.shape)}, got {tuple(f.shape)}"
            )
    if D < 1 or H < 1 or W < 1:
        raise C.ShapeError(f"masks must be non-empty, got {tuple(masks.shape)}")
    if not isinstance(min_mass, (int, float)) or isinstance(min_mass, bool) or not 0.0 <= float(min_mass) <= 1.0:
        raise C.InputError(f"min_mass must be a number in [0, 1], got {min_mass!r}")
    if check_inputs:
        C.check_finite("fwd", fwd)
        C.check_finite("bwd", bwd)
        src = masks[annotated.to(masks.device)]
        if src.numel():
            s = src.to(torch.float32)
            if not bool(torch.isfinite(s).all()):
                raise C.NonFiniteError("annotated masks hold NaN or Inf")
            if bool((s < 0).any()) or bool((s > 1).any()):
                from ..errors import MaskError

                raise MaskError("annotated masks must lie in [0, 1] (uint8 masks: 0 or 1)")


def propagate_chain(
    masks: Tensor,
    annotated: Union[Tensor, Sequence[int], Sequence[bool]],
    fwd: Tensor,
    bwd: Tensor,
    min_mass: float = 0.02,
    fuse: str = "none",
    *,
    check_inputs: bool = False,
) -> PropagateChainResult:
    """Propagate the annotated slices of ``masks`` ``[D,H,W]`` through ``fwd`` / ``bwd``
    ``[D-1,2,H,W]`` and fuse; see the module docstring for every output.

    ``annotated``: a ``[D]`` bool vector or slice indices (any order; see
    :func:`as_annotated` for what each form costs on CUDA). The entry checks types,
    shapes, dtypes, devices, ``min_mass`` and ``fuse``, all metadata: no device sync
    for a bool vector on the masks' device. ``check_inputs=True`` also scans the
    fields for NaN/Inf and the annotated masks for values outside [0, 1] (reads
    values: syncs on CUDA); data is checked once where it enters the engine, and the
    kernels stay memory-safe without it. Raises ``engine.errors.ShapeError`` /
    ``DTypeError`` / ``InputError`` / ``SliceIndexError``, and ``NonFiniteError`` /
    ``MaskError`` when ``check_inputs=True``.
    """
    if not isinstance(masks, Tensor):
        raise C.InputError(f"masks must be a torch.Tensor, got {type(masks).__name__}")
    if masks.dim() != 3:
        raise C.ShapeError(f"masks must have 3 dimensions [D, H, W], got shape {tuple(masks.shape)}")
    ann = as_annotated(annotated, masks.shape[0], masks.device)
    validate(masks, ann, fwd, bwd, min_mass, fuse, check_inputs)
    fb, fa, db, da, q, conf = propagate_chain_op(masks, ann, fwd, bwd, float(min_mass), fuse)
    return PropagateChainResult(fb, fa, db, da, q if fuse != "none" else None, conf)
