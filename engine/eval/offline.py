"""Training with full labels outside the stream: the offline upper bound
(``offline_full``) and the warm start of ``*_warm`` methods."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .cases import heldout
from .console import Log, bar, write
from .data import StreamData
from .methods import MethodSpec, engine_config
from .presets import StreamConfig
from .state import MethodState

__all__ = ["train_offline", "pretrained"]


def train_offline(
    state: MethodState,
    eng,
    cfg: StreamConfig,
    data: StreamData,
    cases: Sequence[int],
    total: int,
    chunk: int,
    log: Log,
    progress: bool,
    tag: str,
    eval_heldout: bool = True,
    stop_after: Optional[int] = None,
) -> bool:
    """Offline training with full labels on patches drawn from ``cases`` at random,
    in chunks of ``chunk`` steps; held-out Dice and a checkpoint after each chunk.
    Returns False when it stopped early (``stop_after`` chunks done, for tests)."""
    labelled = []
    for i in bar(cases, progress, desc=f"{tag}: load", leave=False):
        c = data.train_case(i)
        labelled.append((c.image, c.label.astype(np.float32), c.spacing))
    pool = eng.labelled_pool(labelled, axis=data.axis)
    if "plan" not in state.log:
        state.log["plan"] = eng.plan.to_dict()
        write(log, progress, f"{tag}: {eng.plan.describe()}")
    done = int(state.log.get("steps_done", 0))
    n_chunks = math.ceil(total / chunk)
    first = done // chunk
    for ci in bar(range(first, n_chunks), progress, desc=tag, initial=first, total=n_chunks):
        if stop_after is not None and ci >= stop_after:
            return False
        n = min(chunk, total - ci * chunk)
        t0 = time.perf_counter()
        pool.learn(n, random.Random(cfg.seed * 1_000_003 + ci))
        spent = time.perf_counter() - t0
        state.log["train_seconds"] += spent
        state.log["steps_done"] = ci * chunk + n
        per_case = cfg.rounds * cfg.steps
        if eval_heldout:
            scores = heldout(eng, data, progress)
            state.log["heldout"].append(
                {
                    "cases_seen": state.log["steps_done"] / per_case,
                    "steps": state.log["steps_done"],
                    "dice": float(np.mean(scores)),
                    "per_case": scores,
                }
            )
            write(
                log,
                progress,
                f"{tag:<16} steps {state.log['steps_done']:6d} (= "
                f"{state.log['steps_done'] / per_case:5.1f} cases of steps) held-out Dice {np.mean(scores):.3f}  "
                f"train {spent:.0f}s",
            )
        state.save(eng)
    return True


def pretrained(out: Path, cfg: StreamConfig, data: StreamData, device: str, log: Log, progress: bool) -> Path:
    """The warm-start engine (offline on the first ``warm_cases`` stream cases, full
    labels, those cases committed to replay); built once per output folder."""
    from ..api import Engine

    spec = MethodSpec("pretrain", "offline")
    state = MethodState(out / "_pretrain", "pretrain", cfg.digest())
    if state.log.get("finished"):
        return state.slot_path
    eng = state.load_engine(device, {}) or Engine(engine_config(cfg, spec, device))
    cases = list(range(cfg.warm_cases))
    train_offline(
        state, eng, cfg, data, cases, cfg.warm_total(), cfg.warm_total(), log, progress, "pretrain", eval_heldout=False
    )
    for i in cases:
        c = data.train_case(i)
        eng.learn_labelled(c.image, c.label.astype(np.float32), 0, axis=data.axis, spacing=c.spacing)
    state.log["finished"] = True
    state.save(eng)
    return state.slot_path
