"""Stream experiments: the protocol of DESIGN §3 with a simulated annotator.

A stream of training cases arrives one at a time and a held-out split measures the
segmenter every ``eval_every`` cases. For every case of a *sparse-label* method:

0. the back-end prediction before any interaction, its Dice against the truth
   (**dynamic evaluation**, ``before``);
1. rounds ``r = 1..R`` of ``k`` slices: propose, the simulated person draws them,
   propagate (proxy mask ``Q``), learn ``steps`` steps, predict; logged per round:
   proxy Dice (``Q >= 0.5``), model Dice (``P >= 0.5``), fused Dice (the session's
   result ``F = Q + lam (1-C) (P - Q)`` inside the extent, ``lam`` fitted by the
   engine's evidence gate, logged as ``fusion_weight``), effort (slices drawn / slices
   holding the object; ground-truth boundary pixels on the drawn slices / of the
   whole truth, the *labor* measure, :mod:`engine.eval.metrics`) and wall time;
2. commit (the case enters the replay buffer).

Methods (all on the same stream, the same initial weights and seeds):

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
                    ``morph_contour_even`` (:mod:`engine.eval.baselines`)
==================  ==========================================================

Modifiers and experimental names: a ``_warm`` suffix (sparse methods only) starts
from a segmenter pretrained offline on the first ``warm_cases`` stream cases with
full labels (then the stream continues on the rest); an ``_accept`` suffix stops a
case after round 1 when the prediction before the case already agrees with the
round-1 drawings (mean slice Dice >= ``accept_dice``); a ``_fixed`` suffix uses the
paper's fixed fusion ``F = C Q + (1-C) P`` (``Config.fusion_gate="none"``; the
model's training is the same, so ``ours`` vs ``ours_fixed`` isolates the gate).
Suffixes combine in the order ``_accept``, ``_warm``, ``_fixed``. ``ours@RULE`` and
``proxy@RULE`` run round 1 even and then ``RULE``: any of ``engine.guide.RULES``,
or the harness's experimental rules :data:`EXPERIMENTAL_RULES` (``cheb``: a
Chebyshev-Lobatto set, denser at the object's ends; ``mid``: the centres of equal
cells of the extent, end slices not drawn (both planned sets, :func:`plan_slices`);
``disagree``: slices where the two propagation contributors disagree most;
``ends``: split the outermost gaps first, :func:`_experimental_proposal`).

Resumability: after every case (offline: every ``offline_eval_every`` steps) the
engine is saved (:meth:`engine.Engine.save`) into one of two slots, ``a`` and
``b``, alternately, and then the method's JSON log, which names the slot, is
replaced atomically. A crash at any point leaves a log whose slot is complete; a
restart with the same output folder and config resumes after the last logged case
and, on the CPU, reproduces the uninterrupted run's numbers exactly (wall times
aside).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from ..errors import DataError, InputError
from .annotator import SimulatedAnnotator
from .metrics import as_mask, dice
from .presets import StreamConfig

__all__ = [
    "MethodSpec",
    "parse_method",
    "StreamData",
    "load_stream_data",
    "run_stream",
    "run_method",
    "plan_slices",
    "EXPERIMENTAL_RULES",
    "LOG_VERSION",
]

LOG_VERSION = 1
#: Proposal rules the harness implements itself (candidates for engine.guide).
EXPERIMENTAL_RULES = ("cheb", "disagree", "ends", "mid")
_SET_SCHEDULES = ("even_set", "cheb_set", "mid_set")

Log = Callable[[str], None]


# ============================================================================ methods
@dataclass(frozen=True)
class MethodSpec:
    """How one method runs (see the module docstring for the names).

    kind: ``"sparse"`` (drawn slices + learning), ``"proxy"`` (drawn slices, no
    learning), ``"baseline"`` (drawn slices, a proxy-mask baseline of
    :mod:`engine.eval.baselines` named by ``rule`` instead of registration), ``"full"``
    (online, full labels), ``"offline"`` (full labels, all cases at random). schedule: ``"guided"`` (round 1 even, then ``rule``),
    ``"even_set"`` or ``"cheb_set"`` (one planned set per case, split over rounds).
    """

    name: str
    kind: str
    schedule: str = "guided"
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
    from ..guide import RULES

    base, warm, accept, gate = name, False, False, True
    if base.endswith("_fixed"):
        base, gate = base[: -len("_fixed")], False
    if base.endswith("_warm"):
        base, warm = base[: -len("_warm")], True
    if base.endswith("_accept"):
        base, accept = base[: -len("_accept")], True
    fixed = {
        "ours": dict(kind="sparse", rule=cfg.guided_rule),
        "ours_even": dict(kind="sparse", schedule="even_set"),
        "ours_random": dict(kind="sparse", rule="random"),
        "ours_noreplay": dict(kind="sparse", rule=cfg.guided_rule, replay=False),
        "ours_smooth": dict(kind="sparse", rule=cfg.guided_rule, smoothing="self"),
        "proxy_guided": dict(kind="proxy", rule="gap"),
        "proxy_even": dict(kind="proxy", schedule="even_set"),
        "online_full": dict(kind="full"),
        "offline_full": dict(kind="offline"),
    }
    from .baselines import BASELINES

    for b in BASELINES:
        fixed[f"{b}_even"] = dict(kind="baseline", schedule="even_set", rule=b)
    if base in fixed:
        kw = fixed[base]
    elif "@" in base and base.split("@", 1)[0] in ("ours", "proxy"):
        head, rule = base.split("@", 1)
        kind = "sparse" if head == "ours" else "proxy"
        if rule == "cheb":
            kw = dict(kind=kind, schedule="cheb_set")
        elif rule == "mid":
            kw = dict(kind=kind, schedule="mid_set")
        elif rule == "even":
            kw = dict(kind=kind, schedule="even_set")
        elif rule in RULES or rule in EXPERIMENTAL_RULES:
            if kind == "proxy" and rule in ("residual", "residual_gap"):
                raise InputError(f"method {name!r}: rule {rule!r} needs a model; proxy methods have none")
            kw = dict(kind=kind, rule=rule)
        else:
            raise InputError(f"method {name!r}: unknown rule {rule!r} (engine.guide.RULES {RULES}, "
                             f"experimental {EXPERIMENTAL_RULES}, or 'even', 'cheb')")
    else:
        raise InputError(f"unknown method {name!r}; known: {sorted(fixed)} and ours@RULE / proxy@RULE, "
                         f"with optional _accept / _warm / _fixed suffixes")
    if (warm or accept or not gate) and kw["kind"] != "sparse":
        raise InputError(f"method {name!r}: _warm, _accept and _fixed apply to sparse-label (ours*) methods only")
    if accept and cfg.accept_dice is None:
        raise InputError(f"method {name!r} needs StreamConfig.accept_dice")
    if warm and cfg.warm_cases < 1:
        raise InputError(f"method {name!r} needs StreamConfig.warm_cases >= 1")
    return MethodSpec(name=name, warm=warm, accept=accept, gate=gate, **kw)


# =============================================================================== data
@dataclass
class StreamData:
    """Where the cases come from and how they split (``load_stream_data``)."""

    kind: str  # "la" | "folder" | "phantom"
    where: str
    axis: int
    train_names: list[str]
    test_names: list[str]
    _folder: Any = None
    _phantom: Optional[tuple] = None
    _test_cache: Optional[list] = None

    def describe(self) -> str:
        return (f"{self.kind} data ({self.where}): {len(self.train_names)} stream cases "
                f"{self.train_names[0]}..{self.train_names[-1]}, {len(self.test_names)} held-out "
                f"{self.test_names[0]}..{self.test_names[-1]}, annotation axis {self.axis}")

    def _load(self, name: str, test: bool):
        if self._folder is not None:
            case = self._folder[name]
        else:
            from ..io.phantoms import phantom_case

            seed, shape, axis = self._phantom
            idx = int(name.rsplit("_", 1)[1])
            case = phantom_case((seed + (1 if test else 0), idx), shape, axis)
        if not np.any(case.label):
            raise DataError(f"case {name}: the label is empty; a stream case needs an object")
        return case

    def train_case(self, i: int):
        return self._load(self.train_names[i], test=False)

    def test_cases(self) -> list:
        if self._test_cache is None:
            self._test_cache = [self._load(n, test=True) for n in self.test_names]
        return self._test_cache

    def meta(self) -> dict[str, Any]:
        return {"kind": self.kind, "where": self.where, "axis": self.axis, "train": list(self.train_names),
                "test": list(self.test_names)}


def load_stream_data(cfg: StreamConfig) -> StreamData:
    """Resolve ``cfg.data`` into a :class:`StreamData` (module docstring of presets)."""
    from ..io import CaseFolder, default_data_dir
    from ..io.dataset import LA_AXIS, LA_DIRNAME

    data = cfg.data
    folder = None
    kind = None
    if data in ("auto", "la"):
        found = default_data_dir()
        if found is None:
            fixed = Path("/work/shared/data") / LA_DIRNAME
            found = fixed if any(fixed.glob("la_*.npz")) else None
        if found is not None:
            folder, kind = CaseFolder(found, axis=LA_AXIS), "la"
        elif data == "la":
            raise DataError(f"the left-atrium data ({LA_DIRNAME}) was not found: pass --data DIR or set DILSEG_DATA")
        else:
            kind = "phantom"
    elif data == "phantom":
        kind = "phantom"
    else:
        path = Path(data)
        if not path.is_dir():
            raise DataError(f"--data {data}: no such folder")
        is_la = any(path.glob("la_*.npz"))
        folder = CaseFolder(path, axis=LA_AXIS if is_la else None)
        kind = "la" if is_la else "folder"
    if kind == "phantom":
        axis = 0 if cfg.axis is None else cfg.axis
        shape = list(cfg.phantom_shape)
        # phantom_shape lists the annotation axis first; place it at `axis`
        dims = shape[1:]
        dims.insert(axis, shape[0])
        train = [f"phantom_{cfg.seed}_{i}" for i in range(cfg.n_train)]
        test = [f"phantom_{cfg.seed + 1}_{i}" for i in range(cfg.n_test)]
        return StreamData("phantom", f"generated, seeds {cfg.seed}/{cfg.seed + 1}, shape {tuple(dims)}", axis,
                          train, test, _phantom=(cfg.seed, tuple(dims), axis))
    names = folder.names
    if len(names) < cfg.n_train + cfg.n_test:
        raise DataError(f"{folder.path}: {len(names)} cases, the preset needs {cfg.n_train} stream + "
                        f"{cfg.n_test} held-out cases (use --cases N)")
    axis = cfg.axis if cfg.axis is not None else (folder.axis if folder.axis is not None else 0)
    return StreamData(kind, str(folder.path), axis, names[: cfg.n_train], names[len(names) - cfg.n_test:],
                      _folder=folder)


# =========================================================================== planning
def _even(lo: int, hi: int, n: int) -> list[int]:
    from ..guide import even_slices

    return even_slices(lo, hi, n)


def _cheb(lo: int, hi: int, n: int) -> list[int]:
    """``n`` Chebyshev-Lobatto points over ``[lo, hi]`` (ends included), rounded."""
    if n == 1:
        return [(lo + hi) // 2]
    return _symmetric(lo, hi, [(hi - lo) * (1.0 - math.cos(math.pi * i / (n - 1))) / 2.0 for i in range(n)])


def _mid(lo: int, hi: int, n: int) -> list[int]:
    """``n`` slices at the centres of ``n`` equal cells of ``[lo, hi]``:
    ``lo + (hi - lo) (j + 1/2) / n``, rounded (the extent's end slices are not drawn:
    the extent already says where the object stops); :func:`engine.guide.cell_centres`."""
    from ..guide import cell_centres

    return cell_centres(lo, hi, n)


def _symmetric(lo: int, hi: int, offsets: Sequence[float]) -> list[int]:
    from ..guide import _symmetric as sym

    return sym(lo, hi, offsets)


def _split_rounds(planned: list[int], sizes: Sequence[int]) -> list[list[int]]:
    """Split a planned set over rounds: each round an evenly spread subset of what is
    left (the last round takes the rest, up to its size)."""
    left = list(planned)
    out = []
    for r, k in enumerate(sizes):
        if not left:
            out.append([])
            continue
        if r == len(sizes) - 1 or k >= len(left):
            take = left[:k] if r < len(sizes) - 1 else left
        else:
            take = [left[j] for j in _even(0, len(left) - 1, k)]
        out.append(sorted(take))
        left = [z for z in left if z not in take]
    return out


def plan_slices(schedule: str, lo: int, hi: int, sizes: Sequence[int]) -> list[list[int]]:
    """The slices of a planned schedule, per round.

    ``even_set``: ``sum(sizes)`` slices evenly spaced over ``[lo, hi]`` (both ends);
    ``cheb_set``: Chebyshev-Lobatto positions ``lo + (hi-lo)(1 - cos(pi i/(n-1)))/2``,
    denser near both ends; ``mid_set``: the centres of ``n`` equal cells of the extent,
    ``lo + (hi-lo)(j + 1/2)/n`` (end slices not drawn). Round 1 draws an evenly spread
    subset of the set, later rounds the rest.
    """
    n = int(sum(sizes))
    if schedule == "even_set":
        planned = _even(lo, hi, n)
    elif schedule == "cheb_set":
        planned = _cheb(lo, hi, n)
    elif schedule == "mid_set":
        planned = _mid(lo, hi, n)
    else:
        raise InputError(f"unknown schedule {schedule!r}")
    return _split_rounds(planned, sizes)


def _experimental_proposal(rule: str, session, k: int) -> list[int]:
    """The harness's experimental rules (EXPERIMENTAL_RULES), computed from the
    session's state. ``disagree`` uses the per-slice disagreement of the two
    propagation contributors (pushed up from the annotated slice below vs. down
    from the one above), ``S(z) = sum |from_below - from_above|``, greedy with the
    session's minimum gap; ``ends`` splits the two outermost gaps first (between
    each end of the extent and its nearest drawn neighbour), then the largest gap.
    """
    from ..guide import propose as guide_propose

    ann = sorted(session.annotated.get(session.axis, []))
    lo, hi = session.extent
    D = session.D
    cfg = session.engine.config
    if rule == "ends":
        inner = [z for z in ann if lo <= z <= hi]
        picks: list[int] = []
        taken = set(ann)
        if len(inner) >= 2:
            for a, b in ((inner[0], inner[1]), (inner[-2], inner[-1])):
                z = (a + b) // 2
                if z not in taken and len(picks) < k:
                    picks.append(z)
                    taken.add(z)
        if len(picks) < k:
            picks += guide_propose("gap", k - len(picks), D, sorted(taken), (lo, hi), None, cfg.min_gap)
        return sorted(picks)
    if rule == "disagree":
        from ..ops import propagate_chain

        session.propagate()  # makes sure the registration fields exist
        fields_ = session._fields
        masks = torch.zeros(tuple(session.image.shape), dtype=torch.float32, device=session.image.device)
        for z in ann:
            masks[z] = session._annotations[(0, z)].float()
        res = propagate_chain(masks, ann, fields_.fwd, fields_.bwd, min_mass=cfg.min_mass, fuse="none")
        both = (res.dist_below >= 0) & (res.dist_above >= 0)
        s = (res.from_below - res.from_above).abs().sum((1, 2)) * both.to(torch.float32)
        return guide_propose("residual", k, D, ann, (lo, hi), s.cpu(), cfg.min_gap)
    raise InputError(f"unknown experimental rule {rule!r}")


# ============================================================================ engines
def _learn_config(cfg: StreamConfig):
    from ..learn import LearnConfig

    d = LearnConfig().to_dict()
    d["seed"] = cfg.seed
    d.update(cfg.learn)
    return LearnConfig.from_dict(d)


def engine_config(cfg: StreamConfig, spec: MethodSpec, device: str):
    """The :class:`engine.Config` of a method."""
    from ..api import Config

    kw = dict(cfg.engine)
    kw.update(device=device, learn=_learn_config(cfg), steps=cfg.steps, seed=cfg.seed)
    kw.update(_method_overrides(cfg, spec))
    return Config(**kw)


def _method_overrides(cfg: StreamConfig, spec: MethodSpec) -> dict[str, Any]:
    from ..guide import RULES

    out: dict[str, Any] = {"smoothing": spec.smoothing, "fusion_gate": "evidence" if spec.gate else "none"}
    if spec.rule in RULES:
        out["proposal"] = spec.rule
    if not spec.replay:
        out["replay_ratio"] = 0.0
    else:
        out["replay_ratio"] = cfg.engine.get("replay_ratio", 0.5)
    return out


def _publish(eng) -> None:
    """Swap trained weights into the engine's serving copy after training through
    ``eng.trainer`` directly (full-label baselines). The API has no public call for
    it yet (reported to the lead); ``Engine._publish`` is what ``Session.learn`` uses."""
    eng._publish()


def _internal(x: np.ndarray, axis: int) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(x), axis, 0)))


def _train_full(eng, image: np.ndarray, label: np.ndarray, axis: int, steps: int,
                p0: Optional[np.ndarray]) -> None:
    """One case with full labels: ``steps`` steps (target = truth, weight 1, patches
    centred by the residual |Y - P0| as a session does with |Q - P|, replay as
    configured), publish, commit the case to the replay buffer."""
    dev = eng.device
    img = _internal(image.astype(np.float32), axis).to(dev)
    lab = _internal(label.astype(np.float32), axis).to(dev)
    w = torch.ones_like(lab)
    residual = None if p0 is None else (lab - _internal(p0.astype(np.float32), axis).to(dev)).abs()
    if steps > 0:
        eng.trainer.train_case(img, lab, w, steps, replay=eng.replay, replay_ratio=eng.config.replay_ratio,
                               residual=residual)
        eng.counters["steps"] += steps
        eng.counters["rounds"] += 1
        _publish(eng)
    eng.replay.add_case(img, lab, w, eng.config.replay_patches_per_case, residual=residual)
    eng.counters["cases"] += 1


def _heldout(eng, data: StreamData, progress: bool) -> list[float]:
    tests = data.test_cases()
    out = []
    for c in _bar(tests, progress and len(tests) > 4, desc="held-out", leave=False):
        p = eng.predict(c.image, axis=data.axis)
        out.append(float(dice(p >= 0.5, c.label)))
    return out


def _bar(it, enabled: bool, **kw):
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, file=sys.stderr, dynamic_ncols=True, disable=None, **kw)  # None: off when not a terminal


# ========================================================================== run state
def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temp file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); remove it to start that method again") from exc


class _MethodState:
    """A method's folder: the JSON log and the two engine slots (a/b)."""

    def __init__(self, folder: Path, spec_name: str, digest: str) -> None:
        self.folder = folder
        self.path = folder / "log.json"
        self.digest = digest
        log = _read_json(self.path)
        if log is not None and (log.get("version") != LOG_VERSION or log.get("digest") != digest):
            raise InputError(f"{self.path} belongs to another config (digest {log.get('digest')} != {digest}); "
                             f"use another --out folder")
        self.log = log or {"version": LOG_VERSION, "method": spec_name, "digest": digest, "slot": None,
                           "cases_done": 0, "finished": False, "cases": [], "heldout": [], "train_seconds": 0.0}

    def load_engine(self, device: str, overrides: dict[str, Any]):
        from ..api import Engine

        slot = self.log.get("slot")
        if slot is None:
            return None
        eng = Engine.load(self.folder / slot, device=device)
        for k, v in overrides.items():
            setattr(eng.config, k, v)
        return eng

    def save(self, eng=None) -> None:
        if eng is not None:
            slot = "b" if self.log.get("slot") == "a" else "a"
            target = self.folder / slot
            if target.exists():
                shutil.rmtree(target)
            eng.save(target)
            self.log["slot"] = slot
        atomic_write(self.path, json.dumps(self.log, indent=1))

    def drop_spare(self) -> None:
        """Once finished, only the slot the log names is kept (the final engine)."""
        for slot in ("a", "b"):
            if slot != self.log.get("slot") and (self.folder / slot).exists():
                shutil.rmtree(self.folder / slot)


