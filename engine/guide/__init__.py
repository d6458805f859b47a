"""Guidance: which slices should the person draw next (DESIGN §2 step 5).

* :func:`residual_scores` reduces the residual map ``R = w * |Q - P|`` to one score
  per slice along the annotation axis (``engine.ops.slice_residuals``, one fused pass).
* :func:`propose` picks the next ``k`` slices by a named rule:

  ``"even"``      evenly spaced over the object's extent (or the volume), the
                  baseline every rule must beat at equal slice count; positions
                  already drawn are replaced by the middles of the largest gaps;
  ``"residual"``  greedy by residual score with a minimum gap to chosen and
                  annotated slices (the paper's model-guided proposal);
  ``"gap"``       the middle of the largest unannotated gaps (including the gaps
                  to the extent's ends) — pure geometry, no model;
  ``"residual_gap"`` residual score times the distance to the nearest annotated
                  slice, so large disagreements far from drawn slices win;
  ``"random"``    uniformly random unannotated slices in the extent;
  ``"cells"``     while nothing inside the extent is drawn: an evenly spread half of
                  the centres of 2k equal cells of the extent (the end slices are *not*
                  proposed: the person already said where the object stops, and a drawn
                  end is a sliver that propagates poorly); then the slice farthest from
                  every drawn one, the distance to an end of the extent counted double
                  (the ends get half cells). benchmarks/RESULTS.md compares it with
                  even spacing on the left-atrium stream.

All rules return plain Python ints (the caller reads the ``k`` indices: the only
host synchronisation of a proposal).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from ..errors import InputError, SliceIndexError

RULES = ("even", "residual", "gap", "residual_gap", "random", "cells")

__all__ = ["RULES", "residual_scores", "even_slices", "cell_centres", "propose", "distance_to_annotated"]


def residual_scores(q: torch.Tensor, p: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-slice sums ``S(z) = sum_{y,x} w * |q - p|`` of volumes ``[D,H,W]``.

    ``weight`` is None, a per-slice ``[D]`` vector or a full ``[D,H,W]`` volume.
    Returns ``[D]`` float32 on the inputs' device.
    """
    from ..ops import slice_residuals

    return slice_residuals(q, p, weight)[0]


