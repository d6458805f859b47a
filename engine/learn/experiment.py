"""Learning-core experiment on the left-atrium data: online stream vs offline.

With full ground-truth labels (target = label, weight = 1), compare

* **online**: cases arrive one at a time; each gets ``steps_per_case`` training
  steps mixing current-case patches with replay patches, then ``patches_per_case``
  of its patches are committed to the replay buffer; held-out Dice after every
  ``eval_every`` cases;
* **offline**: the same number of steps on patches drawn from all training cases at
  random; held-out Dice every ``eval_every_steps`` steps.

Held-out Dice is sliding-window inference thresholded at 0.5, averaged over the
test cases. Volumes are read from ``la_XXX.npz`` (keys ``image``, ``label``; axis 2
is the annotation axis and is moved first, so volumes are ``(D, H, W)``).

Public API: ``load_la_cases``, ``dice``, ``evaluate``, ``run_online``,
``run_offline``, ``format_table``; ``benchmarks/learn_stream.py`` drives them.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import DataError, InputError
from .sampler import PatchSampler, random_flip
from .models import normalize_intensity
from .trainer import LearnConfig, Trainer

__all__ = [
    "Case",
    "CurvePoint",
    "default_data_dir",
    "load_la_cases",
    "dice",
    "evaluate",
    "run_online",
    "run_offline",
    "format_table",
]


@dataclass
class Case:
    """One volume: ``image`` float32 ``(D, H, W)`` and binary ``label`` float32."""

    name: str
    image: torch.Tensor
    label: torch.Tensor


@dataclass
class CurvePoint:
    """Held-out Dice after ``cases`` cases / ``steps`` steps (``seconds`` of training)."""

    cases: int
    steps: int
    dice: float
    per_case: list[float] = field(default_factory=list)
    seconds: float = 0.0


def default_data_dir() -> Path:
    """``$DILSEG_LA_DATA`` or ``<repo>/../shared/data/la_lgemri_2018_half``."""
    env = os.environ.get("DILSEG_LA_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "la_lgemri_2018_half"


def load_la_cases(ids: Sequence[int], root: str | os.PathLike | None = None, axis: int = 2) -> list[Case]:
    """Load ``la_{id:03d}.npz`` cases with the annotation ``axis`` moved first."""
    root = Path(root) if root is not None else default_data_dir()
    cases = []
    for i in ids:
        path = root / f"la_{int(i):03d}.npz"
        try:
            with np.load(path) as z:
                image, label = z["image"], z["label"]
        except (OSError, KeyError, ValueError) as exc:
            raise DataError(f"cannot read LA case {path}: {exc}") from exc
        image = np.ascontiguousarray(np.moveaxis(image.astype(np.float32), axis, 0))
        label = np.ascontiguousarray(np.moveaxis((label > 0).astype(np.float32), axis, 0))
        cases.append(Case(path.stem, torch.from_numpy(image), torch.from_numpy(label)))
    return cases


def dice(probs: torch.Tensor, label: torch.Tensor, threshold: float = 0.5) -> float:
    """Dice of ``probs > threshold`` against a binary ``label`` (1.0 if both empty)."""
    pred = probs > threshold
    truth = label > 0.5
    inter = (pred & truth).sum().item()
    total = pred.sum().item() + truth.sum().item()
    return 1.0 if total == 0 else 2.0 * inter / total


def evaluate(trainer: Trainer, cases: Sequence[Case]) -> list[float]:
    """Per-case sliding-window Dice of the trainer's model."""
    return [dice(trainer.predict(c.image.to(trainer.device)).cpu(), c.label) for c in cases]


def _check_schedule(steps: int, every: int, what: str) -> None:
    if steps < 1 or every < 1:
        raise InputError(f"{what}: steps and evaluation interval must be >= 1")


