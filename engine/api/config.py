"""``Config``: everything an :class:`~engine.Engine` needs, validated in one place."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch

from .. import errors as E
from ..learn import LearnConfig

__all__ = ["Config", "resolve_device", "RUNTIME_FIELDS"]

#: Config fields an engine may change while it runs (:meth:`Engine.reconfigure`);
#: the others fix the model, the replay buffer or the device.
RUNTIME_FIELDS = (
    "registration",
    "fusion",
    "fusion_gate",
    "fusion_window",
    "min_mass",
    "proposal",
    "min_gap",
    "residual_weighting",
    "steps",
    "smoothing",
    "smoothing_eps",
    "replay_ratio",
    "replay_patches_per_case",
)


@dataclass
class Config:
    """Everything an :class:`Engine` needs; every field has a measured default.

    device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
    learn: the segmenter / trainer hyper-parameters (:class:`engine.learn.LearnConfig`).
    registration: proxy-mask registration backend, a name of
        :data:`engine.propagate.BACKENDS` (``"native"`` or ``"elastix"``).
    fusion: contributor fusion between annotated slices, ``"linear"`` or ``"nearest"``.
    fusion_gate: how much of the model enters the front-end result,
        ``F = Q + lam (1 - C) (P - Q)``. ``"evidence"`` (default) fits ``lam`` from
        :data:`~engine.api.fusion.FUSION_WEIGHTS` to the slices people drew *after* a
        proxy and a prediction of that slice existed (the last ``fusion_window`` such
        slices, committed cases and the open session): ``lam`` is the weight with the
        fewest wrong pixels there, 0 until there is any evidence. ``"none"``: the
        paper's fixed ``F = C Q + (1 - C) P`` (``lam = 1``). On the left-atrium demo
        stream an under-trained model pulled the fixed fusion below the proxy (0.865
        vs 0.917).
    fusion_window: evidence slices the gate looks back over.
    min_mass: a propagated mask stops when its mass falls under this share of its source.
    proposal: slice-proposal rule, a name of :data:`engine.guide.RULES`. Default
        ``"cells"``: on the left-atrium stream it beat evenly spaced slices at equal
        count (+0.006 fused Dice with learning, +0.007 without), while the paper's
        residual-guided rule (``"residual"``) lost to them (-0.006); see
        benchmarks/RESULTS.md.
    min_gap: proposals keep at least this many slices from drawn / chosen ones.
    residual_weighting: weight the residual map by ``1 - C`` (far from drawn slices).
    steps: default learning steps per :meth:`Session.learn`.
    smoothing: ``"none"`` (``T = Q``) or ``"self"`` (the paper's ``T = C Q + (1-C) P0``,
        applied only inside the extent).
    smoothing_eps: classic label smoothing inside the extent.
    replay_capacity: patches the device-resident replay buffer holds.
    replay_policy: ``"reservoir"`` or ``"fifo"``.
    replay_ratio: share of replay patches in each training batch.
    replay_patches_per_case: patches a committed case adds to the buffer.
    seed: seeds the engine's random draws.
    """

    device: str = "auto"
    learn: LearnConfig = field(default_factory=LearnConfig)
    registration: str = "native"
    fusion: str = "linear"
    fusion_gate: str = "evidence"
    fusion_window: int = 24
    min_mass: float = 0.02
    proposal: str = "cells"
    min_gap: int = 1
    residual_weighting: bool = True
    steps: int = 20
    smoothing: str = "none"
    smoothing_eps: float = 0.0
    replay_capacity: int = 512
    replay_policy: str = "reservoir"
    replay_ratio: float = 0.5
    replay_patches_per_case: int = 16
    seed: int = 0

    def validate(self) -> None:
        """Raise :class:`~engine.errors.InputError` naming the first bad field."""
        from ..guide import RULES
        from ..propagate import BACKENDS, FUSIONS

        if not isinstance(self.learn, LearnConfig):
            raise E.InputError(f"Config.learn must be an engine.learn.LearnConfig, got {type(self.learn).__name__}")
        self.learn.validate()
        choices = {
            "registration": tuple(BACKENDS),
            "fusion": FUSIONS,
            "fusion_gate": ("evidence", "none"),
            "proposal": tuple(RULES),
            "smoothing": ("none", "self"),
            "replay_policy": ("reservoir", "fifo"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise E.InputError(f"Config.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name, lo in (
            ("min_gap", 0),
            ("steps", 0),
            ("fusion_window", 1),
            ("replay_capacity", 1),
            ("replay_patches_per_case", 1),
            ("seed", 0),
        ):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise E.InputError(f"Config.{name} must be an int >= {lo}, got {v!r}")
        for name in ("min_mass", "replay_ratio", "smoothing_eps"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
                raise E.InputError(f"Config.{name} must be in [0, 1], got {v!r}")

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "learn"}
        d["learn"] = self.learn.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        d = dict(d)
        learn = LearnConfig.from_dict(d.pop("learn", {}))
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise E.InputError(f"unknown Config fields: {sorted(unknown)}")
        return cls(learn=learn, **d)


def resolve_device(name: str) -> torch.device:
    """The torch device a ``Config.device`` name means (``"auto"``: CUDA when present)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise E.InputError(f"device {name!r} is not a device name") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise E.BackendError(f"device {name!r} requested but torch sees no CUDA device")
    return dev