# ============================================================================ printing
_HEADER = (f"{'method':<16} {'case':<14} {'before':>6} {'proxy':>6} {'model':>6} {'fused':>6} "
           f"{'slices':>6} {'labor':>6} {'sec':>7}")


def _fmt(v: Optional[float]) -> str:
    return f"{v:6.3f}" if isinstance(v, (int, float)) and v is not None and math.isfinite(v) else f"{'-':>6}"


def case_line(method: str, rec: dict) -> str:
    return (f"{method:<16} {rec['name'][:14]:<14} {_fmt(rec.get('before'))} {_fmt(rec.get('proxy'))} "
            f"{_fmt(rec.get('model'))} {_fmt(rec.get('fused'))} {_fmt(rec.get('effort_slices'))} "
            f"{_fmt(rec.get('effort_labor'))} {rec.get('seconds', 0.0):7.1f}")


# ========================================================================== one case
def _sparse_case(eng, spec: MethodSpec, cfg: StreamConfig, case, axis: int, index: int) -> dict:
    """One case of a sparse-label method (``ours*``) or a proxy method."""
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
    if learn:
        p0 = s.predict()
        rec["before"] = float(dice(p0 >= 0.5, label))
    else:
        rec["before"] = None
    spent += time.perf_counter() - t0
    planned = plan_slices(spec.schedule, lo, hi, sizes) if spec.schedule in _SET_SCHEDULES else None
    rounds = []
    for r, k in enumerate(sizes):
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        if planned is not None:
            picks = [z for z in planned[r] if z not in set(s.annotated.get(axis, []))]
        elif r == 0:  # round 1 even, except for rules that define their own cold start
            picks, t = s.propose(k, rule="cells" if spec.rule == "cells" else "even", return_timings=True)
            timings["propose"] = t["total"]
        elif spec.rule in EXPERIMENTAL_RULES:
            picks = _experimental_proposal(spec.rule, s, k)
        else:
            picks, t = s.propose(k, rule=spec.rule, return_timings=True)
            timings["propose"] = t["total"]
        drawn = []
        for z in picks:
            m = person.draw(int(z))
            drawn.append(m)
            s.annotate(int(z), m)
        accepted = False
        if spec.accept and r == 0 and p0 is not None and picks:
            pz = np.take(p0 >= 0.5, picks, axis=axis)
            pz = np.moveaxis(pz, axis, 0)
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
        row = {"round": r + 1, "slices": [int(z) for z in picks], "proxy": proxy,
               "model": float(dice(p >= 0.5, label)) if learn else None,
               "fused": float(dice(f, label)) if learn else proxy,
               "fusion_weight": s.fusion_weight if learn else None,
               "n_drawn": eff.n_drawn, "effort_slices": eff.slices, "effort_labor": eff.labor,
               "seconds": seconds, "timings_ms": timings}
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
    rec["slice_errors"] = _slice_errors(label, axis, lo, hi, q >= 0.5, f if learn else None)
    rec.update({"rounds": rounds, "proxy": last["proxy"], "model": last["model"], "fused": last["fused"],
                "n_drawn": eff.n_drawn, "object_slices": eff.n_object_slices, "effort_slices": eff.slices,
                "effort_labor": eff.labor, "seconds": spent})
    return rec


