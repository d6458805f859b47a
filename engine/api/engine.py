"""``Engine``: the segmenter, its optimiser, the replay buffer, the fusion gate and
the device, shared by the sessions of a stream.

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
import os
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np
import torch

from .. import errors as E
from .._files import atomic_write
from ..checks import check_axis
from ..learn import Trainer
from ..learn import checkpoint as _ckpt
from ..learn.models import normalize_intensity, sliding_window_inference
from ..learn.sampler import PatchSampler, random_flip
from .arrays import ArrayKind, as_tensor, check_image
from .config import RUNTIME_FIELDS, Config, resolve_device
from .fusion import FusionGate

if TYPE_CHECKING:
    from .session import Session

__all__ = ["Engine", "LabelledPool", "STATE_VERSION"]

STATE_VERSION = 1


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
        with torch.random.fork_rng(devices=[]):  # seeded weight init, global RNG untouched
            torch.manual_seed(config.seed)
            self.trainer = Trainer(config.learn, self.device)
        self.replay = self.trainer.make_replay(config.replay_capacity, config.replay_policy)
        self.counters: dict[str, int] = {"cases": 0, "steps": 0, "rounds": 0, "weights_version": 0}
        self._serving = copy.deepcopy(self.trainer.model).eval()
        self._gate = FusionGate(config.fusion_gate, config.fusion_window)
        self._train_lock = threading.Lock()
        self._serve_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dilseg-learn")

    # --- configuration -------------------------------------------------------------
    def reconfigure(self, **changes: Any) -> None:
        """Change run-time settings (:data:`~engine.api.config.RUNTIME_FIELDS`: proposal,
        fusion, smoothing, replay share, steps, ...) of a running engine; validated
        before anything changes. Fields that fix the model, the replay buffer or the
        device raise :class:`~engine.errors.InputError`."""
        fixed = sorted(k for k in changes if k not in RUNTIME_FIELDS)
        if fixed:
            raise E.InputError(f"Config fields {fixed} cannot change on a running engine (they fix the model, "
                               f"the replay buffer or the device); build a new Engine. Changeable: {RUNTIME_FIELDS}")
        new = replace(self.config, **changes)
        new.validate()
        with self._train_lock:
            self.config = new
            self._gate.mode, self._gate.window = new.fusion_gate, new.fusion_window

    # --- weights -------------------------------------------------------------------
    @property
    def trained(self) -> bool:
        """Whether the segmenter has taken any training step."""
        return self.counters["steps"] > 0

    def publish(self, bump: bool = True) -> None:
        """Swap the finished training weights into the serving copy (what ``predict``
        reads); ``bump`` moves ``counters["weights_version"]`` on. Learning calls of
        the engine and its sessions publish by themselves."""
        with self._serve_lock:
            with torch.no_grad():
                for dst, src in zip(self._serving.state_dict().values(), self.trainer.model.state_dict().values()):
                    dst.copy_(src)
            if bump:
                self.counters["weights_version"] += 1

    @property
    def fusion_evidence(self) -> list[list[int]]:
        """The committed evidence rows of the fusion gate (a copy, newest last)."""
        return self._gate.rows

    def fusion_weight(self, extra: Sequence[Sequence[int]] = ()) -> float:
        """The model's weight ``lam`` in the front-end fusion (``Config.fusion_gate``),
        from the committed evidence plus ``extra`` rows of an open session."""
        return self._gate.weight(extra)

    def predict(self, image: Any, axis: int = 0) -> Any:
        """Back-end probabilities for a whole volume with no interaction at all."""
        kind = ArrayKind(image)
        t = check_image(as_tensor(image, "image", self.device))
        axis = check_axis(axis, negative=False)
        p = self._predict_volume(t.movedim(axis, 0).contiguous())
        return kind.out(p.movedim(0, axis))

    def _predict_volume(self, vol: torch.Tensor) -> torch.Tensor:
        """Sliding-window probabilities from the serving copy of the weights."""
        cfg = self.trainer.config
        with self._serve_lock, torch.no_grad():
            return sliding_window_inference(
                self._serving, normalize_intensity(vol, cfg.normalize), self.trainer.patch,
                overlap=cfg.sw_overlap, blend=cfg.sw_blend, batch_size=cfg.sw_batch,
                autocast_dtype=self.trainer.amp_dtype, channels_last=cfg.channels_last)

    # --- learning from full labels -------------------------------------------------------
    def learn_labelled(self, image: Any, label: Any, steps: int, axis: int = 0, prior: Any = None) -> None:
        """Learn one case from its full label (the online full-label baseline, a warm
        start): ``steps`` steps with target = label and weight 1 (patches centred by
        ``|label - prior|`` when the model's earlier probabilities ``prior`` are given,
        as a session centres them by ``|Q - P|``; replay mixed in as configured), then
        publish and commit the case to the replay buffer (``counters["cases"]`` + 1).
        Arrays in the caller's layout with the annotation ``axis``."""
        axis = check_axis(axis, negative=False)
        if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 0:
            raise E.InputError(f"steps must be an int >= 0, got {steps!r}")
        img = _internal(image, axis, self.device)
        lab = _internal(label, axis, self.device)
        check_image(img)
        if tuple(lab.shape) != tuple(img.shape):
            raise E.ShapeError(f"label shape {tuple(lab.shape)} differs from the image's {tuple(img.shape)}")
        if not bool(((lab == 0) | (lab == 1)).all()):
            raise E.MaskError("label must be binary (0/1)")
        w = torch.ones_like(lab)
        residual = None if prior is None else (lab - _internal(prior, axis, self.device)).abs()
        with self._train_lock:
            if steps > 0:
                self.trainer.train_case(img, lab, w, int(steps), replay=self.replay,
                                        replay_ratio=self.config.replay_ratio, residual=residual)
                self.counters["steps"] += int(steps)
                self.counters["rounds"] += 1
            self.replay.add_case(img, lab, w, self.config.replay_patches_per_case, residual=residual)
            self.counters["cases"] += 1
        if steps > 0:
            self.publish()

    def labelled_pool(self, cases: Sequence[tuple[Any, Any]], axis: int = 0) -> "LabelledPool":
        """A pool of fully labelled cases ``[(image, label), ...]`` (caller's layout) for
        offline training on patches drawn from all of them at random
        (:meth:`LabelledPool.learn`)."""
        return LabelledPool(self, cases, check_axis(axis, negative=False))

    # --- sessions ------------------------------------------------------------------
    def open(self, image: Any, spacing: Optional[Sequence[float]] = None, axis: int = 0) -> "Session":
        """Open a session for one case of the stream (see :class:`~engine.Session`)."""
        from .session import Session

        return Session(self, image, spacing=spacing, axis=axis)

    # --- persistence -----------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> Path:
        """Atomically persist model, optimiser, replay buffer, RNGs, counters, config."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with self._train_lock:
            state = dict(self.counters, fusion_evidence=self._gate.rows)
            _ckpt.save(folder / "engine.ckpt", self.trainer, self.replay, state)
            atomic_write(folder / "config.json",
                         json.dumps({"version": STATE_VERSION, "config": self.config.to_dict()}, indent=1))
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
        eng._gate.restore(counters.pop("fusion_evidence", []))
        eng.counters.update({k: int(v) for k, v in counters.items()})
        eng.publish(bump=False)  # the restored weights are the saved version
        return eng

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class LabelledPool:
    """Fully labelled cases for offline training (the offline upper bound, warm
    starts): each step's batch takes ``batch_size`` patches, each from a case drawn at
    random, centred on foreground with probability ``fg_fraction``."""

    def __init__(self, engine: Engine, cases: Sequence[tuple[Any, Any]], axis: int) -> None:
        self.engine = engine
        tr = engine.trainer
        lc = tr.config
        self._samplers = []
        for image, label in cases:
            img = _internal(image, axis, engine.device)
            lab = _internal(label, axis, engine.device)
            check_image(img)
            if tuple(lab.shape) != tuple(img.shape):
                raise E.ShapeError(f"label shape {tuple(lab.shape)} differs from the image's {tuple(img.shape)}")
            self._samplers.append(PatchSampler(normalize_intensity(img, lc.normalize), lab, torch.ones_like(lab),
                                               tr.patch, fg_fraction=lc.fg_fraction, floor=lc.residual_floor,
                                               generator=tr.generator))
        if not self._samplers:
            raise E.InputError("a labelled pool needs at least one case")

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
        eng.publish()
