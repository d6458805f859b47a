"""``Engine``: the segmenter, its optimiser, the replay buffer, the fusion gate and
the device, shared by the sessions of a stream.

The segmenter configures itself from the data (DESIGN §5a): the engine keeps a
:class:`~engine.learn.plan.Fingerprint` of every opened image and every drawn object,
and the first time it has to learn it plans the segmenter from it
(:func:`~engine.learn.plan.make_plan`: target spacing, patch, anisotropic pooling and
kernels, normalisation, batch size), logs the plan with its reasons (logger
``"dilseg"``) and builds the model. Until then it has nothing learned and predicts
background. ``Config.learn`` fields that are set override the plan; the plan is saved
with the engine.

Concurrency (what is serialised and why):

* one ``Engine`` may serve several sessions from several threads;
* the segmenter's weights are updated by one learning job at a time (the train
  lock): Adam steps on shared weights cannot interleave meaningfully;
* predictions read a *serving copy* of the weights that is swapped in, under the
  serve lock, only after a learning job finished (:meth:`Engine.publish`), so
  ``predict()`` during ``learn_async`` answers from the last finished weights, never
  half-updated ones.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

import numpy as np
import torch

from .. import errors as E
from .._files import atomic_write
from ..checks import check_axis
from ..learn import Trainer
from ..learn import checkpoint as _ckpt
from ..learn.models import sliding_window_inference
from ..learn.plan import Fingerprint, Plan, grid_size, make_plan
from ..learn.resample import resample
from ..learn.sampler import PatchSampler, random_flip
from .arrays import ArrayKind, as_tensor, check_image, internal_spacing
from .config import RUNTIME_FIELDS, Config, resolve_device
from .fusion import FusionGate

if TYPE_CHECKING:
    from .session import Session

__all__ = ["Engine", "LabelledPool", "STATE_VERSION"]

STATE_VERSION = 1
log = logging.getLogger("dilseg")


def _internal(x: Any, axis: int, device: torch.device) -> torch.Tensor:
    """A caller-layout volume as float32 ``(D, H, W)`` with ``axis`` first on ``device``."""
    t = as_tensor(np.asarray(x, dtype=np.float32) if not isinstance(x, torch.Tensor) else x.float(), "volume", device)
    return t.movedim(axis, 0).contiguous()


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
        self.device = resolve_device(config.device)
        self.fingerprint = Fingerprint()
        self.plan: Optional[Plan] = None
        self.trainer: Optional[Trainer] = None
        self.replay = None
        self._serving: Optional[torch.nn.Module] = None  # the general model (LearnConfig.ema)
        self._adapted: Optional[torch.nn.Module] = None  # the training weights (= _serving without ema)
        self._nonfinite_dev: Optional[torch.Tensor] = None  # predictions with NaN/Inf, counted on the device
        self.counters: dict[str, int] = {
            "cases": 0,
            "steps": 0,
            "rounds": 0,
            "weights_version": 0,
            "skipped_steps": 0,
            "restored_rounds": 0,
            "nonfinite_predictions": 0,
        }
        self._gate = FusionGate(config.fusion_gate, config.fusion_window)
        self._train_lock = threading.RLock()
        self._serve_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dilseg-learn")

    # --- configuration -------------------------------------------------------------
    def reconfigure(self, **changes: Any) -> None:
        """Change run-time settings (:data:`~engine.api.config.RUNTIME_FIELDS`: proposal,
        fusion, smoothing, replay share, steps, ...) of a running engine; validated
        before anything changes. Fields that fix the model, the replay buffer or the
        device (``learn``, ``device``, ``replay_capacity``, ...) raise
        :class:`~engine.errors.InputError`: build a new Engine for them."""
        fixed = sorted(k for k in changes if k not in RUNTIME_FIELDS)
        if fixed:
            raise E.InputError(
                f"Config fields {fixed} cannot change on a running engine (they fix the model, "
                f"the replay buffer or the device); build a new Engine. Changeable: {RUNTIME_FIELDS}"
            )
        new = replace(self.config, **changes)
        new.validate()
        with self._train_lock:
            self.config = new
            self._gate.mode, self._gate.window = new.fusion_gate, new.fusion_window

    # --- the plan --------------------------------------------------------------------
    @property
    def planned(self) -> bool:
        """Whether the segmenter is planned and built (it is at the first learning)."""
        return self.plan is not None

    def _build(self, plan: Plan) -> None:
        with torch.random.fork_rng(devices=[]):  # seeded weight init, global RNG untouched
            torch.manual_seed(self.config.seed)
            trainer = Trainer(plan.learn, self.device)
        self.trainer = trainer
        self.replay = trainer.make_replay(self.config.replay_capacity, self.config.replay_policy)
        self._serving = copy.deepcopy(trainer.model).eval()
        self._adapted = copy.deepcopy(trainer.model).eval() if trainer.average is not None else self._serving
        self.plan = plan

    def _ensure_plan(self) -> None:
        """Plan and build the segmenter from the fingerprint, once (train lock held)."""
        with self._train_lock:
            if self.plan is None:
                plan = make_plan(self.fingerprint, self.config.learn, self.device)
                self._build(plan)
                log.info("%s", plan.describe())

    def observe(
        self,
        image: torch.Tensor,
        spacing: Sequence[float],
        masks: Optional[Mapping[int, Any]] = None,
        extent: Optional[tuple[int, int]] = None,
    ) -> None:
        """Update the fingerprint with an image ``(D, H, W)`` (annotation axis first) at
        ``spacing`` (that order), or with its drawn ``masks`` ``{slice: 2D mask}``."""
        with self._train_lock:
            if masks is None:
                self.fingerprint.observe_image(image, spacing)
            else:
                self.fingerprint.observe_object(image, masks, spacing, extent)

    def grid(self, shape: Sequence[int], spacing: Optional[Sequence[float]]) -> tuple[int, ...]:
        """The segmenter's voxel grid for a volume of ``shape`` at ``spacing`` (internal
        order; None: already at the target spacing)."""
        if self.plan is None or spacing is None:
            return tuple(int(s) for s in shape)
        return grid_size(shape, spacing, self.plan.learn.target_spacing)

    # --- weights -------------------------------------------------------------------
    @property
    def trained(self) -> bool:
        """Whether the segmenter has taken any training step."""
        return self.counters["steps"] > 0

    def publish(self, bump: bool = True) -> None:
        """Swap the finished training weights into the serving copy (what ``predict``
        reads); ``bump`` moves ``counters["weights_version"]`` on. Learning calls of
        the engine and its sessions publish by themselves."""
        if self.trainer is None:
            return
        with self._serve_lock:
            with torch.no_grad():
                src = self.trainer.serving_state()  # the training weights, or their average (LearnConfig.ema)
                for name, dst in self._serving.state_dict().items():
                    dst.copy_(src[name])
                if self._adapted is not self._serving:
                    for dst, raw in zip(self._adapted.state_dict().values(), self.trainer.model.state_dict().values()):
                        dst.copy_(raw)
            if bump:
                self.counters["weights_version"] += 1

    def _sync_counters(self, device_tallies: bool = True) -> None:
        """Fold the trainer's counts into :attr:`counters`, and with ``device_tallies`` the
        predictions' non-finite flags kept on the device (one read back: commits and
        saves do it, learning rounds do not)."""
        tr = self.trainer
        if tr is not None:
            self.counters["skipped_steps"] = tr.steps_skipped
            self.counters["restored_rounds"] = tr.calls_restored
        if not device_tallies:
            return
        with self._serve_lock:
            flag, self._nonfinite_dev = self._nonfinite_dev, None
        if flag is not None:
            self.counters["nonfinite_predictions"] += int(flag)

    # --- a session's learning and commit (Session calls these) ----------------------
    def _train_round(self, view, steps: int, target, weight, residual, timer, observe) -> Any:
        """``steps`` steps on one session's case through its region ``view`` (a
        :class:`~engine.api.roi.ModelView`); before the first, ``observe()`` puts the
        case's object into the fingerprint and the segmenter is planned. Returns ``timer``."""
        with self._train_lock:
            if not self.planned:
                observe()
                self._ensure_plan()
            with timer.stage("learn"):
                image_m, target_m, weight_m, residual_m = view.training(target, weight, residual)
                self.trainer.train_case(
                    image_m,
                    target_m,
                    weight_m,
                    steps,
                    replay=self.replay,
                    replay_ratio=self.config.replay_ratio,
                    residual=residual_m,
                    check_values=False,
                    normalized=True,
                )
                self.counters["steps"] += steps
                self.counters["rounds"] += 1
                self._sync_counters(device_tallies=False)
            self.publish()
        return timer

    def _commit_case(self, view, target, weight, residual, rows, observe) -> None:
        """A session's case into the replay buffer (``target`` None: nothing drawn, no
        patches), its fusion evidence ``rows`` into the gate, the counters on; under
        the train lock, so counters and the buffer change together."""
        with self._train_lock:
            if target is not None:
                observe()
                self._ensure_plan()
                image_m, target_m, weight_m, residual_m = view.training(target, weight, residual)
                self.replay.add_case(
                    image_m,
                    target_m,
                    weight_m,
                    self.config.replay_patches_per_case,
                    residual=residual_m,
                    normalized=True,
                )
            self._gate.commit(rows)
            self.counters["cases"] += 1
            self._sync_counters()

    @property
    def fusion_evidence(self) -> list[list[int]]:
        """The committed evidence rows of the fusion gate (a copy, newest last)."""
        return self._gate.rows

    def fusion_weight(self, extra: Sequence[Sequence[int]] = ()) -> float:
        """The model's weight ``lam`` in the front-end fusion (``Config.fusion_gate``),
        from the committed evidence plus ``extra`` rows of an open session."""
        return self._gate.weight(extra)

    def predict(self, image: Any, axis: int = 0, spacing: Optional[Sequence[float]] = None) -> Any:
        """Back-end probabilities for a whole volume with no interaction at all.
        ``spacing`` (caller order, mm): resampled to the planned spacing when given."""
        kind = ArrayKind(image)
        t = check_image(as_tensor(image, "image", self.device))
        axis = check_axis(axis, negative=False)
        sp = internal_spacing(spacing, axis)
        p = self._predict_volume(t.movedim(axis, 0).contiguous(), sp)
        return kind.out(p.movedim(0, axis))

    def _predict_volume(self, vol: torch.Tensor, spacing: Optional[Sequence[float]] = None) -> torch.Tensor:
        """Probabilities ``(D, H, W)`` of a whole volume (annotation axis first) from
        the serving copy; background (zeros) while nothing is planned."""
        if self.plan is None:
            return torch.zeros(vol.shape, dtype=torch.float32, device=vol.device)
        size = self.grid(vol.shape, spacing)
        return self._predict_crop(vol, size, self.trainer.intensity(resample(vol, size)))

    def _predict_crop(
        self,
        crop: torch.Tensor,
        size: Sequence[int],
        stats: torch.Tensor,
        overlap: Optional[float] = None,
        adapted: bool = False,
    ) -> torch.Tensor:
        """Probabilities of ``crop`` (native voxels): resampled to ``size`` on the planned
        grid, normalised with its case's ``stats``, sliding window (``overlap``; None:
        ``sw_overlap``), resampled back; ``adapted``: from the last published training
        weights instead of their average (the same model without ``LearnConfig.ema``).
        Non-finite outputs become 0 and are counted on the device (they never reach a
        residual, a proposal or a result)."""
        tr = self.trainer
        cfg = tr.config
        model_in = tr.normalize(resample(crop, size), stats)
        with self._serve_lock, torch.no_grad():
            p = sliding_window_inference(
                self._adapted if adapted else self._serving,
                model_in,
                tr.patch,
                overlap=cfg.sw_overlap if overlap is None else overlap,
                blend=cfg.sw_blend,
                batch_size=cfg.sw_batch,
                autocast_dtype=tr.amp_dtype,
                channels_last=cfg.channels_last,
            )
        p = resample(p, crop.shape)
        # flagged on the device (no read back here), folded into counters when they are read
        bad = (~torch.isfinite(p)).any().to(torch.int64)
        with self._serve_lock:
            self._nonfinite_dev = bad if self._nonfinite_dev is None else self._nonfinite_dev + bad
        return torch.nan_to_num(p, nan=0.0, posinf=1.0, neginf=0.0)

    # --- learning from full labels -------------------------------------------------------
    def learn_labelled(
        self,
        image: Any,
        label: Any,
        steps: int,
        axis: int = 0,
        prior: Any = None,
        spacing: Optional[Sequence[float]] = None,
    ) -> None:
        """Learn one case from its full label (the online full-label baseline, a warm
        start): ``steps`` steps with target = label and weight 1 (patches centred by
        ``|label - prior|`` when the model's earlier probabilities ``prior`` are given,
        as a session centres them by ``|Q - P|``; replay mixed in as configured), then
        publish and commit the case to the replay buffer (``counters["cases"]`` + 1).
        Arrays in the caller's layout with the annotation ``axis``; ``spacing`` in mm
        (caller order; None: the planned spacing)."""
        axis = check_axis(axis, negative=False)
        if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 0:
            raise E.InputError(f"steps must be an int >= 0, got {steps!r}")
        sp = internal_spacing(spacing, axis)
        img = _internal(image, axis, self.device)
        lab = _internal(label, axis, self.device)
        check_image(img)
        if tuple(lab.shape) != tuple(img.shape):
            raise E.ShapeError(f"label shape {tuple(lab.shape)} differs from the image's {tuple(img.shape)}")
        if not bool(((lab == 0) | (lab == 1)).all()):
            raise E.MaskError("label must be binary (0/1)")
        with self._train_lock:
            self.observe(img, sp or (1.0, 1.0, 1.0))
            self.observe(img, sp or (1.0, 1.0, 1.0), masks=dict(enumerate(lab)))
            self._ensure_plan()
            size = self.grid(img.shape, sp)
            img_m, lab_m = resample(img, size), resample(lab, size)
            w = torch.ones_like(lab_m)
            residual = None if prior is None else resample((lab - _internal(prior, axis, self.device)).abs(), size)
            if steps > 0:
                self.trainer.train_case(
                    img_m,
                    lab_m,
                    w,
                    int(steps),
                    replay=self.replay,
                    replay_ratio=self.config.replay_ratio,
                    residual=residual,
                )
                self.counters["steps"] += int(steps)
                self.counters["rounds"] += 1
                self._sync_counters(device_tallies=False)
            self.replay.add_case(img_m, lab_m, w, self.config.replay_patches_per_case, residual=residual)
            self.counters["cases"] += 1
        if steps > 0:
            self.publish()

    def labelled_pool(self, cases: Sequence[tuple[Any, ...]], axis: int = 0) -> "LabelledPool":
        """A pool of fully labelled cases ``[(image, label[, spacing]), ...]`` (caller's
        layout) for offline training on patches drawn from all of them at random
        (:meth:`LabelledPool.learn`)."""
        return LabelledPool(self, cases, check_axis(axis, negative=False))

    # --- sessions ------------------------------------------------------------------
    def open(self, image: Any, spacing: Optional[Sequence[float]] = None, axis: int = 0) -> "Session":
        """Open a session for one case of the stream (see :class:`~engine.Session`)."""
        from .session import Session

        return Session(self, image, spacing=spacing, axis=axis)

    # --- persistence -----------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> Path:
        """Atomically persist model, optimiser, replay buffer, RNGs, counters, config,
        the plan and the fingerprint."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with self._train_lock:
            self._sync_counters()
            state = dict(self.counters, fusion_evidence=self._gate.rows)
            meta = {
                "version": STATE_VERSION,
                "config": self.config.to_dict(),
                "plan": None if self.plan is None else self.plan.to_dict(),
                "fingerprint": self.fingerprint.to_dict(),
            }
            if self.plan is not None:
                _ckpt.save(folder / "engine.ckpt", self.trainer, self.replay, state)
            else:
                meta["counters"] = state
                if (folder / "engine.ckpt").exists():
                    (folder / "engine.ckpt").unlink()
            atomic_write(folder / "config.json", json.dumps(meta, indent=1))
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
        eng.fingerprint = Fingerprint.from_dict(meta.get("fingerprint") or {})
        if meta.get("plan") is not None:
            eng._build(Plan.from_dict(meta["plan"]))
        elif (folder / "engine.ckpt").exists():  # saved before plans: the config's learn settings, as they ran
            eng._build(Plan(config.learn.concrete(), ["saved before self-configuration: fixed settings"]))
        if eng.plan is not None:
            counters = _ckpt.load(folder / "engine.ckpt", eng.trainer, eng.replay)
        else:
            counters = dict(meta.get("counters") or {})
        eng._gate.restore(counters.pop("fusion_evidence", []))
        eng.counters.update({k: int(v) for k, v in counters.items()})
        if eng.trainer is not None:
            eng.trainer.steps_skipped = eng.counters["skipped_steps"]
            eng.trainer.calls_restored = eng.counters["restored_rounds"]
        eng.publish(bump=False)  # the restored weights are the saved version
        return eng

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class LabelledPool:
    """Fully labelled cases for offline training (the offline upper bound, warm
    starts): each step's batch takes ``batch_size`` patches, each from a case drawn at
    random, centred on foreground with probability ``fg_fraction``."""

    def __init__(self, engine: Engine, cases: Sequence[tuple[Any, ...]], axis: int) -> None:
        if not cases:
            raise E.InputError("a labelled pool needs at least one case")
        self.engine = engine
        volumes = []
        with engine._train_lock:
            for case in cases:
                image, label = case[0], case[1]
                sp = internal_spacing(case[2], axis) if len(case) > 2 else None
                img = _internal(image, axis, engine.device)
                lab = _internal(label, axis, engine.device)
                check_image(img)
                if tuple(lab.shape) != tuple(img.shape):
                    raise E.ShapeError(f"label shape {tuple(lab.shape)} differs from the image's {tuple(img.shape)}")
                engine.observe(img, sp or (1.0, 1.0, 1.0))
                engine.observe(img, sp or (1.0, 1.0, 1.0), masks=dict(enumerate(lab)))
                volumes.append((img, lab, sp))
            engine._ensure_plan()
        tr = engine.trainer
        lc = tr.config
        self._samplers = []
        for img, lab, sp in volumes:
            size = engine.grid(img.shape, sp)
            img_m, lab_m = resample(img, size), resample(lab, size)
            self._samplers.append(
                PatchSampler(
                    tr.normalize(img_m),
                    lab_m,
                    torch.ones_like(lab_m),
                    tr.patch,
                    fg_fraction=lc.fg_fraction,
                    floor=lc.residual_floor,
                    generator=tr.generator,
                )
            )

    def __len__(self) -> int:
        return len(self._samplers)

    def learn(self, steps: int, pick: random.Random) -> None:
        """``steps`` training steps, cases drawn by ``pick``; then publish."""
        eng = self.engine
        tr = eng.trainer
        lc = tr.config
        with eng._train_lock:
            for _ in range(int(steps)):
                parts = [self._samplers[pick.randrange(len(self._samplers))].sample(1) for _ in range(lc.batch_size)]
                batch = random_flip([torch.cat(ts) for ts in zip(*parts)], tr.generator, lc.flip_axes)
                tr.step(batch)
            eng.counters["steps"] += int(steps)
            eng._sync_counters(device_tallies=False)
        eng.publish()
