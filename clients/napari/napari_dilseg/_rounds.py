"""The engine calls the widget makes, as generators that report progress.

Qt-free: the widget runs each of these in a napari worker thread
(``napari.qt.threading.create_worker``); every ``yield`` is a :class:`Progress`
the widget shows, the generator's return value is what the call produced. They
talk to one session interface: an in-process ``engine.Session`` or a
``dilseg_client.RemoteSession`` (same methods, same error names).
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from dataclasses import dataclass, field
from typing import Any, Generator, Optional, Sequence

import numpy as np

from ._slices import Changes

__all__ = [
    "Progress",
    "EngineStatus",
    "RoundOutcome",
    "local_engine",
    "remote_engine",
    "engine_status",
    "open_case",
    "propose",
    "send_round",
    "commit",
]

#: counters the widget shows, in this order (others after them, when not zero)
COUNTERS = ("cases", "rounds", "steps", "skipped_steps", "weights_version")


@dataclass
class Progress:
    """One progress report: a stage name, the share of the call done, a line of text."""

    stage: str
    fraction: float
    text: str


@dataclass
class EngineStatus:
    """What the widget shows about the engine."""

    counters: dict[str, int]
    fusion_weight: float
    device: str = ""

    def describe(self) -> str:
        c = self.counters
        names = [n for n in COUNTERS if n in c] + sorted(n for n in c if n not in COUNTERS and c[n])
        parts = [f"{n.replace('_', ' ')} {c[n]}" for n in names]
        return " · ".join(parts + [f"model share λ {self.fusion_weight:.2f}"])


@dataclass
class RoundOutcome:
    """What one "Send slices" round produced."""

    result: Optional[np.ndarray]
    proposals: list[int]
    status: EngineStatus
    sent: Changes
    timings: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0


Steps = Generator[Progress, None, Any]


def local_engine(config: Any = None) -> Steps:
    """An in-process ``engine.Engine`` (imports torch: seconds the first time)."""
    yield Progress("engine", 0.1, "loading the in-process engine…")
    import engine

    eng = engine.Engine(config)
    return eng


def remote_engine(url: str, api_key: Optional[str] = None) -> Steps:
    """A ``dilseg_client.RemoteEngine`` for a running ``dilseg serve``; checks it answers."""
    yield Progress("connect", 0.1, f"connecting to {url}…")
    from dilseg_client import RemoteEngine

    eng = RemoteEngine(url, api_key=api_key or None)
    try:
        eng.info()  # reaches the server and checks the key
    except BaseException:
        eng.close()
        raise
    return eng


def engine_status(eng: Any) -> EngineStatus:
    """Counters, fusion weight and device of an in-process or remote engine."""
    if hasattr(eng, "info"):  # remote: one request for all of it
        info = eng.info()
        return EngineStatus(dict(info["counters"]), float(info["fusion_weight"]), str(info.get("device", "")))
    return EngineStatus(dict(eng.counters), float(eng.fusion_weight()), str(eng.device))


def open_case(eng: Any, image: Any, spacing: Sequence[float], axis: int) -> Steps:
    """A session for ``image`` (caller's layout) annotated along ``axis``."""
    yield Progress("open", 0.2, f"opening the case (axis {axis}, spacing {tuple(round(s, 3) for s in spacing)})…")
    a = np.asarray(image)
    if a.dtype != np.float32:
        a = a.astype(np.float32)
    session = eng.open(a, spacing=tuple(float(s) for s in spacing), axis=int(axis))
    return session, engine_status(eng)


def propose(session: Any, k: int, extent: Optional[tuple[int, int]] = None) -> Steps:
    """The next ``k`` slices to draw (the extent set first when given)."""
    yield Progress("propose", 0.5, "asking for the next slices…")
    if extent is not None:
        session.set_extent(*extent)
    return [int(z) for z in session.propose(int(k))]


def _annotate(session: Any, changes: Changes) -> None:
    for z in changes.erase:
        session.erase(int(z))
    if not changes.annotate:
        return
    zs = sorted(changes.annotate)
    masks = [changes.annotate[z].astype(np.uint8) for z in zs]
    if hasattr(session, "annotate_many"):  # remote: all slices in one request, all or none
        session.annotate_many(zs, masks)
    else:
        for z, m in zip(zs, masks):
            session.annotate(int(z), m)


def send_round(
    session: Any,
    changes: Changes,
    extent: Optional[tuple[int, int]],
    steps: Optional[int],
    k: int,
    annotated_after: int,
) -> Steps:
    """One round: the changed slices in, the extent, propagate, learn ``steps``, the
    fused result and the next ``k`` proposals out.

    ``annotated_after``: how many slices the engine holds once ``changes`` are in
    (none: no proxy to propagate, the result is the model's prediction alone).
    """
    t0 = time.perf_counter()
    yield Progress("send", 0.05, f"sending {changes.describe()}…")
    if extent is not None and tuple(session.extent or ()) != tuple(extent):
        session.set_extent(*extent)
    _annotate(session, changes)
    timings: dict[str, Any] = {}
    if annotated_after:
        yield Progress("propagate", 0.15, "propagating the drawn slices (registration once per case)…")
        session.propagate()
        timings["propagate"] = dict(session.timings.get("propagate", {}))
        fut = session.learn_async(steps)
        label = "default" if steps is None else str(steps)
        while True:
            done, _ = cf.wait([fut], timeout=0.2)
            if done:
                break
            el = time.perf_counter() - t0
            yield Progress("learn", min(0.85, 0.2 + 0.02 * el), f"learning ({label} steps)… {el:.1f} s")
        timings["learn"] = dict(fut.result() or {})
    yield Progress("result", 0.9, "fusing proxy and model…")
    result = np.asarray(session.result()).astype(np.uint8, copy=False)
    try:
        proposals = [int(z) for z in session.propose(int(k))] if k else []
    except Exception:  # noqa: BLE001 - proposals are advice; the round's result stands
        proposals = []
    status = engine_status(session.engine)
    return RoundOutcome(result, proposals, status, changes, timings, time.perf_counter() - t0)


def commit(session: Any, final_mask: Optional[np.ndarray] = None) -> Steps:
    """Commit the case (optionally with the person's corrected 3D mask); closes it."""
    yield Progress("commit", 0.5, "committing the case into the replay buffer…")
    session.commit(final_mask=None if final_mask is None else (np.asarray(final_mask) != 0).astype(np.uint8))
    return engine_status(session.engine)
