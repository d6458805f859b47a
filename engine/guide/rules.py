"""Slice-proposal rules behind one registry (DESIGN §2 step 5).

A :class:`Rule` picks the next ``k`` slices on the annotation axis from a
:class:`ProposalContext`: the axis size, the drawn slices, the object's extent, the
minimum gap, a generator, and — computed only when a rule asks — the per-slice
residual scores ``S(z) = sum_{y,x} w |Q - P|`` (model-guided rules) and the two
propagation contributors of the current proxy. Every rule the product and the
evaluation harness use is registered in :data:`REGISTRY`; :data:`RULES` names the
product's rules (``Config.proposal``), :data:`EXPERIMENTAL` the harness's candidates.

Product rules:

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
                  even spacing on the left-atrium stream. On an extent of at most
                  ``DENSE_SLICES_PER_PICK`` (4) slices per proposed slice (thick slices:
                  a handful of them hold the object) it is ``even`` then ``gap``, ends
                  included: there an end slice is a slab of the object, not a sliver, and
                  propagating into it from the next drawn slice lost (LA at 5 mm slices:
                  proxy 0.924 with cell centres against 0.933 evenly with the ends).

Model-guided rules (``needs_model``) fall back by themselves while no trained model
or no drawing exists: to ``even`` with nothing drawn on the annotation axis, else to
``gap``. Experimental rules: ``"disagree"`` (slices where the two propagation
contributors disagree most) and ``"ends"`` (split the outermost gaps first).

All rules return sorted or ranked plain Python ints (the caller reads the ``k``
indices: the only host synchronisation of a proposal). Adding a rule
(docs/contributing.md): a function ``choose(ctx, k) -> list[int]`` and
``register_rule(Rule("name", choose, needs_model=...))``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch

from ..errors import InputError, SliceIndexError
from .geometry import cell_centres, distance_to_annotated, even_slices

__all__ = [
    "Rule",
    "ProposalContext",
    "REGISTRY",
    "RULES",
    "EXPERIMENTAL",
    "register_rule",
    "propose",
    "residual_scores",
]


@dataclass
class ProposalContext:
    """What a rule may look at. ``annotated``: drawn slices on the annotation axis
    (sorted, unique); ``extent``: ``(first, last)``, the whole axis when None;
    ``model_ready``: a trained model and some drawing exist; ``scores()`` /
    ``contributors()``: computed on demand by the caller (None: not available)."""

    size: int
    annotated: list[int] = field(default_factory=list)
    extent: Optional[tuple[int, int]] = None
    min_gap: int = 1
    generator: Optional[torch.Generator] = None
    model_ready: bool = False
    scores: Optional[Callable[[], torch.Tensor]] = None
    contributors: Optional[Callable[[], Any]] = None

    @property
    def span(self) -> tuple[int, int]:
        return self.extent if self.extent is not None else (0, self.size - 1)


@dataclass(frozen=True)
class Rule:
    """A named proposal rule. ``opening``: the rule a case's first round uses under the
    harness protocol (DESIGN §2: evenly spaced slices while there is no model)."""

    name: str
    choose: Callable[[ProposalContext, int], list[int]]
    needs_model: bool = False
    experimental: bool = False
    opening: str = "even"


#: Every registered rule by name.
REGISTRY: dict[str, Rule] = {}


def register_rule(rule: Rule) -> Rule:
    REGISTRY[rule.name] = rule
    return rule


def residual_scores(q: torch.Tensor, p: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-slice sums ``S(z) = sum_{y,x} w * |q - p|`` of volumes ``[D,H,W]``.

    ``weight`` is None, a per-slice ``[D]`` vector or a full ``[D,H,W]`` volume.
    Returns ``[D]`` float32 on the inputs' device.
    """
    from ..ops import slice_residuals

    return slice_residuals(q, p, weight)[0]


# --- geometry rules ---------------------------------------------------------------------------


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