def _slice_errors(label: np.ndarray, axis: int, lo: int, hi: int, proxy: np.ndarray,
                  fused: Optional[np.ndarray]) -> dict[str, list[int]]:
    """Per-slice error voxels (``|mask XOR truth|``) over the extent ``lo..hi`` of the
    final proxy and fused masks, and the truth's area: where a result is wrong."""
    def per_slice(m):
        x = np.moveaxis(np.logical_xor(m, label), axis, 0)[lo: hi + 1]
        return [int(v) for v in x.reshape(x.shape[0], -1).sum(1)]

    area = np.moveaxis(label, axis, 0)[lo: hi + 1]
    out = {"area": [int(v) for v in area.reshape(area.shape[0], -1).sum(1)], "proxy": per_slice(proxy)}
    if fused is not None:
        out["fused"] = per_slice(fused.astype(bool))
    return out


def _baseline_case(spec: MethodSpec, cfg: StreamConfig, case, axis: int, index: int) -> dict:
    """One case of a proxy-mask baseline (no registration, no learning)."""
    from .baselines import BASELINES

    fn = BASELINES[spec.rule]
    label = as_mask(case.label, "label")
    person = SimulatedAnnotator(label, axis=axis, jitter=cfg.jitter, seed=cfg.seed)
    lo, hi = person.extent()
    sizes = cfg.round_sizes()
    planned = plan_slices(spec.schedule, lo, hi, sizes)
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
        rounds.append({"round": r + 1, "slices": [int(z) for z in picks], "proxy": proxy, "model": None,
                       "fused": proxy, "n_drawn": eff.n_drawn, "effort_slices": eff.slices,
                       "effort_labor": eff.labor, "seconds": seconds, "timings_ms": {"proxy": seconds * 1e3}})
    eff = person.effort()
    return {"index": index, "name": case.name, "extent": [lo, hi], "before": None, "rounds": rounds,
            "proxy": rounds[-1]["proxy"], "model": None, "fused": rounds[-1]["fused"], "n_drawn": eff.n_drawn,
            "object_slices": eff.n_object_slices, "effort_slices": eff.slices, "effort_labor": eff.labor,
            "seconds": spent}


