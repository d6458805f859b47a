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
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.learn import LearnConfig  # noqa: E402
from engine.learn.experiment import (  # noqa: E402
    default_data_dir,
    format_table,
    load_la_cases,
    run_offline,
    run_online,
)


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
    ap.add_argument("--data", default=str(default_data_dir()))
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
            config, train, test, args.steps_per_case, args.replay_capacity, args.replay_ratio,
            args.patches_per_case, args.policy, eval_every=5, residual_sampling=args.residual_sampling,
            device=args.device, log=lambda s: print(s, flush=True),
        )
        sections.append(format_table(
            f"Online stream, cases 0-{args.train - 1}, {args.steps_per_case} steps/case, replay "
            f"{args.policy} capacity {args.replay_capacity}, {args.patches_per_case} patches/case, "
            f"ratio {args.replay_ratio if args.replay_ratio is not None else config.replay_ratio}"
            f"{', residual sampling' if args.residual_sampling else ''} (target >= 0.80)",
            online))
    if args.only in ("offline", "both"):
        offline = run_offline(config, train, test, total, eval_every=250, device=args.device,
                              log=lambda s: print(s, flush=True))
        sections.append(format_table(
            f"Offline, {total} steps on random patches of cases 0-{args.train - 1} (target >= 0.84)",
            offline))
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
