"""The fusion gate: how much of the model enters the front-end result.

The front end shows ``F = Q + lam (1 - C) (P - Q)`` inside the extent (``Q`` the
proxy, ``C`` its confidence, ``P`` the prediction). ``lam`` is *fitted*, not fixed:
every slice a person draws after a proxy and a trained prediction of it existed is
evidence of what each ``lam`` of :data:`FUSION_WEIGHTS` would have shown there
(:func:`fusion_errors`: its wrong pixels); the gate takes the ``lam`` with the
fewest wrong pixels over the newest ``window`` evidence rows (:func:`fit_fusion_weight`).
The paper's fixed fusion ``F = C Q + (1 - C) P`` is ``lam = 1`` (``mode="none"``).

* :class:`FusionGate` (one per engine) holds the committed evidence rows, saved and
  restored with the engine.
* :class:`SessionEvidence` (one per session) keeps, for each newly drawn slice, what
  the front end would have shown on it, and turns it into rows against the slice's
  *current* drawing, so redraw / undo / erase are honoured.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

__all__ = ["FUSION_WEIGHTS", "FusionGate", "SessionEvidence", "fit_fusion_weight", "fusion_errors", "fuse"]

#: Model weights ``lam`` the evidence gate chooses from (``F = Q + lam (1 - C) (P - Q)``).
FUSION_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)

Key = tuple[int, int]  # (internal axis, slice index)


def fuse(q: torch.Tensor, c: torch.Tensor, p: torch.Tensor, lam: float) -> torch.Tensor:
    """``F = Q + lam (1 - C) (P - Q)`` (float32)."""
    return q + lam * (1.0 - c) * (p - q)


def fusion_errors(q: torch.Tensor, c: torch.Tensor, p: torch.Tensor, truth: torch.Tensor) -> list[int]:
    """Wrong pixels of ``F = Q + lam (1 - C) (P - Q) >= 0.5`` against ``truth`` for every
    ``lam`` of :data:`FUSION_WEIGHTS`, followed by the truth's area (one evidence row)."""
    t = truth.bool()
    q, c, p = q.float(), c.float(), p.float()
    d = (1.0 - c) * (p - q)
    counts = [((q + lam * d >= 0.5) != t).sum() for lam in FUSION_WEIGHTS] + [t.sum()]
    return [int(v) for v in torch.stack(counts).tolist()]  # one host sync


def fit_fusion_weight(evidence: Sequence[Sequence[int]]) -> float:
    """The ``lam`` of :data:`FUSION_WEIGHTS` with the fewest wrong pixels summed over the
    evidence rows (ties: the smaller ``lam``, i.e. trust the person's drawing); 0 without
    evidence."""
    if not evidence:
        return 0.0
    totals = [sum(int(r[i]) for r in evidence) for i in range(len(FUSION_WEIGHTS))]
    return FUSION_WEIGHTS[min(range(len(totals)), key=lambda i: (totals[i], i))]


class FusionGate:
    """The engine's committed evidence and the fit of ``lam`` (``mode``: ``"evidence"``
    or ``"none"``, the paper's fixed fusion)."""

    def __init__(self, mode: str, window: int) -> None:
        self.mode = mode
        self.window = window
        self._rows: list[list[int]] = []  # rows of fusion_errors, newest last

    @property
    def rows(self) -> list[list[int]]:
        """A copy of the committed evidence rows (newest last)."""
        return [list(r) for r in self._rows]

    def weight(self, extra: Sequence[Sequence[int]] = ()) -> float:
        """``lam`` from the committed rows plus ``extra`` rows of an open session."""
        if self.mode == "none":
            return 1.0
        rows = (self._rows + [list(r) for r in extra])[-self.window :]
        return fit_fusion_weight(rows)

    def commit(self, rows: Sequence[Sequence[int]]) -> None:
        self._rows = (self._rows + [list(r) for r in rows])[-self.window :]

    def restore(self, rows: Sequence[Sequence[int]]) -> None:
        self._rows = [[int(v) for v in r] for r in rows]


class SessionEvidence:
    """Evidence sources of one session: slices drawn after a proxy (not built from
    them) and a trained prediction of them existed -> ``(q, c, p)`` of that slice then."""

    def __init__(self) -> None:
        self._src: dict[Key, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def note(
        self,
        key: Key,
        proxy: Optional[tuple[torch.Tensor, torch.Tensor]],
        proxy_keys: frozenset,
        pred: Optional[torch.Tensor],
        pred_trained: bool,
        ever_drawn: bool,
        extent: Optional[tuple[int, int]],
    ) -> None:
        """Keep what the front end would have shown on slice ``key`` (drawn now), if it
        is a main-axis slice drawn for the first time inside the extent, a proxy not
        built from it exists, and so does a trained prediction."""
        ia, z = key
        if ia != 0 or ever_drawn or key in proxy_keys or proxy is None:
            return
        if pred is None or not pred_trained:
            return
        if extent is not None and not extent[0] <= z <= extent[1]:
            return
        q, c = proxy
        self._src[key] = (q[z].clone(), c[z].clone(), pred[z].clone())

    def rows(self, drawn: dict[Key, torch.Tensor]) -> list[list[int]]:
        """One :func:`fusion_errors` row per kept slice that is still drawn."""
        return [fusion_errors(q, c, p, drawn[key]) for key, (q, c, p) in sorted(self._src.items()) if key in drawn]
