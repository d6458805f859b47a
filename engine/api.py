"""The thin Python API a viewer or product team calls (DESIGN §2 wrapped as calls).

    import engine
    eng = engine.Engine()                      # best device, small 3D U-Net
    s = eng.open(image, spacing=(1.25,) * 3, axis=2)
    s.set_extent(first, last)                  # the object's first/last slice on `axis`
    for z in s.propose(3):                     # cell centres of the extent (Config.proposal)
        s.annotate(z, person_draws(z))
    proxy, conf = s.propagate()                # registration once per case, then propagation
    s.learn(20)                                # or fut = s.learn_async(20)
    for z in s.propose(2):                     # the largest gaps next
        s.annotate(z, person_draws(z))
    s.propagate(); s.learn(20)
    mask = s.result()                          # fused front-end mask, caller's array type
    s.commit()                                 # into the replay buffer; stream counters on

Arrays go in and out as NumPy, PyTorch or CuPy; results come back in the type of the
image given to :meth:`Engine.open` (DLPack, no copy when the device matches).

Concurrency (what is serialised and why):
* one ``Engine`` may serve several sessions from several threads;
* the segmenter's weights are updated by one learning job at a time (``Engine``'s
  train lock): Adam steps on shared weights cannot interleave meaningfully;
* predictions read a *serving copy* of the weights that is swapped in, under the
  serve lock, only after a learning job finished, so ``predict()`` during
  ``learn_async`` answers from the last finished weights, never half-updated ones;
* a session's own state (annotations, proxy, extent) is guarded by the session lock;
  a second ``learn`` on a session whose learning is still running raises
  :class:`~engine.errors.BusyError`.
"""

from __future__ import annotations

import copy
import json
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch

from . import errors as E
from .guide import RULES, propose as _propose_rule, residual_scores
from .learn import LearnConfig, Trainer
from .learn import checkpoint as _ckpt
from .learn.losses import build_targets
from .learn.models import normalize_intensity, sliding_window_inference

__all__ = ["Config", "Engine", "Session"]

STATE_VERSION = 1

#: Model weights ``lam`` the evidence gate chooses from (``F = Q + lam (1 - C) (P - Q)``).
FUSION_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def fusion_errors(q: torch.Tensor, c: torch.Tensor, p: torch.Tensor, truth: torch.Tensor) -> list[int]:
    """Wrong pixels of ``F = Q + lam (1 - C) (P - Q) >= 0.5`` against ``truth`` for every
    ``lam`` of :data:`FUSION_WEIGHTS`, followed by the truth's area (one evidence row)."""
    t = truth.bool()
    q, c, p = q.float(), c.float(), p.float()
    d = (1.0 - c) * (p - q)
    counts = [((q + lam * d >= 0.5) != t).sum() for lam in FUSION_WEIGHTS] + [t.sum()]
    return [int(v) for v in torch.stack(counts).tolist()]  # one host sync


def fit_fusion_weight(evidence: Sequence[Sequence[int]]) -> float:
    """The ``lam`` of :data:`FUSION_WEIGHTS` with the fewest wrong pixels summed over the
    evidence rows (ties: the smaller ``lam``, i.e. trust the person's drawing); 0 without
    evidence."""
    if not evidence:
        return 0.0
    totals = [sum(int(r[i]) for r in evidence) for i in range(len(FUSION_WEIGHTS))]
    return FUSION_WEIGHTS[min(range(len(totals)), key=lambda i: (totals[i], i))]


