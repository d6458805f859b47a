"""Slice positions from geometry alone: even spacing, cell centres, distances."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ..errors import InputError

__all__ = ["even_slices", "cell_centres", "chebyshev_slices", "symmetric_slices", "distance_to_annotated"]


def even_slices(first: int, last: int, k: int) -> list[int]:
    """``k`` slices evenly spaced over ``[first, last]`` including both ends
    (``k == 1``: the middle). Duplicates (tiny extents) are removed."""
    if k < 1:
        raise InputError(f"k must be >= 1, got {k}")
    if last < first:
        raise InputError(f"extent ({first}, {last}) is empty")
    if k == 1:
        return [(first + last) // 2]
    return sorted({int(round(first + i * (last - first) / (k - 1))) for i in range(k)})


def symmetric_slices(lo: int, hi: int, offsets: Sequence[float]) -> list[int]:
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
    return symmetric_slices(first, last, [(last - first) * (j + 0.5) / k for j in range(k)])


def chebyshev_slices(lo: int, hi: int, n: int) -> list[int]:
    """``n`` Chebyshev-Lobatto points over ``[lo, hi]`` (ends included), rounded:
    ``lo + (hi - lo)(1 - cos(pi i / (n - 1))) / 2``, denser near both ends."""
    if n == 1:
        return [(lo + hi) // 2]
    return symmetric_slices(lo, hi, [(hi - lo) * (1.0 - math.cos(math.pi * i / (n - 1))) / 2.0 for i in range(n)])


def distance_to_annotated(size: int, annotated: Sequence[int], device=None) -> torch.Tensor:
    """``[size]`` float32 distance of every slice to the nearest annotated slice
    (``size`` where nothing is annotated)."""
    z = torch.arange(size, device=device, dtype=torch.float32)
    if len(annotated) == 0:
        return torch.full((size,), float(size), device=device)
    a = torch.tensor(sorted(annotated), device=device, dtype=torch.float32)
    return (z[:, None] - a[None, :]).abs().min(1).values