def run_online(
    config: LearnConfig,
    train: Sequence[Case],
    test: Sequence[Case],
    steps_per_case: int = 50,
    replay_capacity: int = 400,
    replay_ratio: float | None = None,
    patches_per_case: int = 20,
    policy: str = "reservoir",
    eval_every: int = 5,
    residual_sampling: bool = False,
    device: str = "cpu",
    log: Callable[[str], None] | None = None,
) -> list[CurvePoint]:
    """Online stream with replay; returns held-out Dice after every ``eval_every`` cases.

    ``replay_capacity = 0`` disables replay. With ``residual_sampling`` each case's
    patches are centred where ``|label - P|`` is large, ``P`` the prediction before
    training on it (the dynamic-evaluation prediction).
    """
    _check_schedule(steps_per_case, eval_every, "run_online")
    trainer = Trainer(config, device=device)
    replay = trainer.make_replay(replay_capacity, policy) if replay_capacity > 0 else None
    curve: list[CurvePoint] = []
    spent = 0.0
    for t, case in enumerate(train, start=1):
        image, label = case.image.to(trainer.device), case.label.to(trainer.device)
        weight = torch.ones_like(label)
        residual = (label - trainer.predict(image)).abs() if residual_sampling else None
        start = time.perf_counter()
        trainer.train_case(image, label, weight, steps_per_case, replay=replay, replay_ratio=replay_ratio, residual=residual)
        if replay is not None:
            replay.add_case(image, label, weight, patches_per_case, residual=residual)
        spent += time.perf_counter() - start
        if t % eval_every == 0 or t == len(train):
            scores = evaluate(trainer, test)
            curve.append(CurvePoint(t, trainer.steps_done, float(np.mean(scores)), scores, spent))
            if log:
                log(f"online  cases={t:3d} steps={trainer.steps_done:5d} dice={curve[-1].dice:.4f} train_s={spent:.1f}")
    return curve


def run_offline(
    config: LearnConfig,
    train: Sequence[Case],
    test: Sequence[Case],
    total_steps: int = 1000,
    eval_every: int = 250,
    device: str = "cpu",
    log: Callable[[str], None] | None = None,
) -> list[CurvePoint]:
    """Offline training on random patches of all ``train`` cases (each patch from a
    uniformly drawn case); returns held-out Dice every ``eval_every`` steps."""
    _check_schedule(total_steps, eval_every, "run_offline")
    trainer = Trainer(config, device=device)
    samplers = [
        PatchSampler(
            normalize_intensity(c.image.to(trainer.device), config.normalize),
            c.label.to(trainer.device),
            torch.ones_like(c.label, device=trainer.device),
            config.patch,
            fg_fraction=config.fg_fraction,
            floor=config.residual_floor,
            generator=trainer.generator,
        )
        for c in train
    ]
    pick = random.Random(config.seed)
    curve: list[CurvePoint] = []
    spent = 0.0
    for step in range(1, total_steps + 1):
        start = time.perf_counter()
        parts = [samplers[pick.randrange(len(samplers))].sample(1) for _ in range(config.batch_size)]
        batch = random_flip([torch.cat(ts) for ts in zip(*parts)], trainer.generator, config.flip_axes)
        trainer.step(batch)
        spent += time.perf_counter() - start
        if step % eval_every == 0 or step == total_steps:
            scores = evaluate(trainer, test)
            curve.append(CurvePoint(len(train), step, float(np.mean(scores)), scores, spent))
            if log:
                log(f"offline steps={step:5d} dice={curve[-1].dice:.4f} train_s={spent:.1f}")
    return curve


def format_table(title: str, curve: Sequence[CurvePoint]) -> str:
    """Markdown table of a held-out Dice curve (one row per evaluation)."""
    lines = [f"### {title}", "", "| cases seen | steps | held-out Dice (mean) | min | max | train s |", "|---|---|---|---|---|---|"]
    for p in curve:
        lo = min(p.per_case) if p.per_case else float("nan")
        hi = max(p.per_case) if p.per_case else float("nan")
        lines.append(f"| {p.cases} | {p.steps} | {p.dice:.4f} | {lo:.3f} | {hi:.3f} | {p.seconds:.1f} |")
    return "\n".join(lines)