# ----------------------------------------------------------------------------- config
@dataclass
class Config:
    """Everything an :class:`Engine` needs; every field has a measured default.

    device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
    learn: the segmenter / trainer hyper-parameters (:class:`engine.learn.LearnConfig`).
    registration: proxy-mask registration backend, ``"native"`` or ``"elastix"``.
    fusion: contributor fusion between annotated slices, ``"linear"`` or ``"nearest"``.
    fusion_gate: how much of the model enters the front-end result,
        ``F = Q + lam (1 - C) (P - Q)``. ``"evidence"`` (default) fits ``lam`` from
        :data:`FUSION_WEIGHTS` to the slices people drew *after* a proxy and a
        prediction of that slice existed (the last ``fusion_window`` such slices,
        committed cases and the open session): ``lam`` is the weight with the fewest
        wrong pixels there, 0 until there is any evidence. ``"none"``: the paper's
        fixed ``F = C Q + (1 - C) P`` (``lam = 1``). On the left-atrium demo stream an
        under-trained model pulled the fixed fusion below the proxy (0.865 vs 0.917).
    fusion_window: evidence slices the gate looks back over.
    min_mass: a propagated mask stops when its mass falls under this share of its source.
    proposal: slice-proposal rule (``engine.guide.RULES``). Default ``"cells"``: on the
        left-atrium stream it beat evenly spaced slices at equal count (+0.006 fused
        Dice with learning, +0.007 without), while the paper's residual-guided rule
        (``"residual"``) lost to them (-0.006); see benchmarks/RESULTS.md.
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
        self.learn.validate()
        choices = {"registration": ("native", "elastix"), "fusion": ("linear", "nearest"),
                   "fusion_gate": ("evidence", "none"),
                   "proposal": RULES, "smoothing": ("none", "self"), "replay_policy": ("reservoir", "fifo")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise E.InputError(f"Config.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name, lo in (("min_gap", 0), ("steps", 0), ("fusion_window", 1), ("replay_capacity", 1),
                         ("replay_patches_per_case", 1), ("seed", 0)):
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


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise E.InputError(f"device {name!r} is not a device name") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise E.BackendError(f"device {name!r} requested but torch sees no CUDA device")
    return dev


# ----------------------------------------------------------------------- array types
class _ArrayKind:
    """Remembers the caller's array type so results go back the way they came."""

    def __init__(self, x: Any) -> None:
        mod = type(x).__module__.split(".")[0]
        if isinstance(x, torch.Tensor):
            self.kind = "torch"
        elif isinstance(x, np.ndarray):
            self.kind = "numpy"
        elif mod == "cupy":
            self.kind = "cupy"
        elif hasattr(x, "__dlpack__"):
            self.kind = "dlpack"
        else:
            self.kind = "numpy"  # lists and scalars: NumPy out

    def out(self, t: torch.Tensor) -> Any:
        if self.kind == "torch":
            return t
        if self.kind == "cupy" and t.is_cuda:
            import cupy

            return cupy.from_dlpack(t.contiguous())
        return t.detach().cpu().numpy()


def as_tensor(x: Any, name: str, device: torch.device) -> torch.Tensor:
    """NumPy / PyTorch / CuPy / DLPack → tensor on ``device`` (no copy when it is
    already there)."""
    if isinstance(x, torch.Tensor):
        t = x
    elif isinstance(x, np.ndarray):
        if x.dtype == np.bool_:
            x = x.astype(np.uint8)
        t = torch.from_numpy(np.ascontiguousarray(x)) if x.dtype.byteorder not in (">",) else torch.from_numpy(
            x.astype(x.dtype.newbyteorder("=")))
    elif hasattr(x, "__dlpack__"):
        t = torch.from_dlpack(x)
    else:
        try:
            t = torch.as_tensor(np.asarray(x))
        except Exception as exc:  # noqa: BLE001
            raise E.InputError(f"{name} must be an array (NumPy, PyTorch, CuPy), got {type(x).__name__}") from exc
    return t.to(device)