def _full_case(eng, cfg: StreamConfig, case, axis: int, index: int) -> dict:
    label = as_mask(case.label, "label")
    t0 = time.perf_counter()
    p0 = eng.predict(case.image, axis=axis)
    before = float(dice(p0 >= 0.5, label))
    _train_full(eng, case.image, label, axis, cfg.rounds * cfg.steps, p0)
    seconds = time.perf_counter() - t0
    person = SimulatedAnnotator(label, axis=axis, seed=cfg.seed)
    eff = person.effort()
    n_obj = eff.n_object_slices
    return {"index": index, "name": case.name, "before": before, "proxy": None, "model": None, "fused": 1.0,
            "n_drawn": n_obj, "object_slices": n_obj, "effort_slices": 1.0, "effort_labor": 1.0,
            "seconds": seconds, "rounds": []}


# ====================================================================== offline runner
def _offline(state: _MethodState, eng, cfg: StreamConfig, data: StreamData, cases: Sequence[int],
             total: int, chunk: int, log: Log, progress: bool, tag: str, eval_heldout: bool = True,
             stop_after: Optional[int] = None) -> bool:
    """Offline training with full labels on patches drawn from ``cases`` at random,
    in chunks of ``chunk`` steps; held-out Dice and a checkpoint after each chunk.
    Returns False when it stopped early (``stop_after`` chunks done, for tests)."""
    from ..learn.models import normalize_intensity
    from ..learn.sampler import PatchSampler, random_flip

    tr = eng.trainer
    lc = tr.config
    samplers = []
    for i in _bar(cases, progress, desc=f"{tag}: load", leave=False):
        c = data.train_case(i)
        img = _internal(c.image.astype(np.float32), data.axis).to(eng.device)
        lab = _internal(c.label.astype(np.float32), data.axis).to(eng.device)
        samplers.append(PatchSampler(normalize_intensity(img, lc.normalize), lab, torch.ones_like(lab), tr.patch,
                                     fg_fraction=lc.fg_fraction, floor=lc.residual_floor, generator=tr.generator))
    done = int(state.log.get("steps_done", 0))
    n_chunks = math.ceil(total / chunk)
    first = done // chunk
    bar = _bar(range(first, n_chunks), progress, desc=tag, initial=first, total=n_chunks)
    for ci in bar:
        if stop_after is not None and ci >= stop_after:
            return False
        n = min(chunk, total - ci * chunk)
        pick = random.Random(cfg.seed * 1_000_003 + ci)
        t0 = time.perf_counter()
        for _ in range(n):
            parts = [samplers[pick.randrange(len(samplers))].sample(1) for _ in range(lc.batch_size)]
            batch = random_flip([torch.cat(ts) for ts in zip(*parts)], tr.generator, lc.flip_axes)
            tr.step(batch)
        eng.counters["steps"] += n
        _publish(eng)
        spent = time.perf_counter() - t0
        state.log["train_seconds"] += spent
        state.log["steps_done"] = ci * chunk + n
        per_case = cfg.rounds * cfg.steps
        if eval_heldout:
            scores = _heldout(eng, data, progress)
            state.log["heldout"].append({"cases_seen": state.log["steps_done"] / per_case,
                                         "steps": state.log["steps_done"], "dice": float(np.mean(scores)),
                                         "per_case": scores})
            _write(log, progress, f"{tag:<16} steps {state.log['steps_done']:6d} (= {state.log['steps_done'] / per_case:5.1f} "
                f"cases of steps) held-out Dice {np.mean(scores):.3f}  train {spent:.0f}s")
        state.save(eng)
    return True


