"""The methods a stream experiment compares, by name (DESIGN §3's baselines).

==================  ==========================================================
``ours``            round 1: ``k`` slices evenly spaced over the object's extent
                    (cold start: DESIGN §2); later rounds model-guided
                    (``StreamConfig.guided_rule``, default ``residual``)
``ours_even``       the same, but every case's slices form one evenly spaced set
                    over the extent (both ends included, ``sum(k)`` slices); round
                    1 draws an evenly spread subset of it, later rounds the rest
``ours_random``     round 1 even, later rounds uniformly random slices
``ours_noreplay``   ``ours`` with replay off (replay share 0)
``ours_smooth``     ``ours`` with the paper's label smoothing with the model's
                    belief, ``T = C Q + (1-C) P0`` inside the extent
``proxy_guided``    no learning, each case alone; a model-free "guided" rule can
                    only use geometry: round 1 even, later rounds the ``gap`` rule
                    (middles of the largest unannotated gaps)
``proxy_even``      no learning; the evenly spaced set of ``ours_even``
``online_full``     online with full labels: each case once, ``R * steps`` steps,
                    replay as ``ours`` (effort 1 by definition)
``offline_full``    upper bound: ``offline_steps`` steps on patches drawn from all
                    stream cases at random with full labels (several epochs)
``<b>_even``        proxy-mask baselines without registration on the slices of
                    ``proxy_even``: ``nearest_copy_even``, ``signed_distance_even``,
                    ``morph_contour_even`` (:mod:`engine.propagate.baselines`)
==================  ==========================================================

Modifiers: a ``_warm`` suffix (sparse methods only) starts from a segmenter
pretrained offline on the first ``warm_cases`` stream cases with full labels (then
the stream continues on the rest); an ``_accept`` suffix stops a case after round 1
when the prediction before the case already agrees with the round-1 drawings (mean
slice Dice >= ``accept_dice``); a ``_fixed`` suffix uses the paper's fixed fusion
``F = C Q + (1-C) P`` (``Config.fusion_gate="none"``; the model's training is the
same, so ``ours`` vs ``ours_fixed`` isolates the gate). Suffixes combine in the order
``_accept``, ``_warm``, ``_fixed``. ``ours@NAME`` and ``proxy@NAME`` run a case's
first round with the rule's opening (even spacing; ``cells`` opens with its own) and
then rule ``NAME`` of :data:`engine.guide.REGISTRY` (the experimental ``disagree`` and
``ends`` included), or draw the planned set ``NAME`` of :data:`engine.guide.PLANS`
(``even``, ``cheb``: Chebyshev-Lobatto, denser at the object's ends; ``mid``: cell
centres, end slices not drawn).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from ..errors import InputError
from .presets import StreamConfig

__all__ = ["MethodSpec", "parse_method", "engine_config", "method_overrides"]


@dataclass(frozen=True)
class MethodSpec:
    """How one method runs (see the module docstring for the names).

    kind: ``"sparse"`` (drawn slices + learning), ``"proxy"`` (drawn slices, no
    learning), ``"baseline"`` (drawn slices, a registration-free proxy of
    :data:`engine.propagate.baselines.BASELINES` named by ``rule``), ``"full"``
    (online, full labels), ``"offline"`` (full labels, all cases at random).
    plan: None (round 1 the rule's opening, then ``rule``) or a name of
    :data:`engine.guide.PLANS` (one planned set per case, split over rounds).
    """

    name: str
    kind: str
    plan: Optional[str] = None
    rule: Optional[str] = None
    replay: bool = True
    smoothing: str = "none"
    warm: bool = False
    accept: bool = False
    gate: bool = True  # Config.fusion_gate "evidence"; False ("_fixed"): the paper's fixed fusion

    @property
    def learns(self) -> bool:
        return self.kind in ("sparse", "full", "offline")


def parse_method(name: str, cfg: StreamConfig) -> MethodSpec:
    """The :class:`MethodSpec` of a method name; InputError for an unknown one."""
    from ..guide import PLANS, REGISTRY
    from ..propagate.baselines import BASELINES

    base, warm, accept, gate = name, False, False, True
    if base.endswith("_fixed"):
        base, gate = base[: -len("_fixed")], False
    if base.endswith("_warm"):
        base, warm = base[: -len("_warm")], True
    if base.endswith("_accept"):
        base, accept = base[: -len("_accept")], True
    fixed = {
        "ours": dict(kind="sparse", rule=cfg.guided_rule),
        "ours_even": dict(kind="sparse", plan="even"),
        "ours_random": dict(kind="sparse", rule="random"),
        "ours_noreplay": dict(kind="sparse", rule=cfg.guided_rule, replay=False),
        "ours_smooth": dict(kind="sparse", rule=cfg.guided_rule, smoothing="self"),
        "proxy_guided": dict(kind="proxy", rule="gap"),
        "proxy_even": dict(kind="proxy", plan="even"),
        "online_full": dict(kind="full"),
        "offline_full": dict(kind="offline"),
    }
    for b in BASELINES:
        fixed[f"{b}_even"] = dict(kind="baseline", plan="even", rule=b)
    if base in fixed:
        kw = fixed[base]
    elif "@" in base and base.split("@", 1)[0] in ("ours", "proxy"):
        head, rule = base.split("@", 1)
        kind = "sparse" if head == "ours" else "proxy"
        if rule in PLANS:
            kw = dict(kind=kind, plan=rule)
        elif rule in REGISTRY:
            if kind == "proxy" and REGISTRY[rule].needs_model:
                raise InputError(f"method {name!r}: rule {rule!r} needs a model; proxy methods have none")
            kw = dict(kind=kind, rule=rule)
        else:
            raise InputError(
                f"method {name!r}: unknown rule {rule!r} (engine.guide.REGISTRY {tuple(REGISTRY)} "
                f"or a planned set of engine.guide.PLANS {tuple(PLANS)})"
            )
    else:
        raise InputError(
            f"unknown method {name!r}; known: {sorted(fixed)} and ours@RULE / proxy@RULE, "
            f"with optional _accept / _warm / _fixed suffixes"
        )
    if (warm or accept or not gate) and kw["kind"] != "sparse":
        raise InputError(f"method {name!r}: _warm, _accept and _fixed apply to sparse-label (ours*) methods only")
    if accept and cfg.accept_dice is None:
        raise InputError(f"method {name!r} needs StreamConfig.accept_dice")
    if warm and cfg.warm_cases < 1:
        raise InputError(f"method {name!r} needs StreamConfig.warm_cases >= 1")
    return MethodSpec(name=name, warm=warm, accept=accept, gate=gate, **kw)


def _learn_config(cfg: StreamConfig):
    from ..learn import LearnConfig

    d = LearnConfig().to_dict()
    d["seed"] = cfg.seed
    d.update(cfg.learn)
    return LearnConfig.from_dict(d)


def method_overrides(cfg: StreamConfig, spec: MethodSpec) -> dict[str, Any]:
    """The run-time Config fields a method sets (on a fresh or a reloaded engine)."""
    from ..guide import RULES

    out: dict[str, Any] = {"smoothing": spec.smoothing, "fusion_gate": "evidence" if spec.gate else "none"}
    if spec.rule in RULES:
        out["proposal"] = spec.rule
    out["replay_ratio"] = cfg.engine.get("replay_ratio", 0.5) if spec.replay else 0.0
    return out


def engine_config(cfg: StreamConfig, spec: MethodSpec, device: str):
    """The :class:`engine.Config` of a method."""
    from ..api import Config

    kw = dict(cfg.engine)
    kw.update(device=device, learn=_learn_config(cfg), steps=cfg.steps, seed=cfg.seed)
    kw.update(method_overrides(cfg, spec))
    return Config(**kw)