# --------------------------------------------------------------------------- timings
class _Timer:
    """Stage timings in ms: CUDA events on GPU (read lazily), perf_counter on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._marks: list[tuple[str, Any, Any]] = []

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            yield
            b.record()
            self._marks.append((name, a, b))
        else:
            t0 = time.perf_counter()
            yield
            self._marks.append((name, t0, time.perf_counter()))

    def result(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, a, b in self._marks:
            if self.cuda:
                b.synchronize()  # timings are read after the work, never inside it
                ms = a.elapsed_time(b)
            else:
                ms = (b - a) * 1e3
            out[name] = out.get(name, 0.0) + ms
        out["total"] = sum(out.values())
        return out


# ---------------------------------------------------------------------------- engine
class Engine:
    """Owns the segmenter, its optimiser, the replay buffer and the device.

    ``Engine(config=None)`` builds a fresh, untrained engine; :meth:`load` restores a
    saved one. Thread-safe: see the module docstring for what is serialised.
    """

    def __init__(self, config: Optional[Config] = None) -> None:
        config = copy.deepcopy(config) if config is not None else Config()
        if not isinstance(config, Config):
            raise E.InputError(f"config must be an engine.Config, got {type(config).__name__}")
        config.validate()
        self.config = config
        self.device = _resolve_device(config.device)
        with torch.random.fork_rng(devices=[]):  # seeded weight init, global RNG untouched
            torch.manual_seed(config.seed)
            self.trainer = Trainer(config.learn, self.device)
        self.replay = self.trainer.make_replay(config.replay_capacity, config.replay_policy)
        self.counters: dict[str, int] = {"cases": 0, "steps": 0, "rounds": 0, "weights_version": 0}
        self._serving = copy.deepcopy(self.trainer.model).eval()
        self._fusion_evidence: list[list[int]] = []  # rows of fusion_errors, newest last
        self._train_lock = threading.Lock()
        self._serve_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dilseg-learn")

    # --- weights -------------------------------------------------------------------
    @property
    def trained(self) -> bool:
        """Whether the segmenter has taken any training step."""
        return self.counters["steps"] > 0

    def _publish(self, bump: bool = True) -> None:
        """Swap the finished training weights into the serving copy."""
        with self._serve_lock:
            with torch.no_grad():
                for dst, src in zip(self._serving.state_dict().values(), self.trainer.model.state_dict().values()):
                    dst.copy_(src)
            if bump:
                self.counters["weights_version"] += 1

    def fusion_weight(self, extra: Sequence[Sequence[int]] = ()) -> float:
        """The model's weight ``lam`` in the front-end fusion (``Config.fusion_gate``),
        from the committed evidence plus ``extra`` rows of an open session."""
        if self.config.fusion_gate == "none":
            return 1.0
        rows = (self._fusion_evidence + [list(r) for r in extra])[-self.config.fusion_window:]
        return fit_fusion_weight(rows)

    def predict(self, image: Any, axis: int = 0) -> Any:
        """Back-end probabilities for a whole volume with no interaction at all."""
        kind = _ArrayKind(image)
        t = _check_image(as_tensor(image, "image", self.device))
        axis = _check_axis(axis)
        p = self._predict_internal(t.movedim(axis, 0).contiguous())
        return kind.out(p.movedim(0, axis))

    def _predict_internal(self, vol: torch.Tensor) -> torch.Tensor:
        """Sliding-window probabilities from the serving copy of the weights."""
        cfg = self.trainer.config
        with self._serve_lock, torch.no_grad():
            return sliding_window_inference(
                self._serving, normalize_intensity(vol, cfg.normalize), self.trainer.patch,
                overlap=cfg.sw_overlap, blend=cfg.sw_blend, batch_size=cfg.sw_batch,
                autocast_dtype=self.trainer.amp_dtype, channels_last=cfg.channels_last)

    # --- sessions ------------------------------------------------------------------
    def open(self, image: Any, spacing: Optional[Sequence[float]] = None, axis: int = 0) -> "Session":
        """Open a session for one case of the stream (see :class:`Session`)."""
        return Session(self, image, spacing=spacing, axis=axis)

    # --- persistence -----------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> Path:
        """Atomically persist model, optimiser, replay buffer, RNGs, counters, config."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with self._train_lock:
            state = dict(self.counters, fusion_evidence=[list(r) for r in self._fusion_evidence])
            _ckpt.save(folder / "engine.ckpt", self.trainer, self.replay, state)
            _atomic_text(folder / "config.json", json.dumps({"version": STATE_VERSION, "config": self.config.to_dict()},
                                                            indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, device: Optional[str] = None) -> "Engine":
        """Restore an engine saved by :meth:`save` (optionally onto another device)."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise E.CheckpointError(f"cannot read {folder / 'config.json'}: {exc}") from exc
        if not isinstance(meta, dict) or meta.get("version") != STATE_VERSION:
            raise E.CheckpointError(f"{folder / 'config.json'} has an unknown version")
        config = Config.from_dict(meta["config"])
        if device is not None:
            config.device = device
        eng = cls(config)
        counters = _ckpt.load(folder / "engine.ckpt", eng.trainer, eng.replay)
        evidence = counters.pop("fusion_evidence", [])
        eng._fusion_evidence = [[int(v) for v in r] for r in evidence]
        eng.counters.update({k: int(v) for k, v in counters.items()})
        eng._publish(bump=False)  # the restored weights are the saved version
        return eng

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _check_axis(axis: Any) -> int:
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool) or not 0 <= int(axis) <= 2:
        raise E.InputError(f"axis must be 0, 1 or 2, got {axis!r}")
    return int(axis)


def _check_image(t: torch.Tensor) -> torch.Tensor:
    if t.dim() != 3:
        raise E.ShapeError(f"image must be a 3D volume, got shape {tuple(t.shape)}")
    if min(t.shape) < 2:
        raise E.ShapeError(f"image must have at least 2 voxels along every axis, got {tuple(t.shape)}")
    if t.dtype == torch.bool or t.is_complex():
        raise E.DTypeError(f"image dtype {t.dtype} is not an intensity type")
    t = t.float()
    if not bool(torch.isfinite(t).all()):
        raise E.NonFiniteError("image holds NaN or Inf")
    return t


# ---------------------------------------------------------------------------- session
class Session:
    """One case of the stream: annotations, proxy mask, learning and the result.

    The annotation axis ``axis`` is moved first internally; every index and mask the
    caller passes is in the caller's own layout. Methods raise typed
    :mod:`engine.errors` exceptions and leave the session unchanged on bad input.
    """

    def __init__(self, engine: Engine, image: Any, spacing: Optional[Sequence[float]] = None, axis: int = 0) -> None:
        self.engine = engine
        self.axis = _check_axis(axis)
        self._kind = _ArrayKind(image)
        t = _check_image(as_tensor(image, "image", engine.device))
        self.shape = tuple(t.shape)
        if spacing is not None:
            sp = tuple(float(s) for s in spacing)
            if len(sp) != 3 or not all(np.isfinite(sp)) or min(sp) <= 0:
                raise E.InputError(f"spacing must be three positive numbers, got {spacing!r}")
            self.spacing = sp
        else:
            self.spacing = (1.0, 1.0, 1.0)
        self.image = t.movedim(self.axis, 0).contiguous()  # (D, H, W), D = annotation axis
        self.D = self.image.shape[0]
        self._others = [d for d in range(3) if d != self.axis]
        self._lock = threading.RLock()
        self._annotations: dict[tuple[int, int], torch.Tensor] = {}  # (internal axis, index) -> mask
        self._history: list[tuple[str, Any]] = []
        self.extent: Optional[tuple[int, int]] = None
        self._fields = None  # registration, once per case
        self._proxy: Optional[torch.Tensor] = None
        self._conf: Optional[torch.Tensor] = None
        self._proxy_stamp = -1
        self._proxy_keys: frozenset = frozenset()  # annotations the cached proxy was built from
        # evidence for the fusion gate: slices drawn after a proxy and a trained model's
        # prediction of them existed -> (q, c, p) of that slice then; rows are computed
        # against the slice's current annotation, so redraw / undo / erase are honoured
        self._evidence_src: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._ever_drawn: set[tuple[int, int]] = set()
        self._pred_trained = False
        self._stamp = 0  # bumps on every annotation change
        self._p0: Optional[torch.Tensor] = None  # prediction before any interaction
        self._pred: Optional[torch.Tensor] = None
        self._pred_version = -1
        self._target: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        self._learning: Optional[Future] = None
        self._closed = False
        self.rounds = 0
        self.timings: dict[str, dict[str, float]] = {}

    # --- helpers ---------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise E.SessionClosedError("the session is closed (committed or closed); open a new one")

    def _internal_axis(self, axis: Optional[int]) -> int:
        if axis is None:
            return 0
        axis = _check_axis(axis)
        return 0 if axis == self.axis else 1 + self._others.index(axis)

    def _record(self, call: str, timer: _Timer) -> dict[str, float]:
        t = timer.result()
        self.timings[call] = t
        return t

    @property
    def annotated(self) -> dict[int, list[int]]:
        """Annotated slice indices per caller axis."""
        out: dict[int, list[int]] = {}
        for (ia, idx) in sorted(self._annotations):
            caller_axis = self.axis if ia == 0 else self._others[ia - 1]
            out.setdefault(caller_axis, []).append(idx)
        return out

    def _annotated_main(self) -> list[int]:
        return sorted(i for (a, i) in self._annotations if a == 0)

    # --- interaction -------------------------------------------------------------------
    def set_extent(self, first: int, last: int) -> None:
        """The object's first and last slice along the annotation axis (inclusive).
        Outside it every voxel is known background for learning and fusion."""
        with self._lock:
            self._check_open()
            for name, v in (("first", first), ("last", last)):
                if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
                    raise E.SliceIndexError(f"{name} must be an int slice index, got {v!r}")
                if not 0 <= int(v) < self.D:
                    raise E.SliceIndexError(f"{name}={v} outside [0, {self.D - 1}] on axis {self.axis}")
            if int(first) > int(last):
                raise E.SliceIndexError(f"extent first={first} > last={last}")
            self._history.append(("extent", self.extent))
            self.extent = (int(first), int(last))
            self._stamp += 1

    def annotate(self, index: int, mask: Any, axis: Optional[int] = None) -> None:
        """The person's binary 2D mask of slice ``index`` on ``axis`` (default: the
        session's annotation axis). An all-zero mask declares an empty slice."""
        with self._lock:
            self._check_open()
            ia = self._internal_axis(axis)
            size = self.image.shape[ia]
            if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
                raise E.SliceIndexError(f"index must be an int, got {index!r}")
            index = int(index)
            if not 0 <= index < size:
                raise E.SliceIndexError(f"slice {index} outside [0, {size - 1}] on axis "
                                        f"{self.axis if ia == 0 else self._others[ia - 1]}")
            m = as_tensor(mask, "mask", self.engine.device)
            caller_axis = self.axis if ia == 0 else self._others[ia - 1]
            plane = tuple(s for d, s in enumerate(self.shape) if d != caller_axis)  # caller's layout
            if m.dim() != 2 or tuple(m.shape) != plane:
                raise E.ShapeError(f"mask must have shape {plane} for a slice on axis {caller_axis}, "
                                   f"got {tuple(m.shape)}")
            if ia != 0:
                # internal planes of the other axes are (annotation axis, remaining axis);
                # the caller's plane keeps its own axis order
                rest = [d for d in range(3) if d not in (caller_axis, self.axis)][0]
                if self.axis > rest:
                    m = m.t()
            if m.is_floating_point() and not bool(torch.isfinite(m).all()):
                raise E.NonFiniteError("mask holds NaN or Inf")
            if m.is_complex() or not bool(((m == 0) | (m == 1)).all()):
                raise E.MaskError("mask must be binary (0/1 or bool)")
            key = (ia, index)
            self._note_evidence(key)
            self._history.append(("annotate", (key, self._annotations.get(key))))
            self._annotations[key] = m.to(torch.uint8).contiguous()
            self._ever_drawn.add(key)
            self._stamp += 1

    def _note_evidence(self, key: tuple[int, int]) -> None:
        """Keep what the front end would have shown on a slice the person draws now for
        the first time, if a proxy (not built from it) and a trained prediction exist."""
        ia, z = key
        if ia != 0 or key in self._ever_drawn or key in self._proxy_keys or self._proxy is None:
            return
        if self._pred is None or not self._pred_trained:
            return
        if self.extent is not None and not self.extent[0] <= z <= self.extent[1]:
            return
        self._evidence_src[key] = (self._proxy[z].clone(), self._conf[z].clone(), self._pred[z].clone())

    def _evidence_rows(self) -> list[list[int]]:
        return [fusion_errors(q, c, p, self._annotations[key])
                for key, (q, c, p) in sorted(self._evidence_src.items()) if key in self._annotations]

    @property
    def fusion_weight(self) -> float:
        """The model's weight ``lam`` in :meth:`result`'s fusion now (``Config.fusion_gate``)."""
        with self._lock:
            return self.engine.fusion_weight(self._evidence_rows())

    def erase(self, index: int, axis: Optional[int] = None) -> None:
        """Remove the annotation of slice ``index`` (on ``axis``)."""
        with self._lock:
            self._check_open()
            key = (self._internal_axis(axis), index)
            if key not in self._annotations:
                raise E.StateError(f"slice {index} is not annotated on that axis")
            self._history.append(("annotate", (key, self._annotations[key])))
            del self._annotations[key]
            self._stamp += 1

    def undo(self) -> None:
        """Revert the last annotate / erase / set_extent."""
        with self._lock:
            self._check_open()
            if not self._history:
                raise E.StateError("nothing to undo")
            kind, payload = self._history.pop()
            if kind == "extent":
                self.extent = payload
            else:
                key, previous = payload
                if previous is None:
                    self._annotations.pop(key, None)
                else:
                    self._annotations[key] = previous
            self._stamp += 1

    # --- back end ------------------------------------------------------------------------
    def predict(self, return_timings: bool = False) -> Any:
        """Back-end probabilities from the last finished weights (caller's array type)."""
        with self._lock:
            self._check_open()
            timer = _Timer(self.engine.device)
            with timer.stage("predict"):
                p = self._prediction()
            out = self._kind.out(p.movedim(0, self.axis))
            t = self._record("predict", timer)
        return (out, t) if return_timings else out

    def _prediction(self) -> torch.Tensor:
        version = self.engine.counters["weights_version"]
        if self._pred is None or self._pred_version != version:
            self._pred = self.engine._predict_internal(self.image)
            self._pred_version = version
            self._pred_trained = self.engine.trained
            if self._p0 is None:
                self._p0 = self._pred
        return self._pred

    def propose(self, k: int, extent: Optional[tuple[int, int]] = None, rule: Optional[str] = None,
                return_timings: bool = False) -> Any:
        """The next ``k`` slices to draw on the annotation axis (a list of ints).

        ``rule`` (default ``Config.proposal``) is one of :data:`engine.guide.RULES`.
        The model-guided rules (``residual``, ``residual_gap``) fall back to evenly
        spaced slices over the extent (``extent=(first, last)`` sets it) or the whole
        axis while the model is untrained or nothing is drawn, and to the gap rule while
        only the model is missing; the model-free rules (``even``, ``gap``, ``cells``,
        ``random``) apply from the first call.
        """
        with self._lock:
            self._check_open()
            if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
                raise E.InputError(f"k must be an int >= 1, got {k!r}")
            if extent is not None:
                self.set_extent(*extent)
            rule = rule or self.engine.config.proposal
            if rule not in RULES:
                raise E.InputError(f"rule must be one of {RULES}, got {rule!r}")
            timer = _Timer(self.engine.device)
            ann = self._annotated_main()
            scores = None
            with timer.stage("propose"):
                if rule in ("residual", "residual_gap"):
                    if not self.engine.trained or not self._annotations:
                        rule = "even" if not ann else "gap"
                    else:
                        q, c = self._proxy_and_confidence(timer)
                        p = self._prediction()
                        w = (1.0 - c) if self.engine.config.residual_weighting else None
                        scores = residual_scores(q, p, w)
                g = torch.Generator().manual_seed(self.engine.config.seed + self._stamp)
                out = _propose_rule(rule, int(k), self.D, ann, self.extent, scores,
                                    self.engine.config.min_gap, generator=g)
            t = self._record("propose", timer)
        return (out, t) if return_timings else out

    # --- proxy mask --------------------------------------------------------------------------
    def _register(self, timer: _Timer):
        # the intensity window follows the extent, so a new extent means a new registration
        if self._fields is None or getattr(self._fields, "extent", None) != self.extent:
            from .propagate import register_pairs

            with timer.stage("register"):
                self._fields = register_pairs(self.image, backend=self.engine.config.registration, extent=self.extent)
        return self._fields

    def _proxy_and_confidence(self, timer: _Timer) -> tuple[torch.Tensor, torch.Tensor]:
        if self._proxy is not None and self._proxy_stamp == self._stamp:
            return self._proxy, self._conf
        if not self._annotations:
            raise E.StateError("nothing annotated yet: annotate at least one slice before propagating")
        from .ops import confidence_map, propagate_chain

        cfg = self.engine.config
        D, H, W = self.image.shape
        main = self._annotated_main()
        fields_ = self._register(timer) if main else None  # its own stage, before propagate
        with timer.stage("propagate"):
            if main:
                masks = torch.zeros((D, H, W), dtype=torch.float32, device=self.image.device)
                for z in main:
                    masks[z] = self._annotations[(0, z)].float()
                res = propagate_chain(masks, main, fields_.fwd, fields_.bwd, min_mass=cfg.min_mass, fuse=cfg.fusion)
                q = res.q
            else:
                q = torch.zeros((D, H, W), dtype=torch.float32, device=self.image.device)
            # drawn planes on the other axes are known exactly
            for (ia, idx), m in self._annotations.items():
                if ia == 1:
                    q[:, idx, :] = m.float()
                elif ia == 2:
                    q[:, :, idx] = m.float()
            per_axis = []
            for ia, n in enumerate((D, H, W)):
                idx = sorted(i for (a, i) in self._annotations if a == ia)
                per_axis.append(idx if idx else None)
            c = confidence_map((D, H, W), per_axis)
            if self.extent is not None:
                lo, hi = self.extent
                outside = torch.ones(D, dtype=torch.bool, device=q.device)
                outside[lo : hi + 1] = False
                q[outside] = 0.0
                c[outside] = 1.0
        self._proxy, self._conf, self._proxy_stamp = q, c, self._stamp
        self._proxy_keys = frozenset(self._annotations)
        return q, c

    def propagate(self, return_timings: bool = False) -> Any:
        """Proxy mask ``Q`` (soft, [0,1]) and confidence ``C`` from the annotations.

        Registration of the adjacent slice pairs runs once per case; later calls only
        re-propagate. Returns ``(Q, C)`` in the caller's layout and array type.
        """
        with self._lock:
            self._check_open()
            timer = _Timer(self.engine.device)
            q, c = self._proxy_and_confidence(timer)
            out = (self._kind.out(q.movedim(0, self.axis)), self._kind.out(c.movedim(0, self.axis)))
            t = self._record("propagate", timer)
        return (out, t) if return_timings else out

    # --- learning ------------------------------------------------------------------------------
    def _learn_inputs(self, timer: _Timer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg = self.engine.config
        q, c = self._proxy_and_confidence(timer)
        with timer.stage("predict"):
            p = self._prediction()  # the residual |Q - P| steers where patches are drawn
        p0 = self._p0 if self._p0 is not None else p  # the model's belief before this case
        target, weight = build_targets(q, c, self.extent, 0, p0=p0, smoothing=cfg.smoothing, eps=cfg.smoothing_eps)
        residual = (q - p).abs()
        return target, weight, residual

    def _run_learning(self, steps: int, target, weight, residual, timer: _Timer) -> dict[str, float]:
        eng = self.engine
        with eng._train_lock:
            with timer.stage("learn"):
                eng.trainer.train_case(self.image, target, weight, steps, replay=eng.replay,
                                       replay_ratio=eng.config.replay_ratio, residual=residual)
                eng.counters["steps"] += steps
                eng.counters["rounds"] += 1
            eng._publish()
        return timer.result()

    def learn(self, steps: Optional[int] = None, return_timings: bool = False) -> Any:
        """Train the shared segmenter ``steps`` steps on this case's proxy mask (blocking)."""
        fut = self.learn_async(steps)
        t = fut.result()
        return t if return_timings else None

    def learn_async(self, steps: Optional[int] = None) -> Future:
        """Start learning in the background; returns a Future of the timing dict.

        The session stays usable: ``predict()`` answers from the last finished
        weights until this job completes. A second learn on this session while one
        runs raises :class:`~engine.errors.BusyError`.
        """
        with self._lock:
            self._check_open()
            steps = self.engine.config.steps if steps is None else steps
            if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 0:
                raise E.InputError(f"steps must be an int >= 0, got {steps!r}")
            if self._learning is not None and not self._learning.done():
                raise E.BusyError("this session is already learning; wait for its future first")
            timer = _Timer(self.engine.device)
            target, weight, residual = self._learn_inputs(timer)
            self._target = (target, weight)
            self.rounds += 1
            fut = self.engine._pool.submit(self._run_learning, int(steps), target, weight, residual, timer)
            self._learning = fut

            def _done(f: Future) -> None:
                if f.exception() is None:
                    self.timings["learn"] = f.result()

            fut.add_done_callback(_done)
            return fut

    # --- front end ---------------------------------------------------------------------------
    def result(self, return_timings: bool = False, soft: bool = False) -> Any:
        """The fused front-end mask ``F = Q + lam (1 - C) (P - Q)`` inside the extent,
        background outside, thresholded at 0.5 (uint8; ``soft=True``: float32 F).
        ``lam`` is :attr:`fusion_weight` (1 with ``Config.fusion_gate="none"``: the
        paper's ``F = C Q + (1 - C) P``). With nothing annotated: the prediction alone."""
        with self._lock:
            self._check_open()
            timer = _Timer(self.engine.device)
            with timer.stage("predict"):
                p = self._prediction()
            if self._annotations:
                q, c = self._proxy_and_confidence(timer)
                with timer.stage("fuse"):
                    lam = self.engine.fusion_weight(self._evidence_rows())
                    f = q + lam * (1.0 - c) * (p - q)
                    if self.extent is not None:
                        lo, hi = self.extent
                        f[:lo] = 0.0
                        f[hi + 1 :] = 0.0
            else:
                f = p
            out = f if soft else (f >= 0.5).to(torch.uint8)
            res = self._kind.out(out.movedim(0, self.axis))
            t = self._record("result", timer)
        return (res, t) if return_timings else res

    def commit(self, final_mask: Any = None) -> None:
        """Store the case (patches, final target, weights) in the replay buffer, move
        the stream counters on, and close the session.

        ``final_mask``: the person's corrected 3D mask (caller's layout, the image's
        shape, binary, finite; NumPy / torch / CuPy). When given it is the case's
        final training target with confidence 1 everywhere, instead of the proxy
        mask and its confidence. Bad input raises a typed error and leaves the
        session open and unchanged."""
        with self._lock:
            self._check_open()
            final = self._check_final_mask(final_mask) if final_mask is not None else None
            if self._learning is not None:
                self._learning.result()
            eng = self.engine
            if final is not None:
                p = self._prediction()  # the residual |T - P| steers where patches are drawn
                target, weight, residual = final, torch.ones_like(final), (final - p).abs()
            elif self._annotations:
                timer = _Timer(eng.device)
                target, weight, residual = self._learn_inputs(timer)
            rows = self._evidence_rows()
            with eng._train_lock:  # counters and the buffer change under the engine's train lock
                if final is not None or self._annotations:
                    eng.replay.add_case(self.image, target, weight, eng.config.replay_patches_per_case,
                                        residual=residual)
                eng._fusion_evidence = (eng._fusion_evidence + rows)[-eng.config.fusion_window:]
                eng.counters["cases"] += 1
            self._closed = True

    def _check_final_mask(self, mask: Any) -> torch.Tensor:
        """A final 3D mask in the caller's layout -> float32 (D, H, W) on the device."""
        m = as_tensor(mask, "final_mask", self.engine.device)
        if tuple(m.shape) != self.shape:
            raise E.ShapeError(f"final_mask must have the image's shape {self.shape}, got {tuple(m.shape)}")
        if m.is_complex():
            raise E.MaskError("final_mask must be binary (0/1 or bool), got a complex array")
        if m.is_floating_point() and not bool(torch.isfinite(m).all()):
            raise E.NonFiniteError("final_mask holds NaN or Inf")
        if not bool(((m == 0) | (m == 1)).all()):
            raise E.MaskError("final_mask must be binary (0/1 or bool)")
        return m.float().movedim(self.axis, 0).contiguous()

    def close(self) -> None:
        """Close without committing (waits for a running learning job)."""
        with self._lock:
            if self._learning is not None:
                try:
                    self._learning.result()
                finally:
                    self._learning = None
            self._closed = True

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self._closed:
            self.close()
