"""Stream experiments: the protocol of DESIGN §3 with a simulated annotator.

A stream of training cases arrives one at a time and a held-out split measures the
segmenter every ``eval_every`` cases. What one case of each kind of method does is in
:mod:`engine.eval.cases`, the methods by name in :mod:`engine.eval.methods`, where the
cases come from in :mod:`engine.eval.data`, the resumable state (two engine slots and
an atomically replaced JSON log per method) in :mod:`engine.eval.state`, offline and
warm-start training in :mod:`engine.eval.offline`. All methods run on the same
stream, the same initial weights and seeds.

This module runs them: :func:`run_method` (one method, resuming what its folder
holds) and :func:`run_stream` (every method of a config, then the report).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .cases import baseline_case, full_case, heldout, sparse_case
from .console import HEADER, Log, bar, case_line, write
from .data import StreamData, load_stream_data
from .methods import MethodSpec, engine_config, method_overrides, parse_method
from .offline import pretrained, train_offline
from .presets import StreamConfig
from .state import LOG_VERSION, MethodState, check_run_folder

__all__ = [
    "run_stream",
    "run_method",
    "parse_method",
    "engine_config",
    "load_stream_data",
    "check_run_folder",
    "StreamData",
    "MethodSpec",
    "LOG_VERSION",
    "case_line",
]


def run_method(
    name: str,
    cfg: StreamConfig,
    data: StreamData,
    out: Path,
    device: str = "cpu",
    log: Log = print,
    progress: bool = True,
    stop_after: Optional[int] = None,
) -> dict:
    """Run (or resume) one method into ``out/<name>/``; returns its log.

    ``stop_after``: return after this many stream cases are logged (offline: this
    many chunks), as if interrupted; tests use it.
    """
    from ..api import Engine

    spec = parse_method(name, cfg)
    state = MethodState(out / name, name, cfg.digest())
    if state.log.get("finished"):
        log(f"{name}: finished earlier, kept ({state.path})")
        return state.log
    overrides = method_overrides(cfg, spec)
    eng = state.load_engine(device, overrides)
    resumed = eng is not None or state.log["cases_done"] > 0
    if spec.kind == "offline":
        if eng is None:
            eng = Engine(engine_config(cfg, spec, device))
        _note_engine(state, cfg, spec, device, log, name)
        if resumed:
            log(f"{name}: resuming at step {state.log.get('steps_done', 0)}")
        if not train_offline(
            state,
            eng,
            cfg,
            data,
            range(cfg.n_train),
            cfg.offline_total(),
            cfg.offline_chunk(),
            log,
            progress,
            name,
            stop_after=stop_after,
        ):
            eng.close()
            return state.log
        state.log["finished"] = True
        state.save()
        state.drop_spare()
        eng.close()
        return state.log
    start_case = cfg.warm_cases if spec.warm else 0
    if eng is None:
        if spec.warm:
            eng = Engine.load(pretrained(out, cfg, data, device, log, progress), device=device)
            eng.reconfigure(**overrides, steps=cfg.steps)
            scores = heldout(eng, data, progress)
            state.log["heldout"].append({"cases_seen": start_case, "dice": float(np.mean(scores)), "per_case": scores})
        else:
            eng = Engine(engine_config(cfg, spec, device))
    _note_engine(state, cfg, spec, device, log, name)
    done = state.log["cases_done"]
    if resumed:
        log(f"{name}: resuming after {done} of {cfg.n_train - start_case} stream cases")
    positions = list(range(start_case, cfg.n_train))
    progress_bar = bar(positions, progress, desc=name, initial=done, total=len(positions))
    for j, i in enumerate(positions):
        if j < done:
            continue
        if stop_after is not None and state.log["cases_done"] >= stop_after:
            if progress and hasattr(progress_bar, "close"):
                progress_bar.close()
            eng.close()
            return state.log
        case = data.train_case(i)
        if spec.kind == "full":
            rec = full_case(eng, cfg, case, data.axis, i)
        elif spec.kind == "baseline":
            rec = baseline_case(spec, cfg, case, data.axis, i)
        else:
            rec = sparse_case(eng, spec, cfg, case, data.axis, i)
        if eng.planned and "plan" not in state.log:  # what the segmenter configured itself to, and why
            state.log["plan"] = eng.plan.to_dict()
            write(log, progress, f"{name}: {eng.plan.describe()}")
        state.log["cases"].append(rec)
        state.log["cases_done"] = j + 1
        state.log["train_seconds"] += rec["seconds"]
        write(log, progress, case_line(name, rec))
        seen = i + 1
        if spec.learns and (seen % cfg.eval_every == 0 or seen == cfg.n_train):
            t0 = time.perf_counter()
            scores = heldout(eng, data, progress)
            state.log["heldout"].append(
                {
                    "cases_seen": seen,
                    "dice": float(np.mean(scores)),
                    "per_case": scores,
                    "seconds": time.perf_counter() - t0,
                }
            )
            write(log, progress, f"{name:<16} held-out Dice after {seen} cases: {np.mean(scores):.3f}")
        state.save(eng if spec.learns else None)
        if progress and hasattr(progress_bar, "update"):
            progress_bar.update(1)
    if progress and hasattr(progress_bar, "close"):
        progress_bar.close()
    state.log["finished"] = True
    state.save()
    state.drop_spare()
    eng.close()
    return state.log


def _note_engine(state: MethodState, cfg: StreamConfig, spec: MethodSpec, device: str, log: Log, name: str) -> None:
    """Record the resolved engine config (library defaults included) and the torch
    setup in the log; warn when a resumed run resolves to another config (e.g. a
    library default changed in between)."""
    resolved = engine_config(cfg, spec, device).to_dict()
    old = state.log.get("engine_config")
    if old is not None and old != resolved:
        diff = sorted(k for k in set(old) | set(resolved) if old.get(k) != resolved.get(k))
        log(
            f"WARNING {name}: the engine config differs from the one this log started with ({', '.join(diff)}); "
            f"the numbers of this method mix both"
        )
    state.log.setdefault("engine_config", resolved)
    from ..propagate import register_volume

    env = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "register_pairs": f"{register_volume.__module__}.{register_volume.__qualname__}",
    }
    if state.log.get("env") not in (None, env):
        log(f"note {name}: resumed with another environment: {state.log['env']} -> {env}")
        state.log.setdefault("env_history", []).append(env)
    state.log.setdefault("env", env)


def run_stream(
    cfg: StreamConfig,
    out: str | os.PathLike,
    device: str = "cpu",
    log: Log = print,
    progress: bool = True,
    report: bool = True,
) -> dict[str, dict]:
    """Run every method of ``cfg.methods`` (resuming what a folder already holds),
    then write the report files into ``out``. Returns ``{method: log}``."""
    cfg.validate()
    for m in cfg.methods:
        parse_method(m, cfg)  # fail on a bad name before any work
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_stream_data(cfg)
    log(f"data: {data.describe()}")
    check_run_folder(out, cfg, data)
    sizes = cfg.round_sizes()
    log(
        f"protocol: {cfg.rounds} rounds of {sizes} slices, {cfg.steps} steps per round, held-out every "
        f"{cfg.eval_every} cases; methods {', '.join(cfg.methods)}; device {device}; out {out}"
    )
    logs: dict[str, dict] = {}
    t_start = time.perf_counter()
    for i, m in enumerate(cfg.methods):
        if i == 0:
            write(log, progress, HEADER)
        t0 = time.perf_counter()
        logs[m] = run_method(m, cfg, data, out, device=device, log=log, progress=progress)
        log(f"{m}: done in {time.perf_counter() - t0:.0f}s")
    if report:
        from .report import write_report

        files = write_report(out)
        log(f"report: {', '.join(str(f) for f in files)}")
    log(f"total {time.perf_counter() - t_start:.0f}s")
    return logs