def _even(ctx: ProposalContext, k: int) -> list[int]:
    lo, hi = ctx.span
    ann = ctx.annotated
    out = [z for z in even_slices(lo, hi, k) if z not in ann][:k]
    if len(out) < k:  # drawn slices took some even positions: fill the largest gaps
        out = sorted(set(out) | set(_gap_choice(ctx.size, sorted(set(ann) | set(out)), (lo, hi), k - len(out), 0)))
    return out


def _gap(ctx: ProposalContext, k: int) -> list[int]:
    lo, hi = ctx.span
    out = _gap_choice(ctx.size, ctx.annotated, (lo, hi), k, ctx.min_gap)
    if len(out) < k and ctx.min_gap > 0:  # the gap is a preference: relax it before giving up slices
        more = _gap_choice(ctx.size, sorted(set(ctx.annotated) | set(out)), (lo, hi), k - len(out), 0)
        out = sorted(set(out) | set(more))
    return out


#: ``cells`` on an extent of at most this many slices per proposed slice behaves like
#: ``even`` then ``gap`` (ends included): see the rule's description.
DENSE_SLICES_PER_PICK = 4


def _cells(ctx: ProposalContext, k: int) -> list[int]:
    lo, hi = ctx.span
    inside = [a for a in ctx.annotated if lo <= a <= hi]
    if hi - lo + 1 <= DENSE_SLICES_PER_PICK * k:  # few, thick slices: the ends hold real tissue
        return _gap(ctx, k) if inside else _even(ctx, k)
    taken = set(ctx.annotated)
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
        for gap in (ctx.min_gap, 0) if ctx.min_gap > 0 else (0,):
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


def _random(ctx: ProposalContext, k: int) -> list[int]:
    lo, hi = ctx.span
    pool = torch.tensor([z for z in range(lo, hi + 1) if z not in ctx.annotated], dtype=torch.long)
    if len(pool) == 0:
        return []
    perm = torch.randperm(len(pool), generator=ctx.generator)[:k]
    return sorted(int(z) for z in pool[perm])


def _ends(ctx: ProposalContext, k: int) -> list[int]:
    """Split the two outermost gaps first (between each end of the extent's drawn
    slices and its nearest drawn neighbour), then the largest gap."""
    lo, hi = ctx.span
    inner = [z for z in ctx.annotated if lo <= z <= hi]
    picks: list[int] = []
    taken = set(ctx.annotated)
    if len(inner) >= 2:
        for a, b in ((inner[0], inner[1]), (inner[-2], inner[-1])):
            z = (a + b) // 2
            if z not in taken and len(picks) < k:
                picks.append(z)
                taken.add(z)
    if len(picks) < k:
        rest = ProposalContext(ctx.size, sorted(taken), ctx.extent, ctx.min_gap, ctx.generator)
        picks += _gap(rest, k - len(picks))
    return sorted(picks)


# --- score rules ------------------------------------------------------------------------------


def _select_by_score(ctx: ProposalContext, k: int, s: torch.Tensor) -> list[int]:
    from ..ops import select_slices

    lo, hi = ctx.span
    size = ctx.size
    annotated_mask = torch.zeros(size, dtype=torch.bool, device=s.device)
    if ctx.annotated:
        annotated_mask[torch.tensor(ctx.annotated, device=s.device)] = True
    valid = torch.zeros(size, dtype=torch.bool, device=s.device)
    valid[lo : hi + 1] = True
    idx = select_slices(s, annotated_mask, k, ctx.min_gap, valid)
    out = [int(z) for z in idx.tolist() if z >= 0]
    if len(out) < k and ctx.min_gap > 0:
        # min_gap is a preference: when it leaves fewer than k candidates in the extent,
        # fill up with the best remaining slices rather than proposing fewer
        taken = annotated_mask.clone()
        if out:
            taken[torch.tensor(out, device=s.device)] = True
        more = select_slices(s, taken, k - len(out), 0, valid)
        out += [int(z) for z in more.tolist() if z >= 0]
    return out


def _model_scores(ctx: ProposalContext) -> torch.Tensor:
    if ctx.scores is None:
        raise InputError("this rule needs residual scores (a trained model and a proxy mask)")
    s = ctx.scores()
    if s is None or tuple(s.shape) != (ctx.size,):
        raise InputError(f"scores must have shape ({ctx.size},), got {None if s is None else tuple(s.shape)}")
    return s.float()


