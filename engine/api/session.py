"""``Session``: one case of the stream. It validates what the caller hands in and
orchestrates; the work is delegated: drawings to the
:class:`~engine.api.annotations.AnnotationStore`, registration and the proxy to
:mod:`engine.propagate`, proposals to the :mod:`engine.guide` registry, targets to
:mod:`engine.learn`, the fused result to the :mod:`~engine.api.fusion` gate.

The annotation axis ``axis`` is moved first internally; every index and mask the
caller passes is in the caller's own layout. A session's own state (annotations,
proxy, extent) is guarded by the session lock; a second ``learn`` on a session whose
learning is still running raises :class:`~engine.errors.BusyError`.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np
import torch

from .. import errors as E
from ..checks import check_axis
from ..guide import REGISTRY, ProposalContext, residual_scores
from ..learn.losses import build_targets
from ..propagate import ProxyResult
from .annotations import AnnotationStore
from .arrays import (
    ArrayKind,
    as_tensor,
    check_image,
    check_slice_index,
    check_slice_mask,
    check_volume_mask,
    internal_spacing,
)
from .fusion import SessionEvidence, fuse
from .proxycache import ProxyCache
from .roi import Box, ModelView, bbox2d, drawn_boxes, reaches_past
from .timing import LazyTimings, Timer

if TYPE_CHECKING:  # the engine opens sessions; a session only holds its engine
    from .engine import Engine

__all__ = ["Session"]


class Session:
    """One case of the stream: annotations, proxy mask, learning and the result.

    Methods raise typed :mod:`engine.errors` exceptions and leave the session
    unchanged on bad input.
    """

    def __init__(self, engine: "Engine", image: Any, spacing: Optional[Sequence[float]] = None, axis: int = 0) -> None:
        self.engine = engine
        self.axis = check_axis(axis, negative=False)
        self._kind = ArrayKind(image)
        t = check_image(as_tensor(image, "image", engine.device))
        self.shape = tuple(t.shape)
        self._spacing = internal_spacing(spacing, self.axis)  # annotation axis first; None: unknown
        self.spacing = (1.0, 1.0, 1.0) if spacing is None else tuple(float(v) for v in spacing)
        self.image = t.movedim(self.axis, 0).contiguous()  # (D, H, W), D = annotation axis
        self.D = self.image.shape[0]
        self._others = [d for d in range(3) if d != self.axis]
        self._lock = threading.RLock()
        self._store = AnnotationStore()
        self._evidence = SessionEvidence()
        self._pred: Optional[torch.Tensor] = None
        self._pred_version = -1
        self._pred_trained = False
        self._p0: Optional[torch.Tensor] = None  # prediction before any interaction
        self._learning: Optional[Future] = None
        self._closed = False
        self._observed = False  # this case's object is in the engine's fingerprint
        self._view = ModelView(engine, self.image, self._spacing)  # the region of interest on the planned grid
        self._boxes: dict[int, tuple] = {}  # id(mask) -> (mask, its in-plane bbox)
        self._proxies = ProxyCache(self.image, self.axis, self._spacing, self._boxes)  # registration and proxy, cached
        self._lam: tuple[tuple, float] = ((), 0.0)  # (what it depends on, the fusion weight)
        self._pred_stamp = -1  # annotation stamp the prediction's region was built from
        self.rounds = 0
        self._timers: dict[str, Timer] = {}  # per call, the last one (read lazily: CUDA events)
        engine.observe(self.image, self._spacing or (1.0, 1.0, 1.0))

    # --- helpers ---------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise E.SessionClosedError("the session is closed (committed or closed); open a new one")

    def _internal_axis(self, axis: Optional[int]) -> int:
        if axis is None:
            return 0
        axis = check_axis(axis, negative=False)
        return 0 if axis == self.axis else 1 + self._others.index(axis)

    def _caller_axis(self, ia: int) -> int:
        return self.axis if ia == 0 else self._others[ia - 1]

    def _record(self, call: str, timer: Timer, want: bool = True) -> Optional[dict[str, float]]:
        """Keep ``timer`` as the call's last breakdown; its ms only if asked (CUDA: a wait)."""
        self._timers[call] = timer
        return timer.result() if want else None

    @property
    def timings(self) -> dict[str, dict[str, float]]:
        """Per call, the last breakdown in ms (``register``, ``propagate``, ``predict``,
        ``learn``, ``propose``, ``fuse``, ``total``)."""
        return {call: timer.result() for call, timer in self._timers.items()}

    @property
    def closed(self) -> bool:
        """Whether the session was committed or closed."""
        return self._closed

    @property
    def extent(self) -> Optional[tuple[int, int]]:
        """The object's first and last slice on the annotation axis, or None."""
        return self._store.extent

    @property
    def annotated(self) -> dict[int, list[int]]:
        """Annotated slice indices per caller axis."""
        out: dict[int, list[int]] = {}
        for ia, idx in sorted(self._store.keys()):
            out.setdefault(self._caller_axis(ia), []).append(idx)
        return out

    def annotations(self) -> dict[tuple[int, int], Any]:
        """The drawn masks ``{(caller axis, index): 2D mask}`` in the caller's layout
        and array type (copies; the session keeps its own)."""
        with self._lock:
            out = {}
            for (ia, idx), m in sorted(self._store.masks.items()):
                ca = self._caller_axis(ia)
                if ia != 0:
                    rest = [d for d in range(3) if d not in (ca, self.axis)][0]
                    if self.axis > rest:
                        m = m.t()
                out[(ca, idx)] = self._kind.out(m.clone())
            return out

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
            self._store.set_extent((int(first), int(last)))

    def _check_mask(self, index: Any, mask: Any, axis: Optional[int]) -> tuple[tuple[int, int], torch.Tensor]:
        """Validate one drawn slice at the boundary: ``(key, uint8 mask)`` in the
        internal layout."""
        ia = self._internal_axis(axis)
        return (ia, check_slice_index(index, self.image.shape[ia], self._caller_axis(ia))), check_slice_mask(
            mask, self.shape, self._caller_axis(ia), self.axis, self.engine.device
        )

    def annotate(self, index: int, mask: Any, axis: Optional[int] = None) -> None:
        """The person's binary 2D mask of slice ``index`` on ``axis`` (default: the
        session's annotation axis). An all-zero mask declares an empty slice."""
        with self._lock:
            self._check_open()
            key, m = self._check_mask(index, mask, axis)
            last = self._proxies.result
            proxy = None if last is None else (last.proxy, last.confidence)
            self._evidence.note(
                key, proxy, self._proxies.keys, self._pred, self._pred_trained, self._store.ever_drawn(key), self.extent
            )
            self._store.put(key, m)

    def _evidence_rows(self) -> list[list[int]]:
        return self._evidence.rows(self._store.masks)

    @property
    def fusion_evidence(self) -> list[list[int]]:
        """This session's evidence rows for the fusion gate (slices drawn after a proxy
        and a trained prediction of them existed; against their current drawing)."""
        with self._lock:
            return self._evidence_rows()

    @property
    def fusion_weight(self) -> float:
        """The model's weight ``lam`` in :meth:`result`'s fusion now (``Config.fusion_gate``)."""
        with self._lock:
            return self._fusion_weight()

    def erase(self, index: int, axis: Optional[int] = None) -> None:
        """Remove the annotation of slice ``index`` (on ``axis``)."""
        with self._lock:
            self._check_open()
            self._store.erase((self._internal_axis(axis), index))

    def undo(self) -> None:
        """Revert the last annotate / erase / set_extent."""
        with self._lock:
            self._check_open()
            self._store.undo()

    # --- back end ------------------------------------------------------------------------
    def predict(self, return_timings: bool = False) -> Any:
        """Back-end probabilities from the last finished weights (caller's array type)."""
        with self._lock:
            self._check_open()
            timer = Timer(self.engine.device)
            with timer.stage("predict"):
                p = self._prediction()
            out = self._kind.out(p.movedim(0, self.axis))
            t = self._record("predict", timer, return_timings)
        return (out, t) if return_timings else out

    def _region(self) -> Box:
        boxes = drawn_boxes(self._store.masks, self._boxes)
        predicted = None
        # and where the model sees the object, if the front end can show it (Q = 0: F >= 0.5 needs lam >= 0.5)
        if boxes and self._pred is not None and self._pred_trained and self._model_can_add():
            lo, hi = self.extent if self.extent is not None else (0, self.D - 1)
            predicted = bbox2d((self._pred[lo : hi + 1] >= 0.5).any(0))
        return self._view.region(self.extent, boxes, predicted)

    def _model_can_add(self) -> bool:
        return self._fusion_weight() >= 0.5

    def _fusion_weight(self) -> float:
        """``lam`` now, refitted only when the drawings or the committed evidence changed
        (each evidence row costs a read back)."""
        gate = self.engine._gate
        key = (self._store.stamp, self.engine.counters["cases"], gate.mode, gate.window)
        if self._lam[0] != key:
            self._lam = (key, self.engine.fusion_weight(self._evidence_rows()))
        return self._lam[1]

    def _prediction(self) -> torch.Tensor:
        eng = self.engine
        version = eng.counters["weights_version"]
        stale = self._pred is None or self._pred_version != version
        region = None
        if not stale and eng.planned and self._pred_stamp != self._store.stamp:
            # new drawings: predict again when they reach outside the region
            region = self._region()
            stale = reaches_past(region, self._view.box)
            self._pred_stamp = self._store.stamp
        if stale:
            if eng.planned:
                # once this session has learned, from the weights that learned its case
                self._pred = self._view.predict(region or self._region(), adapted=self.rounds > 0)
            else:  # nothing learned yet: background
                self._pred = torch.zeros(self.image.shape, dtype=torch.float32, device=self.image.device)
            self._pred_version = version
            self._pred_stamp = self._store.stamp
            self._pred_trained = eng.trained
            if self._p0 is None:
                self._p0 = self._pred
        return self._pred

    def _steering_prediction(self) -> Optional[torch.Tensor]:
        """What steers learning: the case's last prediction, even from older weights, the
        crop grown to drawings since; None (crop = the drawings' region) before the
        case's first prediction unless P0 is needed: no sliding window only to steer."""
        if self._pred is None and self.engine.planned and self.engine.config.smoothing != "self":
            self._view.train_box = self._region()
            return None
        if self._pred is None or not self._pred_trained or not self.engine.planned:
            return self._prediction()
        if self._pred_stamp != self._store.stamp:
            self._view.cover(self._region())
        return self._pred

    @property
    def region(self) -> tuple[tuple[int, int], ...]:
        """The last prediction's region of interest, ``((z0, z1), (y0, y1), (x0, x1))``
        half-open, annotation axis first."""
        return tuple((b.start, b.stop) for b in self._view.box)

    def propose(
        self, k: int, extent: Optional[tuple[int, int]] = None, rule: Optional[str] = None, return_timings: bool = False
    ) -> Any:
        """The next ``k`` slices to draw on the annotation axis (a list of ints).

        ``rule`` (default ``Config.proposal``) is a name of :data:`engine.guide.REGISTRY`
        (the product's :data:`~engine.guide.RULES` and the experimental ones). The
        model-guided rules (``residual``, ``residual_gap``) fall back to evenly spaced
        slices over the extent (``extent=(first, last)`` sets it) or the whole axis
        while the model is untrained or nothing is drawn, and to the gap rule while only
        the model is missing; the other rules apply from the first call.
        """
        with self._lock:
            self._check_open()
            if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
                raise E.InputError(f"k must be an int >= 1, got {k!r}")
            if extent is not None:
                self.set_extent(*extent)
            rule = rule or self.engine.config.proposal
            if rule not in REGISTRY:
                raise E.InputError(f"rule must be one of {tuple(REGISTRY)}, got {rule!r}")
            timer = Timer(self.engine.device)
            cfg = self.engine.config

            def scores() -> torch.Tensor:
                res = self._proxy_result(timer)
                p = self._prediction()
                w = (1.0 - res.confidence) if cfg.residual_weighting else None
                return residual_scores(res.proxy, p, w)

            ctx = ProposalContext(
                self.D,
                self._store.indices(0),
                self.extent,
                cfg.min_gap,
                torch.Generator().manual_seed(cfg.seed + self._store.stamp),
                model_ready=self.engine.trained and len(self._store) > 0,
                scores=scores,
                contributors=lambda: self._proxy_result(timer),
            )
            with timer.stage("propose"):
                out = REGISTRY[rule].choose(ctx, int(k))
            t = self._record("propose", timer, return_timings)
        return (out, t) if return_timings else out

    # --- proxy mask --------------------------------------------------------------------------
    def _proxy_result(self, timer: Timer) -> ProxyResult:
        return self._proxies.get(self._store, self.engine.config, timer)

    def propagate(self, return_timings: bool = False) -> Any:
        """Proxy mask ``Q`` (soft, [0,1]) and confidence ``C`` from the annotations.

        Registration of the adjacent slice pairs runs once per case; later calls only
        re-propagate. Returns ``(Q, C)`` in the caller's layout and array type.
        """
        with self._lock:
            self._check_open()
            timer = Timer(self.engine.device)
            res = self._proxy_result(timer)
            out = (
                self._kind.out(res.proxy.movedim(0, self.axis)),
                self._kind.out(res.confidence.movedim(0, self.axis)),
            )
            t = self._record("propagate", timer, return_timings)
        return (out, t) if return_timings else out

    def contributors(self) -> ProxyResult:
        """The current proxy with its two propagation contributors (``from_below`` /
        ``from_above`` and their slice distances), annotation axis first, as torch
        tensors on the engine's device (what the ``disagree`` rule reads)."""
        with self._lock:
            self._check_open()
            return self._proxy_result(Timer(self.engine.device))

    # --- learning ------------------------------------------------------------------------------
    def _learn_inputs(self, timer: Timer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg = self.engine.config
        res = self._proxy_result(timer)
        q, c = res.proxy, res.confidence
        with timer.stage("predict"):
            p = self._steering_prediction()  # the residual |Q - P| steers where patches are drawn
        p0 = self._p0 if self._p0 is not None else p  # the model's belief before this case
        kw = dict(p0=p0, smoothing=cfg.smoothing, eps=cfg.smoothing_eps, check_values=False)
        target, weight = build_targets(q, c, self.extent, 0, **kw)
        return target, weight, None if p is None else (q - p).abs()

    def _observe_object(self, final: Optional[torch.Tensor] = None) -> None:
        """This case's drawn object (or its ``final`` mask) into the engine's fingerprint
        (once per session)."""
        if not self._observed:
            main = (
                dict(enumerate(final))
                if final is not None
                else {z: m for (ia, z), m in self._store.masks.items() if ia == 0}
            )
            self.engine.observe(
                self.image,
                self._spacing or (1.0, 1.0, 1.0),
                masks=main,
                extent=None if final is not None else self.extent,
            )
            self._observed = True

    def learn(self, steps: Optional[int] = None, return_timings: bool = False) -> Any:
        """Train the shared segmenter ``steps`` steps on this case's proxy mask (blocking;
        on CUDA it returns once the steps are queued: later calls are stream-ordered)."""
        fut = self.learn_async(steps)
        t = fut.result()
        return dict(t) if return_timings else None

    def learn_async(self, steps: Optional[int] = None) -> Future:
        """Start learning in the background; returns a Future of the timing dict (a
        mapping read lazily: CUDA events are waited for only when it is read).

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
            timer = Timer(self.engine.device)
            target, weight, residual = self._learn_inputs(timer)
            self.rounds += 1
            inner = self.engine._pool.submit(
                self.engine._train_round, self._view, int(steps), target, weight, residual, timer, self._observe_object
            )
            fut: Future = Future()

            def _done(f: Future) -> None:
                if f.exception() is not None:
                    fut.set_exception(f.exception())
                else:
                    self._timers["learn"] = f.result()
                    fut.set_result(LazyTimings(f.result()))

            inner.add_done_callback(_done)
            self._learning = fut
            return fut

    # --- front end ---------------------------------------------------------------------------
    def result(self, return_timings: bool = False, soft: bool = False) -> Any:
        """The fused front-end mask ``F = Q + lam (1 - C) (P - Q)`` inside the extent,
        background outside, thresholded at 0.5 (uint8; ``soft=True``: float32 F).
        ``lam`` is :attr:`fusion_weight` (1 with ``Config.fusion_gate="none"``: the
        paper's ``F = C Q + (1 - C) P``). With nothing annotated: the prediction alone."""
        with self._lock:
            self._check_open()
            timer = Timer(self.engine.device)
            with timer.stage("predict"):
                p = self._prediction()
            if len(self._store):
                res = self._proxy_result(timer)
                with timer.stage("fuse"):
                    lam = self._fusion_weight()  # background outside the extent and the region of interest
                    box = self._view.front_box(self.extent, roi=self.engine.planned and self._pred_trained)
                    f = torch.zeros_like(p)  # fused only where it can be non-zero
                    f[box] = fuse(res.proxy[box], res.confidence[box], p[box], lam)
            else:
                f = p
            out = f if soft else (f >= 0.5).to(torch.uint8)
            res_out = self._kind.out(out.movedim(0, self.axis))
            t = self._record("result", timer, return_timings)
        return (res_out, t) if return_timings else res_out

    def commit(self, final_mask: Any = None) -> None:
        """Store the case (patches, final target, weights) in the replay buffer, move
        the stream counters on, and close the session.

        ``final_mask``: the person's corrected 3D mask (caller's layout and shape,
        binary, finite; NumPy / torch / CuPy): the case's final training target with
        confidence 1 instead of the proxy mask. Bad input raises a typed error and
        leaves the session open and unchanged."""
        with self._lock:
            self._check_open()
            final = (
                None
                if final_mask is None
                else check_volume_mask(final_mask, "final_mask", self.shape, self.axis, self.engine.device)
            )
            if self._learning is not None:
                self._learning.result()
            eng = self.engine
            if final is not None:
                p = self._prediction()  # the residual |T - P| steers where patches are drawn
                target, weight, residual = final, torch.ones_like(final), (final - p).abs()
            elif len(self._store):
                timer = Timer(eng.device)
                target, weight, residual = self._learn_inputs(timer)
            else:
                target = weight = residual = None
            if final is not None:  # a whole corrected mask: patches may come from anywhere
                self._view.train_box = tuple(slice(0, n) for n in self.image.shape)
            eng._commit_case(
                self._view, target, weight, residual, self._evidence_rows(), lambda: self._observe_object(final)
            )
            self._closed = True

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