def _pretrained(out: Path, cfg: StreamConfig, data: StreamData, device: str, log: Log, progress: bool) -> Path:
    """The warm-start engine (offline on the first ``warm_cases`` stream cases, full
    labels, those cases committed to replay); built once per output folder."""
    from ..api import Engine

    spec = MethodSpec("pretrain", "offline")
    state = _MethodState(out / "_pretrain", "pretrain", cfg.digest())
    if state.log.get("finished"):
        return state.folder / state.log["slot"]
    eng = state.load_engine(device, {}) or Engine(engine_config(cfg, spec, device))
    cases = list(range(cfg.warm_cases))
    _offline(state, eng, cfg, data, cases, cfg.warm_total(), cfg.warm_total(), log, progress, "pretrain",
             eval_heldout=False)
    for i in cases:
        c = data.train_case(i)
        lab = _internal(as_mask(c.label).astype(np.float32), data.axis).to(eng.device)
        img = _internal(c.image.astype(np.float32), data.axis).to(eng.device)
        eng.replay.add_case(img, lab, torch.ones_like(lab), eng.config.replay_patches_per_case)
        eng.counters["cases"] += 1
    state.log["finished"] = True
    state.save(eng)
    return state.folder / state.log["slot"]


# ========================================================================== run method
def run_method(name: str, cfg: StreamConfig, data: StreamData, out: Path, device: str = "cpu",
               log: Log = print, progress: bool = True, stop_after: Optional[int] = None) -> dict:
    """Run (or resume) one method into ``out/<name>/``; returns its log.

    ``stop_after``: return after this many stream cases are logged (offline: this
    many chunks), as if interrupted; tests use it.
    """
    from ..api import Engine

    spec = parse_method(name, cfg)
    state = _MethodState(out / name, name, cfg.digest())
    if state.log.get("finished"):
        log(f"{name}: finished earlier, kept ({state.path})")
        return state.log
    overrides = _method_overrides(cfg, spec)
    eng = state.load_engine(device, overrides)
    resumed = eng is not None or state.log["cases_done"] > 0
    if spec.kind == "offline":
        if eng is None:
            eng = Engine(engine_config(cfg, spec, device))
        _note_engine(state, cfg, spec, device, log, name)
        if resumed:
            log(f"{name}: resuming at step {state.log.get('steps_done', 0)}")
        if not _offline(state, eng, cfg, data, range(cfg.n_train), cfg.offline_total(), cfg.offline_chunk(), log,
                        progress, name, stop_after=stop_after):
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
            eng = Engine.load(_pretrained(out, cfg, data, device, log, progress), device=device)
            for k, v in overrides.items():
                setattr(eng.config, k, v)
            eng.config.steps = cfg.steps
            scores = _heldout(eng, data, progress)
            state.log["heldout"].append({"cases_seen": start_case, "dice": float(np.mean(scores)),
                                         "per_case": scores})
        else:
            eng = Engine(engine_config(cfg, spec, device))
    _note_engine(state, cfg, spec, device, log, name)
    done = state.log["cases_done"]
    if resumed:
        log(f"{name}: resuming after {done} of {cfg.n_train - start_case} stream cases")
    positions = list(range(start_case, cfg.n_train))
    bar = _bar(positions, progress, desc=name, initial=done, total=len(positions))
    for j, i in enumerate(positions):
        if j < done:
            continue
        if stop_after is not None and state.log["cases_done"] >= stop_after:
            if progress and hasattr(bar, "close"):
                bar.close()
            eng.close()
            return state.log
        case = data.train_case(i)
        if spec.kind == "full":
            rec = _full_case(eng, cfg, case, data.axis, i)
        elif spec.kind == "baseline":
            rec = _baseline_case(spec, cfg, case, data.axis, i)
        else:
            rec = _sparse_case(eng, spec, cfg, case, data.axis, i)
        state.log["cases"].append(rec)
        state.log["cases_done"] = j + 1
        state.log["train_seconds"] += rec["seconds"]
        _write(log, progress, case_line(name, rec))
        seen = i + 1
        if spec.learns and (seen % cfg.eval_every == 0 or seen == cfg.n_train):
            t0 = time.perf_counter()
            scores = _heldout(eng, data, progress)
            state.log["heldout"].append({"cases_seen": seen, "dice": float(np.mean(scores)), "per_case": scores,
                                         "seconds": time.perf_counter() - t0})
            _write(log, progress, f"{name:<16} held-out Dice after {seen} cases: {np.mean(scores):.3f}")
        state.save(eng if spec.learns else None)
        if progress and hasattr(bar, "update"):
            bar.update(1)
    if progress and hasattr(bar, "close"):
        bar.close()
    state.log["finished"] = True
    state.save()
    state.drop_spare()
    eng.close()
    return state.log


