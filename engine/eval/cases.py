"""One stream case of each kind of method, with a simulated person (DESIGN §3).

For a *sparse-label* method (``ours*``; ``proxy*`` without learning):

0. the back-end prediction before any interaction, its Dice against the truth
   (**dynamic evaluation**, ``before``);
1. rounds ``r = 1..R`` of ``k`` slices: propose (or take the planned set), the
   simulated person draws them, propagate (proxy mask ``Q``), learn ``steps`` steps,
   predict; logged per round: proxy Dice (``Q >= 0.5``), model Dice (``P >= 0.5``),
   fused Dice (the session's result ``F = Q + lam (1-C) (P - Q)`` inside the extent,
   ``lam`` fitted by the engine's evidence gate, logged as ``fusion_weight``), effort
   (slices drawn / slices holding the object; ground-truth boundary pixels on the
   drawn slices / of the whole truth, the *labor* measure, :mod:`engine.eval.metrics`)
   and wall time;
2. commit (the case enters the replay buffer).

Everything goes through the public session API (``Engine.open``, ``Session.*``,
``Engine.learn_labelled``, ``Engine.predict``).
"""

from __future__ import annotations

import time
from typing import Any, Optional

import numpy as np

from ..errors import DataError
from .annotator import SimulatedAnnotator
from .console import bar
from .methods import MethodSpec
from .metrics import as_mask, dice
from .presets import StreamConfig

__all__ = ["sparse_case", "baseline_case", "full_case", "heldout", "slice_errors"]


def sparse_case(eng, spec: MethodSpec, cfg: StreamConfig, case, axis: int, index: int) -> dict:
    """One case of a sparse-label method (``ours*``) or a proxy method."""
    from ..guide import REGISTRY, plan_slices

    label = as_mask(case.label, "label")
    person = SimulatedAnnotator(label, axis=axis, jitter=cfg.jitter, seed=cfg.seed)
    lo, hi = person.extent()
    sizes = cfg.round_sizes()
    learn = spec.kind == "sparse"
    rec: dict[str, Any] = {"index": index, "name": case.name, "extent": [lo, hi]}
    spent = 0.0
    t0 = time.perf_counter()
    s = eng.open(case.image, spacing=case.spacing, axis=axis)
    s.set_extent(lo, hi)
    p0 = None
    if learn and cfg.predict_before:
        p0 = s.predict()
        rec["before"] = float(dice(p0 >= 0.5, label))
    else:
        rec["before"] = None
    spent += time.perf_counter() - t0
    planned = plan_slices(spec.plan, lo, hi, sizes) if spec.plan is not None else None
    rounds = []
    for r, k in enumerate(sizes):
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        if planned is not None:
            picks = [z for z in planned[r] if z not in set(s.annotated.get(axis, []))]
        else:  # round 1: the rule's opening (even spacing while there is no model), then the rule
            rule = REGISTRY[spec.rule].opening if r == 0 else spec.rule
            picks, t = s.propose(k, rule=rule, return_timings=True)
            timings["propose"] = t["total"]
        drawn = []
        for z in picks:
            m = person.draw(int(z))
            drawn.append(m)
            s.annotate(int(z), m)
        accepted = False
        if spec.accept and r == 0 and p0 is not None and picks:
            pz = np.moveaxis(np.take(p0 >= 0.5, picks, axis=axis), axis, 0)
            agree = [dice(pz[i], drawn[i]) for i in range(len(picks))]
            accepted = float(np.mean(agree)) >= float(cfg.accept_dice)
            rec["agreement"] = float(np.mean(agree))
        if not s.annotated.get(axis):
            raise DataError(f"case {case.name}: no slice could be drawn")
        (q, c), t = s.propagate(return_timings=True)
        timings["propagate"] = t["total"]
        if learn:
            t = s.learn(cfg.steps, return_timings=True)
            timings["learn"] = t["total"]
            p, t = s.predict(return_timings=True)
            timings["predict"] = t["total"]
            f, t = s.result(return_timings=True)
            timings["result"] = t["total"]
        seconds = time.perf_counter() - t0
        spent += seconds
        proxy = float(dice(q >= 0.5, label))
        eff = person.effort()
        row = {
            "round": r + 1,
            "slices": [int(z) for z in picks],
            "proxy": proxy,
            "model": float(dice(p >= 0.5, label)) if learn else None,
            "fused": float(dice(f, label)) if learn else proxy,
            "fusion_weight": s.fusion_weight if learn else None,
            "n_drawn": eff.n_drawn,
            "effort_slices": eff.slices,
            "effort_labor": eff.labor,
            "seconds": seconds,
            "timings_ms": timings,
        }
        rounds.append(row)
        if accepted:
            rec["accepted_after"] = r + 1
            break
    t0 = time.perf_counter()
    if learn:
        s.commit()
    else:
        s.close()
    spent += time.perf_counter() - t0
    last = rounds[-1]
    eff = person.effort()
    rec["slice_errors"] = slice_errors(label, axis, lo, hi, q >= 0.5, f if learn else None)
    rec.update(
        {
            "rounds": rounds,
            "proxy": last["proxy"],
            "model": last["model"],
            "fused": last["fused"],
            "n_drawn": eff.n_drawn,
            "object_slices": eff.n_object_slices,
            "effort_slices": eff.slices,
            "effort_labor": eff.labor,
            "seconds": spent,
        }
    )
    return rec