def even_slices(first: int, last: int, k: int) -> list[int]:
    """``k`` slices evenly spaced over ``[first, last]`` including both ends
    (``k == 1``: the middle). Duplicates (tiny extents) are removed."""
    if k < 1:
        raise InputError(f"k must be >= 1, got {k}")
    if last < first:
        raise InputError(f"extent ({first}, {last}) is empty")
    if k == 1:
        return [(first + last) // 2]
    out = sorted({int(round(first + i * (last - first) / (k - 1))) for i in range(k)})
    return out


def _symmetric(lo: int, hi: int, offsets: Sequence[float]) -> list[int]:
    """Slices ``lo + offset`` rounded half up in the lower half and mirrored into the
    upper half, so a symmetric pattern stays symmetric on the integer grid."""
    n = len(offsets)
    out = set()
    for j in range(n // 2):
        o = int(math.floor(offsets[j] + 0.5))
        out.add(lo + o)
        out.add(hi - o)
    if n % 2:
        out.add(lo + int(math.floor(offsets[n // 2] + 0.5)))
    return sorted(z for z in out if lo <= z <= hi)


def cell_centres(first: int, last: int, k: int) -> list[int]:
    """``k`` slices at the centres of ``k`` equal cells of ``[first, last]``,
    ``first + (last - first)(j + 1/2)/k`` rounded symmetrically (duplicates removed)."""
    if k < 1:
        raise InputError(f"k must be >= 1, got {k}")
    if last < first:
        raise InputError(f"extent ({first}, {last}) is empty")
    return _symmetric(first, last, [(last - first) * (j + 0.5) / k for j in range(k)])


def _cells_choice(ann: Sequence[int], extent: tuple[int, int], k: int, min_gap: int) -> list[int]:
    lo, hi = extent
    inside = [a for a in ann if lo <= a <= hi]
    taken = set(ann)
    if not inside:
        # cold start: an evenly spread half of the 2k cell centres, i.e. the first round
        # of a two-round plan, which puts slices near both ends without drawing them
        plan = cell_centres(lo, hi, 2 * k)
        picks = [plan[i] for i in even_slices(0, len(plan) - 1, min(k, len(plan)))]
        return [z for z in picks if z not in taken][:k]
    chosen: list[int] = []
    pts = sorted(inside)
    for _ in range(k):
        best, best_d = -1, -1.0
        for gap in ((min_gap, 0) if min_gap > 0 else (0,)):
            for z in range(lo, hi + 1):
                if z in taken:
                    continue
                near = min(abs(z - a) for a in pts)
                if near <= gap:
                    continue
                d = min(near, 2 * (z - lo) + 1, 2 * (hi - z) + 1)
                if d > best_d:
                    best, best_d = z, float(d)
            if best >= 0:
                break
        if best < 0:
            break
        chosen.append(best)
        taken.add(best)
        pts.append(best)
    return sorted(chosen)


def distance_to_annotated(size: int, annotated: Sequence[int], device=None) -> torch.Tensor:
    """``[size]`` float32 distance of every slice to the nearest annotated slice
    (``size`` where nothing is annotated)."""
    z = torch.arange(size, device=device, dtype=torch.float32)
    if len(annotated) == 0:
        return torch.full((size,), float(size), device=device)
    a = torch.tensor(sorted(annotated), device=device, dtype=torch.float32)
    return (z[:, None] - a[None, :]).abs().min(1).values


def _gap_choice(size: int, annotated: Sequence[int], extent: tuple[int, int], k: int, min_gap: int) -> list[int]:
    chosen: list[int] = []
    taken = set(annotated)
    for _ in range(k):
        d = distance_to_annotated(size, sorted(taken))
        lo, hi = extent
        best, best_d = -1, -1.0
        for z in range(lo, hi + 1):
            if z in taken or d[z] <= min_gap:
                continue
            if d[z] > best_d:
                best, best_d = z, float(d[z])
        if best < 0:
            break
        chosen.append(best)
        taken.add(best)
    return chosen


def propose(
    rule: str,
    k: int,
    size: int,
    annotated: Sequence[int] = (),
    extent: Optional[tuple[int, int]] = None,
    scores: Optional[torch.Tensor] = None,
    min_gap: int = 1,
    generator: Optional[torch.Generator] = None,
) -> list[int]:
    """The next ``k`` slices (fewer when not enough candidates remain).

    ``annotated``: slices already drawn; never proposed again. ``extent``: the
    object's first and last slice (inclusive); proposals stay inside it (default:
    the whole axis). ``scores``: ``[size]`` residual scores for the model-guided
    rules. ``min_gap``: a candidate within ``min_gap`` slices of an annotated or
    already chosen slice is skipped (``0``: only exact repeats are skipped).
    """
    if rule not in RULES:
        raise InputError(f"rule={rule!r}; expected one of {RULES}")
    if k < 1:
        raise InputError(f"k must be >= 1, got {k}")
    lo, hi = extent if extent is not None else (0, size - 1)
    if not (0 <= lo <= hi < size):
        raise SliceIndexError(f"extent ({lo}, {hi}) outside [0, {size - 1}]")
    for a in annotated:
        if not 0 <= a < size:
            raise SliceIndexError(f"annotated slice {a} outside [0, {size - 1}]")
    ann = sorted(set(int(a) for a in annotated))
    if rule == "even":
        out = [z for z in even_slices(lo, hi, k) if z not in ann][:k]
        if len(out) < k:  # drawn slices took some even positions: fill the largest gaps
            out = sorted(set(out) | set(_gap_choice(size, sorted(set(ann) | set(out)), (lo, hi), k - len(out), 0)))
        return out
    if rule == "gap":
        out = _gap_choice(size, ann, (lo, hi), k, min_gap)
        if len(out) < k and min_gap > 0:  # the gap is a preference: relax it before giving up slices
            out = sorted(set(out) | set(_gap_choice(size, sorted(set(ann) | set(out)), (lo, hi), k - len(out), 0)))
        return out
    if rule == "cells":
        return _cells_choice(ann, (lo, hi), k, min_gap)
    if rule == "random":
        pool = torch.tensor([z for z in range(lo, hi + 1) if z not in ann], dtype=torch.long)
        if len(pool) == 0:
            return []
        perm = torch.randperm(len(pool), generator=generator)[:k]
        return sorted(int(z) for z in pool[perm])
    if scores is None:
        raise InputError(f"rule {rule!r} needs residual scores")
    if scores.shape != (size,):
        raise InputError(f"scores must have shape ({size},), got {tuple(scores.shape)}")
    s = scores.float()
    if rule == "residual_gap":
        s = s * distance_to_annotated(size, ann, device=s.device)
    from ..ops import select_slices

    annotated_mask = torch.zeros(size, dtype=torch.bool, device=s.device)
    if ann:
        annotated_mask[torch.tensor(ann, device=s.device)] = True
    valid = torch.zeros(size, dtype=torch.bool, device=s.device)
    valid[lo : hi + 1] = True
    idx = select_slices(s, annotated_mask, k, min_gap, valid)
    out = [int(z) for z in idx.tolist() if z >= 0]
    if len(out) < k and min_gap > 0:
        # min_gap is a preference: when it leaves fewer than k candidates in the extent,
        # fill up with the best remaining slices rather than proposing fewer
        taken = annotated_mask.clone()
        if out:
            taken[torch.tensor(out, device=s.device)] = True
        more = select_slices(s, taken, k - len(out), 0, valid)
        out += [int(z) for z in more.tolist() if z >= 0]
    return out
