"""Done-when experiment of the learning core (issue 5); not run in CI.

With full labels on the left-atrium data (axis 2 moved first: volumes (44, X, Y)):

* online: stream over cases 0-19, ``--steps-per-case`` (50) steps each with replay,
  held-out Dice on cases 90-99 after every 5 cases (target >= 0.80);
* offline: the same number of steps (1000) on random patches from all 20 cases,
  held-out Dice every 250 steps (target >= 0.84).

Usage::

    .venv/bin/python benchmarks/learn_stream.py [--data DIR] [--out benchmarks/results/learn_stream.md]

Config overrides: ``--set lr=0.003 --set base_width=16`` (any LearnConfig field).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import platform
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.errors import InputError  # noqa: E402
from engine.eval.metrics import dice  # noqa: E402
from engine.io import Case, la_folder  # noqa: E402
from engine.learn import LearnConfig, PatchSampler, Trainer, normalize_intensity, random_flip  # noqa: E402


@dataclass
class CurvePoint:
    """Held-out Dice after ``cases`` cases / ``steps`` steps (``seconds`` of training)."""

    cases: int
    steps: int
    dice: float
    per_case: list[float] = field(default_factory=list)
    seconds: float = 0.0


def load_la_cases(ids: Sequence[int], root: str | None = None) -> list[Case]:
    """The shared LA cases ``la_{id:03d}`` (:func:`engine.io.la_folder`) with the
    annotation axis (2) moved first, as :class:`engine.io.Case` with ``axis=0``."""
    folder = la_folder(root)
    out = []
    for i in ids:
        c = folder[f"la_{int(i):03d}"]
        image = np.ascontiguousarray(np.moveaxis(c.image, folder.axis, 0))
        label = np.ascontiguousarray(np.moveaxis(c.label, folder.axis, 0))
        out.append(Case(c.name, image, label, tuple(np.moveaxis(np.asarray(c.spacing), folder.axis, 0)), axis=0))
    return out


def _tensors(case: Case, device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(case.image).to(device), torch.from_numpy(case.label.astype(np.float32)).to(device)


def evaluate(trainer: Trainer, cases: Sequence[Case]) -> list[float]:
    """Per-case sliding-window Dice of the trainer's model (probabilities > 0.5)."""
    return [dice(trainer.predict(_tensors(c, trainer.device)[0]).cpu() > 0.5, c.label) for c in cases]


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
        image, label = _tensors(case, trainer.device)
        weight = torch.ones_like(label)
        residual = (label - trainer.predict(image)).abs() if residual_sampling else None
        start = time.perf_counter()
        trainer.train_case(
            image, label, weight, steps_per_case, replay=replay, replay_ratio=replay_ratio, residual=residual
        )
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
    samplers = []
    for c in train:
        image, label = _tensors(c, trainer.device)
        samplers.append(
            PatchSampler(
                normalize_intensity(image, config.normalize),
                label,
                torch.ones_like(label),
                config.patch,
                fg_fraction=config.fg_fraction,
                floor=config.residual_floor,
                generator=trainer.generator,
            )
        )
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
    lines = [
        f"### {title}",
        "",
        "| cases seen | steps | held-out Dice (mean) | min | max | train s |",
        "|---|---|---|---|---|---|",
    ]
    for p in curve:
        lo = min(p.per_case) if p.per_case else float("nan")
        hi = max(p.per_case) if p.per_case else float("nan")
        lines.append(f"| {p.cases} | {p.steps} | {p.dice:.4f} | {lo:.3f} | {hi:.3f} | {p.seconds:.1f} |")
    return "\n".join(lines)


def _override(config: LearnConfig, items: list[str]) -> LearnConfig:
    changes = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            changes[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            changes[key] = value
    return dataclasses.replace(config, **changes)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="LA folder (default: engine.io.default_data_dir())")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "learn_stream.md"))
    ap.add_argument("--train", type=int, default=20, help="cases 0..N-1 form the stream")
    ap.add_argument("--steps-per-case", type=int, default=50)
    ap.add_argument("--replay-capacity", type=int, default=400)
    ap.add_argument("--patches-per-case", type=int, default=20)
    ap.add_argument("--replay-ratio", type=float, default=None)
    ap.add_argument("--policy", default="reservoir")
    ap.add_argument("--residual-sampling", action="store_true")
    ap.add_argument("--only", choices=["online", "offline", "both"], default="both")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    args = ap.parse_args(argv)

    config = _override(LearnConfig(), args.set)
    train = load_la_cases(range(args.train), args.data)
    test = load_la_cases(range(90, 100), args.data)
    total = args.train * args.steps_per_case
    print(f"config: {config}", flush=True)
    sections = []
    t0 = time.perf_counter()
    if args.only in ("online", "both"):
        online = run_online(
            config,
            train,
            test,
            args.steps_per_case,
            args.replay_capacity,
            args.replay_ratio,
            args.patches_per_case,
            args.policy,
            eval_every=5,
            residual_sampling=args.residual_sampling,
            device=args.device,
            log=lambda s: print(s, flush=True),
        )
        sections.append(
            format_table(
                f"Online stream, cases 0-{args.train - 1}, {args.steps_per_case} steps/case, replay "
                f"{args.policy} capacity {args.replay_capacity}, {args.patches_per_case} patches/case, "
                f"ratio {args.replay_ratio if args.replay_ratio is not None else config.replay_ratio}"
                f"{', residual sampling' if args.residual_sampling else ''} (target >= 0.80)",
                online,
            )
        )
    if args.only in ("offline", "both"):
        offline = run_offline(
            config, train, test, total, eval_every=250, device=args.device, log=lambda s: print(s, flush=True)
        )
        sections.append(
            format_table(
                f"Offline, {total} steps on random patches of cases 0-{args.train - 1} (target >= 0.84)", offline
            )
        )
    cli_args = list(argv if argv is not None else sys.argv[1:])
    header = [
        "# Learning core: online stream vs offline (held-out cases 90-99)",
        "",
        f"Command: `{' '.join(['.venv/bin/python benchmarks/learn_stream.py', *cli_args])}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"device {args.device}, {torch.get_num_threads()} threads; wall {time.perf_counter() - t0:.0f} s.",
        "",
        f"Config: `{config}`",
        "",
        "Full ground-truth labels (target = label, weight = 1); Dice of sliding-window "
        "probabilities > 0.5, mean over the 10 held-out cases.",
        "",
    ]
    text = "\n".join(header) + "\n" + "\n\n".join(sections) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