def slice_errors(
    label: np.ndarray, axis: int, lo: int, hi: int, proxy: np.ndarray, fused: Optional[np.ndarray]
) -> dict[str, list[int]]:
    """Per-slice error voxels (``|mask XOR truth|``) over the extent ``lo..hi`` of the
    final proxy and fused masks, and the truth's area: where a result is wrong."""

    def per_slice(m):
        x = np.moveaxis(np.logical_xor(m, label), axis, 0)[lo : hi + 1]
        return [int(v) for v in x.reshape(x.shape[0], -1).sum(1)]

    area = np.moveaxis(label, axis, 0)[lo : hi + 1]
    out = {"area": [int(v) for v in area.reshape(area.shape[0], -1).sum(1)], "proxy": per_slice(proxy)}
    if fused is not None:
        out["fused"] = per_slice(fused.astype(bool))
    return out


def baseline_case(spec: MethodSpec, cfg: StreamConfig, case, axis: int, index: int) -> dict:
    """One case of a registration-free proxy baseline (no learning)."""
    from ..guide import plan_slices
    from ..propagate.baselines import BASELINES

    fn = BASELINES[spec.rule]
    label = as_mask(case.label, "label")
    person = SimulatedAnnotator(label, axis=axis, jitter=cfg.jitter, seed=cfg.seed)
    lo, hi = person.extent()
    planned = plan_slices(spec.plan, lo, hi, cfg.round_sizes())
    drawn_vol = np.zeros(label.shape, np.uint8)
    moved = np.moveaxis(drawn_vol, axis, 0)  # a view: writes land in drawn_vol
    annotated: list[int] = []
    rounds, spent = [], 0.0
    for r, picks in enumerate(planned):
        t0 = time.perf_counter()
        for z in picks:
            moved[z] = person.draw(int(z))
        annotated = sorted(set(annotated) | set(int(z) for z in picks))
        q = fn(drawn_vol, annotated, axis=axis, extent=(lo, hi))
        seconds = time.perf_counter() - t0
        spent += seconds
        proxy = float(dice(q >= 0.5, label))
        eff = person.effort()
        rounds.append(
            {
                "round": r + 1,
                "slices": [int(z) for z in picks],
                "proxy": proxy,
                "model": None,
                "fused": proxy,
                "n_drawn": eff.n_drawn,
                "effort_slices": eff.slices,
                "effort_labor": eff.labor,
                "seconds": seconds,
                "timings_ms": {"proxy": seconds * 1e3},
            }
        )
    eff = person.effort()
    return {
        "index": index,
        "name": case.name,
        "extent": [lo, hi],
        "before": None,
        "rounds": rounds,
        "proxy": rounds[-1]["proxy"],
        "model": None,
        "fused": rounds[-1]["fused"],
        "n_drawn": eff.n_drawn,
        "object_slices": eff.n_object_slices,
        "effort_slices": eff.slices,
        "effort_labor": eff.labor,
        "seconds": spent,
    }


def full_case(eng, cfg: StreamConfig, case, axis: int, index: int) -> dict:
    """One case of online learning with full labels (``R * steps`` steps, then commit)."""
    label = as_mask(case.label, "label")
    t0 = time.perf_counter()
    p0 = eng.predict(case.image, axis=axis, spacing=case.spacing)
    before = float(dice(p0 >= 0.5, label))
    eng.learn_labelled(
        case.image, label.astype(np.float32), cfg.rounds * cfg.steps, axis=axis, prior=p0, spacing=case.spacing
    )
    seconds = time.perf_counter() - t0
    person = SimulatedAnnotator(label, axis=axis, seed=cfg.seed)
    eff = person.effort()
    n_obj = eff.n_object_slices
    return {
        "index": index,
        "name": case.name,
        "before": before,
        "proxy": None,
        "model": None,
        "fused": 1.0,
        "n_drawn": n_obj,
        "object_slices": n_obj,
        "effort_slices": 1.0,
        "effort_labor": 1.0,
        "seconds": seconds,
        "rounds": [],
    }


def heldout(eng, data, progress: bool) -> list[float]:
    """Dice of the segmenter alone on every held-out case."""
    out = []
    tests = data.test_cases()
    for c in bar(tests, progress and len(tests) > 4, desc="held-out", leave=False):
        p = eng.predict(c.image, axis=data.axis, spacing=c.spacing)
        out.append(float(dice(p >= 0.5, c.label)))
    return out