def _note_engine(state: _MethodState, cfg: StreamConfig, spec: MethodSpec, device: str, log: Log,
                 name: str) -> None:
    """Record the resolved engine config (library defaults included) and the torch
    setup in the log; warn when a resumed run resolves to another config (e.g. a
    library default changed in between)."""
    resolved = engine_config(cfg, spec, device).to_dict()
    old = state.log.get("engine_config")
    if old is not None and old != resolved:
        diff = sorted(k for k in set(old) | set(resolved) if old.get(k) != resolved.get(k))
        log(f"WARNING {name}: the engine config differs from the one this log started with ({', '.join(diff)}); "
            f"the numbers of this method mix both")
    state.log.setdefault("engine_config", resolved)
    from .. import propagate

    hook = getattr(propagate, "register_pairs", None)
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(),
           "register_pairs": None if hook is None else f"{hook.__module__}.{hook.__qualname__}"}
    if state.log.get("env") not in (None, env):
        log(f"note {name}: resumed with another environment: {state.log['env']} -> {env}")
        state.log.setdefault("env_history", []).append(env)
    state.log.setdefault("env", env)


def _write(log: Log, progress: bool, line: str) -> None:
    if progress and log is print:
        from tqdm import tqdm

        tqdm.write(line, file=sys.stdout)
    else:
        log(line)


