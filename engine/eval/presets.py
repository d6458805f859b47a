"""Stream-experiment presets: the protocol's parameters in one place (DESIGN §3).

A :class:`StreamConfig` fixes everything that determines a stream experiment's
numbers: the data and its split, rounds and slices per round, learning steps, the
held-out schedule, the segmenter and engine settings, seeds. The method list and
the device are *not* part of it: several processes may run different methods into
one output folder one after the other, and a resumed run must match the stored
config field for field (:func:`StreamConfig.identity`).

Presets (``dilseg run --preset NAME``):

``demo``   what ``make demo`` runs, sized to finish in a few minutes on a 2-core CPU:
           the shared left-atrium data when found (16 stream cases, 4 held-out), else
           a generated phantom stream; 2 rounds (3 + 2 slices), 20 steps per round,
           methods ``ours``, ``ours@cells`` (the product's default proposals),
           ``proxy_even``, ``online_full`` (10 cases of 12 steps were too few: the
           held-out Dice swung by 0.15 between code versions).
``paper``  the experiment of issue 7 on the left-atrium data: cases la_000-la_079 in
           order form the stream, la_080-la_099 the held-out split; R = 2 rounds of
           k = 3 slices; all methods.
``tiny``   (hidden) a few small phantom cases and a tiny model, for tests.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional

from ..errors import InputError

__all__ = ["StreamConfig", "PRESETS", "preset", "ALL_METHODS", "CORE_METHODS"]

#: Every method the harness knows by name (``engine.eval.stream`` defines them).
ALL_METHODS = (
    "ours",
    "ours_even",
    "ours_random",
    "ours_noreplay",
    "ours_smooth",
    "proxy_guided",
    "proxy_even",
    "online_full",
    "offline_full",
    "ours_warm",
)
#: The methods the three claims of issue 7 need.
CORE_METHODS = ("ours", "ours_even", "proxy_even", "proxy_guided", "online_full", "offline_full")


@dataclass
class StreamConfig:
    """Parameters of one stream experiment (module docstring).

    Data:
        data: ``"auto"`` (the shared LA data when found, else phantoms), ``"la"``
            (the shared LA data, an error when missing), ``"phantom"``, or a folder
            path (:class:`engine.io.CaseFolder` naming rules).
        n_train / n_test: stream cases (the first ``n_train`` case names, sorted)
            and held-out cases (the last ``n_test`` names). For phantoms: streams
            of seeds ``seed`` and ``seed + 1``.
        axis: annotation axis; ``None``: the source's (LA: 2, phantoms: 0), else 0.
        variant: a derived variant of every case, made in code
            (:func:`engine.io.variants.apply_variant`): ``"none"``, or ``"thick:N"``
            (N slices averaged into one along the annotation axis; ``"thick:4"`` turns
            the 1.25 mm LA data into 5 mm slices).
        phantom_shape: phantom volume shape with the annotation axis first.
    Protocol:
        rounds: R rounds per case; ``k``: slices drawn per round (an int, or one
            int per round).
        steps: learning steps per round (full-label methods take ``rounds * steps``
            per case: the same budget).
        eval_every: held-out Dice after every ``eval_every`` stream cases (and at
            the end).
        guided_rule: rule of ``ours`` after round 1 (``engine.guide.RULES``).
        accept_dice: if set, ``*_accept`` methods stop a case after round 1 when the
            model's prediction before the case agrees with the round-1 drawings at
            this mean slice Dice (a person accepting the proposal).
        jitter: simulated annotator outline jitter in pixels.
        predict_before: ask the model for the case before drawing (the ``before``
            column; the session then steers round 1's learning by it); False: a
            viewer that never asks (round 1 learns without a sliding window).
    Baselines:
        offline_steps: total steps of ``offline_full`` (full labels, patches from all
            stream cases at random); 0: ``2 * n_train * rounds * steps``.
        offline_eval_every: offline held-out evaluation / checkpoint interval in steps
            (0: ``eval_every * rounds * steps``).
        warm_cases: M, the stream cases ``*_warm`` methods are pretrained on with full
            labels (offline, ``warm_steps`` steps; 0: ``2 * M * rounds * steps``)
            before the stream continues on the rest.
    Engine:
        learn: :class:`engine.learn.LearnConfig` overrides (plain values).
        engine: :class:`engine.Config` overrides other than ``learn``, ``device``,
            ``steps``, ``seed`` (e.g. ``{"registration": "elastix"}``).
        seed: engine / trainer / annotator seed; every method starts from the same
            initial weights.
    """

    name: str = "custom"
    data: str = "auto"
    n_train: int = 10
    n_test: int = 4
    axis: Optional[int] = None
    variant: str = "none"
    phantom_shape: tuple[int, int, int] = (40, 72, 64)
    rounds: int = 2
    k: Any = 3
    steps: int = 20
    eval_every: int = 5
    guided_rule: str = "residual"
    accept_dice: Optional[float] = None
    jitter: int = 0
    predict_before: bool = True
    offline_steps: int = 0
    offline_eval_every: int = 0
    warm_cases: int = 0
    warm_steps: int = 0
    learn: dict = field(default_factory=dict)
    engine: dict = field(default_factory=dict)
    seed: int = 0
    methods: tuple[str, ...] = ("ours", "proxy_even", "online_full")

    # ----------------------------------------------------------------- derived
    def round_sizes(self) -> list[int]:
        """Slices per round, one int per round."""
        if isinstance(self.k, (list, tuple)):
            ks = [int(v) for v in self.k]
            if len(ks) != self.rounds:
                raise InputError(f"k lists {len(ks)} rounds, rounds={self.rounds}")
        else:
            ks = [int(self.k)] * self.rounds
        return ks

    def offline_total(self) -> int:
        return self.offline_steps or 2 * self.n_train * self.rounds * self.steps

    def offline_chunk(self) -> int:
        return self.offline_eval_every or max(1, self.eval_every * self.rounds * self.steps)

    def warm_total(self) -> int:
        return self.warm_steps or 2 * self.warm_cases * self.rounds * self.steps

    def validate(self) -> None:
        from ..guide import RULES

        if self.rounds < 1:
            raise InputError(f"rounds must be >= 1, got {self.rounds}")
        if any(v < 1 for v in self.round_sizes()):
            raise InputError(f"k must be >= 1 slice per round, got {self.k!r}")
        for name in ("n_train", "n_test", "eval_every"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("steps", "offline_steps", "offline_eval_every", "warm_cases", "warm_steps", "jitter", "seed"):
            if int(getattr(self, name)) < 0:
                raise InputError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.warm_cases >= self.n_train:
            raise InputError(f"warm_cases={self.warm_cases} leaves no stream case of n_train={self.n_train}")
        if self.guided_rule not in RULES:
            raise InputError(f"guided_rule must be one of {RULES}, got {self.guided_rule!r}")
        if self.axis not in (None, 0, 1, 2):
            raise InputError(f"axis must be 0, 1, 2 or None, got {self.axis!r}")
        from ..io.variants import parse_variant

        parse_variant(self.variant)
        if self.accept_dice is not None and not 0.0 < float(self.accept_dice) <= 1.0:
            raise InputError(f"accept_dice must be in (0, 1], got {self.accept_dice!r}")

    # ----------------------------------------------------------------- identity
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["phantom_shape"] = list(self.phantom_shape)
        d["methods"] = list(self.methods)
        if isinstance(self.k, tuple):
            d["k"] = list(self.k)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StreamConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise InputError(f"unknown StreamConfig fields: {sorted(unknown)}")
        d = dict(d)
        if "phantom_shape" in d:
            d["phantom_shape"] = tuple(d["phantom_shape"])
        if "methods" in d:
            d["methods"] = tuple(d["methods"])
        return cls(**d)

    def identity(self) -> dict[str, Any]:
        """The fields that determine the numbers (everything but name and methods)."""
        d = self.to_dict()
        d.pop("methods")
        d.pop("name")
        if d.get("variant") == "none":  # fields added later keep the digests of older runs
            d.pop("variant")
        return d

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]


# A small, quick segmenter for tests: patches of 8x16x16, width 4, depth 2, fp32.
_TINY_LEARN = {
    "patch": [8, 16, 16],
    "base_width": 4,
    "depth": 2,
    "batch_size": 2,
    "precision": "fp32",
    "channels_last": False,
    "sw_batch": 8,
}

PRESETS: dict[str, StreamConfig] = {
    "tiny": StreamConfig(
        name="tiny",
        data="phantom",
        n_train=4,
        n_test=2,
        phantom_shape=(16, 24, 24),
        rounds=2,
        k=2,
        steps=2,
        eval_every=2,
        offline_steps=8,
        offline_eval_every=4,
        warm_cases=1,
        warm_steps=4,
        learn=dict(_TINY_LEARN),
        engine={"replay_capacity": 16, "replay_patches_per_case": 4},
        methods=("ours", "proxy_even", "online_full"),
    ),
    "demo": StreamConfig(
        name="demo",
        data="auto",
        n_train=16,
        n_test=4,
        rounds=2,
        k=(3, 2),
        steps=20,
        eval_every=4,
        learn={"patch_voxels": 24 * 48 * 48},  # the CPU time budget of a patch; the plan spends it
        methods=("ours", "ours@cells", "proxy_even", "online_full"),
    ),
    "paper": StreamConfig(
        name="paper",
        data="la",
        n_train=80,
        n_test=20,
        rounds=2,
        k=3,
        steps=20,
        eval_every=10,
        offline_steps=9600,
        offline_eval_every=1600,
        warm_cases=10,
        warm_steps=1600,
        methods=ALL_METHODS,
    ),
}


def preset(name: str) -> StreamConfig:
    """A fresh copy of the named preset."""
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; choose one of {sorted(k for k in PRESETS if k != 'tiny')}")
    return copy.deepcopy(PRESETS[name])