def _model_fallback(ctx: ProposalContext, k: int) -> list[int]:
    return _even(ctx, k) if not ctx.annotated else _gap(ctx, k)


def _residual(ctx: ProposalContext, k: int) -> list[int]:
    if not ctx.model_ready:
        return _model_fallback(ctx, k)
    return _select_by_score(ctx, k, _model_scores(ctx))


def _residual_gap(ctx: ProposalContext, k: int) -> list[int]:
    if not ctx.model_ready:
        return _model_fallback(ctx, k)
    s = _model_scores(ctx)
    return _select_by_score(ctx, k, s * distance_to_annotated(ctx.size, ctx.annotated, device=s.device))


def _disagree(ctx: ProposalContext, k: int) -> list[int]:
    """Slices where the contributors pushed up from the drawn slice below and down from
    the one above disagree most, ``S(z) = sum |from_below - from_above|`` over slices
    that have both, greedy with the minimum gap."""
    if ctx.contributors is None:
        raise InputError("rule 'disagree' needs the propagation contributors (a proxy mask)")
    res = ctx.contributors()
    both = (res.dist_below >= 0) & (res.dist_above >= 0)
    s = (res.from_below - res.from_above).abs().sum((1, 2)) * both.to(torch.float32)
    return _select_by_score(ctx, k, s.cpu().float())


for _rule in (
    Rule("even", _even),
    Rule("residual", _residual, needs_model=True),
    Rule("gap", _gap),
    Rule("residual_gap", _residual_gap, needs_model=True),
    Rule("random", _random),
    Rule("cells", _cells, opening="cells"),
    Rule("disagree", _disagree, experimental=True),
    Rule("ends", _ends, experimental=True),
):
    register_rule(_rule)

#: The product's rules (what ``Config.proposal`` accepts).
RULES = tuple(n for n, r in REGISTRY.items() if not r.experimental)
#: The harness's experimental rules (``ours@NAME`` / ``proxy@NAME``).
EXPERIMENTAL = tuple(n for n, r in REGISTRY.items() if r.experimental)


def propose(
    rule: str,
    k: int,
    size: int,
    annotated: Sequence[int] = (),
    extent: Optional[tuple[int, int]] = None,
    scores: Optional[torch.Tensor] = None,
    min_gap: int = 1,
    generator: Optional[torch.Generator] = None,
    contributors: Any = None,
) -> list[int]:
    """The next ``k`` slices by ``rule`` (fewer when not enough candidates remain).

    ``annotated``: slices already drawn; never proposed again. ``extent``: the
    object's first and last slice (inclusive); proposals stay inside it (default:
    the whole axis). ``scores``: ``[size]`` residual scores for the model-guided
    rules (required for them here). ``min_gap``: a candidate within ``min_gap`` slices
    of an annotated or already chosen slice is skipped (``0``: only exact repeats are
    skipped). ``contributors``: a :class:`~engine.propagate.ProxyResult` for ``disagree``.
    """
    if rule not in REGISTRY:
        raise InputError(f"rule={rule!r}; expected one of {tuple(REGISTRY)}")
    if k < 1:
        raise InputError(f"k must be >= 1, got {k}")
    lo, hi = extent if extent is not None else (0, size - 1)
    if not (0 <= lo <= hi < size):
        raise SliceIndexError(f"extent ({lo}, {hi}) outside [0, {size - 1}]")
    for a in annotated:
        if not 0 <= a < size:
            raise SliceIndexError(f"annotated slice {a} outside [0, {size - 1}]")
    r = REGISTRY[rule]
    if r.needs_model and scores is None:
        raise InputError(f"rule {rule!r} needs residual scores")
    ctx = ProposalContext(
        size,
        sorted(set(int(a) for a in annotated)),
        (lo, hi),
        min_gap,
        generator,
        model_ready=scores is not None,
        scores=(lambda: scores) if scores is not None else None,
        contributors=(lambda: contributors) if contributors is not None else None,
    )
    return r.choose(ctx, int(k))