# ========================================================================== run stream
def check_run_folder(out: Path, cfg: StreamConfig, data: StreamData) -> None:
    """Create ``out/config.json`` or check that it matches ``cfg`` and the data."""
    path = out / "config.json"
    meta = {"version": LOG_VERSION, "digest": cfg.digest(), "stream": cfg.to_dict(), "data": data.meta()}
    old = _read_json(path)
    if old is None:
        atomic_write(path, json.dumps(meta, indent=1))
        return
    mine, theirs = cfg.identity(), {k: v for k, v in old.get("stream", {}).items() if k not in ("name", "methods")}
    diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    if diff or old.get("data", {}).get("train") != data.meta()["train"] \
            or old.get("data", {}).get("test") != data.meta()["test"]:
        what = ", ".join(f"{k}: {theirs.get(k)!r} -> {mine.get(k)!r}" for k in diff) or "the data's cases differ"
        raise InputError(f"{out} holds a run with another config ({what}); resume with the same settings or "
                         f"choose another --out")
    # remember every method ever asked for in this folder
    methods = list(dict.fromkeys(list(old["stream"].get("methods", [])) + list(cfg.methods)))
    old["stream"]["methods"] = methods
    atomic_write(path, json.dumps(old, indent=1))


def run_stream(cfg: StreamConfig, out: str | os.PathLike, device: str = "cpu", log: Log = print,
               progress: bool = True, report: bool = True) -> dict[str, dict]:
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
    log(f"protocol: {cfg.rounds} rounds of {sizes} slices, {cfg.steps} steps per round, held-out every "
        f"{cfg.eval_every} cases; methods {', '.join(cfg.methods)}; device {device}; out {out}")
    logs: dict[str, dict] = {}
    t_start = time.perf_counter()
    header_done = False
    for m in cfg.methods:
        if not header_done:
            _write(log, progress, _HEADER)
            header_done = True
        t0 = time.perf_counter()
        logs[m] = run_method(m, cfg, data, out, device=device, log=log, progress=progress)
        log(f"{m}: done in {time.perf_counter() - t0:.0f}s")
    if report:
        from .report import write_report

        files = write_report(out)
        log(f"report: {', '.join(str(f) for f in files)}")
    log(f"total {time.perf_counter() - t_start:.0f}s")
    return logs
