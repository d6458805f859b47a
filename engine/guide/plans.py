"""Planned slice sets: a whole case's slices fixed in advance and split over rounds.

The evaluation harness's fixed schedules (``ours_even``, ``proxy_even``, ``ours@cheb``,
``ours@mid``, the ``*_even`` baselines) draw one planned set per case instead of
proposing round by round. :data:`PLANS` maps a name to its set over ``[lo, hi]``:

* ``even``: ``n`` slices evenly spaced over the extent, both ends included;
* ``cheb``: Chebyshev-Lobatto positions ``lo + (hi-lo)(1 - cos(pi i/(n-1)))/2``,
  denser near both ends;
* ``mid``: the centres of ``n`` equal cells of the extent, ``lo + (hi-lo)(j + 1/2)/n``
  (the end slices are not drawn: the extent already says where the object stops).

:func:`plan_slices` splits a set over the rounds: each round an evenly spread subset of
what is left, the last round the rest.
"""

from __future__ import annotations

from typing import Callable, Sequence

from ..errors import InputError
from .geometry import cell_centres, chebyshev_slices, even_slices

__all__ = ["PLANS", "plan_slices", "split_rounds"]

#: name -> ``(lo, hi, n) -> slices``
PLANS: dict[str, Callable[[int, int, int], list[int]]] = {
    "even": even_slices,
    "cheb": chebyshev_slices,
    "mid": cell_centres,
}


def split_rounds(planned: Sequence[int], sizes: Sequence[int]) -> list[list[int]]:
    """Split a planned set over rounds: each round an evenly spread subset of what is
    left (the last round takes the rest, up to its size)."""
    left = list(planned)
    out = []
    for r, k in enumerate(sizes):
        if not left:
            out.append([])
            continue
        if r == len(sizes) - 1 or k >= len(left):
            take = left[:k] if r < len(sizes) - 1 else left
        else:
            take = [left[j] for j in even_slices(0, len(left) - 1, k)]
        out.append(sorted(take))
        left = [z for z in left if z not in take]
    return out


def plan_slices(plan: str, lo: int, hi: int, sizes: Sequence[int]) -> list[list[int]]:
    """The slices of the planned set ``plan`` (a name of :data:`PLANS`) with
    ``sum(sizes)`` slices over ``[lo, hi]``, per round."""
    if plan not in PLANS:
        raise InputError(f"unknown plan {plan!r}; expected one of {tuple(PLANS)}")
    return split_rounds(PLANS[plan](lo, hi, int(sum(sizes))), sizes)
