"""Online trainer: mixed precision, replay mixing, optional CUDA-graph capture.

Public API
----------
``LearnConfig``: dataclass of every learning hyper-parameter (documented defaults).
``Trainer(config: LearnConfig | None = None, device="cpu")`` owns the segmenter and
its optimizer:

* ``step((image, target, weight)) -> loss``: one optimisation step on a batch,
  each tensor ``(B, 1, pd, ph, pw)`` on the device; returns the loss as a detached
  0-d float32 device tensor (no host synchronisation).
* ``train_case(image, target, weight, steps, replay=None, replay_ratio=None,
  residual=None) -> losses``: ``steps`` steps on one case (``(D, H, W)`` tensors or
  arrays, raw image intensities), mixing current-case patches with replay patches;
  returns the ``(steps,)`` float32 losses on the device.
* ``predict(image) -> probabilities``: ``(D, H, W)`` float32 via sliding-window
  inference at the training patch size.
* ``make_replay(capacity, policy)``: a matching :class:`ReplayBuffer`.
* ``state_dict()`` / ``load_state_dict()``: used by :mod:`engine.learn.checkpoint`.

The image normalisation (``LearnConfig.normalize``) happens inside ``train_case``
and ``predict``, and inside ``ReplayBuffer.add_case``: callers pass raw intensities
everywhere.

Precision: ``"bf16"`` / ``"fp16"`` (GPU, with ``GradScaler``) autocast or ``"fp32"``;
``"auto"`` (default): bf16 where computed natively (:mod:`engine.learn.device`). Losses
are float32. ``config.ema > 0``: :attr:`Trainer.average` (:mod:`engine.learn.average`).

Replay mixing: with ratio ``r`` and batch ``B``, global step ``t`` takes
``floor((t+1) B r) - floor(t B r)`` replay patches and the rest from the current
case, so the replay share is exactly ``r`` over time and depends only on the step
counter (which checkpoints keep): a resumed run draws the same batches.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import torch

from ..checks import check_finite
from ..errors import InputError, ShapeError
from ._checks import as_volume, check_batch, check_float, check_int, check_range, check_same_shape
from ._state import check_trainer_state, restore, snapshot
from .average import WeightAverage
from .config import OPTIMIZERS, PRECISIONS, LearnConfig
from .device import resolve_execution
from .losses import weighted_bce_dice
from .models import apply_intensity, build_model, intensity_stats, normalize_intensity, sliding_window_inference
from .replay import POLICIES, ReplayBuffer
from .sampler import PatchSampler, random_flip

__all__ = ["LearnConfig", "Trainer", "PRECISIONS", "OPTIMIZERS"]

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


class Trainer:
    """Owns a segmenter and its optimizer; trains online on cases (module docstring).

    Args:
        config: a :class:`LearnConfig` (``None``: defaults).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, or a ``torch.device``.
    """

    def __init__(self, config: LearnConfig | None = None, device: torch.device | str = "cpu") -> None:
        config = LearnConfig() if config is None else config
        if not isinstance(config, LearnConfig):
            raise InputError(f"config must be a LearnConfig, got {type(config).__name__}")
        config.validate()
        config = config.concrete()  # fields no plan filled take their fixed defaults
        self.device = torch.device(device)
        config = resolve_execution(config, self.device)[0]  # precision "auto" for this device
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise InputError("device is cuda but torch.cuda.is_available() is False")
        on_gpu = self.device.type == "cuda"
        if config.precision == "fp16" and not on_gpu:
            raise InputError("precision='fp16' (with GradScaler) is a GPU option; use 'bf16' or 'fp32' on CPU")
        if config.cuda_graph and not on_gpu:
            warnings.warn("LearnConfig.cuda_graph is ignored on CPU: CUDA graphs need a CUDA device", stacklevel=2)
        if config.cuda_graph and on_gpu and config.precision == "fp16":
            raise InputError("cuda_graph needs precision 'bf16' or 'fp32': GradScaler's inf checks sync the host")
        self.config = config
        self.patch = tuple(config.patch)
        self.amp_dtype = _AMP_DTYPES[config.precision]
        self.use_graph = bool(config.cuda_graph and on_gpu)
        with torch.random.fork_rng(devices=[]):  # seeded init, global RNG untouched
            torch.manual_seed(config.seed)
            model = build_model(
                config.arch, config.base_width, config.depth, config.norm, config.strides, config.kernels
            )
        self.model = model.to(self.device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last_3d)
        self.optimizer = self._build_optimizer()
        self.scaler = torch.amp.GradScaler("cuda") if config.precision == "fp16" else None
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(config.seed)
        self.steps_done = 0
        #: steps whose loss or gradient was not finite: skipped, nothing changed
        self.steps_skipped = 0
        #: learning calls whose weights ended non-finite: restored to the call's start
        self.calls_restored = 0
        self._skipped_dev: torch.Tensor | None = None  # CUDA: counted on the device, read once per call
        #: the general model (``config.ema > 0``): the average of the weights
        self.average = WeightAverage(self.model, config.ema) if config.ema > 0 else None
        self._forward = torch.compile(self.model) if config.compile else self.model
        self._graph: Any = None
        self._static: dict[str, torch.Tensor] = {}

    # --------------------------------------------------------------- construction
    def _build_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.config
        params = self.model.parameters()
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(
                params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0, weight_decay=cfg.weight_decay
            )
        cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        if self.use_graph:
            extra = {"capturable": True}
        elif self.device.type == "cuda":
            extra = {"fused": True}  # honours `found_inf`: a non-finite step is skipped on the device, no sync
        elif self.device.type == "cpu":
            extra = {"fused": True}  # one pass over the 50 tensors: 1.6 ms a step instead of 8.3 (loop)
        else:
            extra = {}
        return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **extra)

    def make_replay(
        self, capacity: int, policy: str = "reservoir", storage_dtype: torch.dtype = torch.float32
    ) -> ReplayBuffer:
        """A replay buffer on this trainer's device with its patch size and normalisation."""
        if policy not in POLICIES:
            raise InputError(f"policy must be one of {POLICIES}, got {policy!r}")
        cfg = self.config
        return ReplayBuffer(
            capacity,
            self.patch,
            device=self.device,
            policy=policy,
            normalize=cfg.normalize,
            window=cfg.ct_window,
            storage_dtype=storage_dtype,
            fg_fraction=cfg.fg_fraction,
            seed=cfg.seed + 1,
        )

    # ------------------------------------------------------------------ one step
    def _autocast(self, enabled: bool = True, cache: bool = True):
        return torch.autocast(
            self.device.type,
            dtype=self.amp_dtype or torch.float32,
            enabled=enabled and self.amp_dtype is not None,
            cache_enabled=cache,
        )

    def _loss(self, image: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, cache: bool = True):
        cfg = self.config
        if cfg.channels_last:
            image = image.contiguous(memory_format=torch.channels_last_3d)
        with self._autocast(cache=cache):
            logits = self._forward(image)
        return weighted_bce_dice(logits, target, weight, cfg.bce_weight, cfg.dice_weight, cfg.dice_smooth)

    def normalize(self, image: torch.Tensor, stats: torch.Tensor | None = None) -> torch.Tensor:
        """The intensity normalisation of this trainer's config (training and inference);
        ``stats`` (:meth:`intensity`): normalise a crop as its whole case."""
        if stats is None:
            return normalize_intensity(image, self.config.normalize, window=self.config.ct_window)
        return apply_intensity(image, self.config.normalize, stats)

    def intensity(self, image: torch.Tensor) -> torch.Tensor:
        """The normalisation statistics of a whole case (see :meth:`normalize`)."""
        return intensity_stats(image, self.config.normalize, window=self.config.ct_window)

    def _nonfinite(self, loss: torch.Tensor) -> torch.Tensor:
        """0-d bool on the device: the loss or any gradient holds NaN / Inf."""
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        total = loss.detach().float()
        if grads:
            total = total + torch.stack(torch._foreach_norm(grads)).float().sum()
        return ~torch.isfinite(total)

    def _update(self, loss: torch.Tensor, guard: bool = False) -> None:
        clip = self.config.grad_clip
        if self.scaler is not None:  # GradScaler skips non-finite steps itself
            self.scaler.scale(loss).backward()
            if clip is not None:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip, foreach=True)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            return
        loss.backward()
        if guard:
            bad = self._nonfinite(loss)
            if self.device.type == "cuda" and getattr(self.optimizer, "defaults", {}).get("fused"):
                # the fused optimizer skips the whole update (and its step count) where found_inf is 1
                found = bad.float().reshape(1)
                self._skipped_dev = found.clone() if self._skipped_dev is None else self._skipped_dev + found
                if clip is not None:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip, foreach=True)
                self.optimizer.found_inf = found
                try:
                    self.optimizer.step()
                finally:
                    del self.optimizer.found_inf
                return
            if bool(bad):  # CPU (and SGD on CUDA): the check costs nothing worth avoiding
                self.steps_skipped += 1
                self.optimizer.zero_grad(set_to_none=True)
                return
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip, foreach=True)
        self.optimizer.step()

    def _eager_step(self, image: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._loss(image, target, weight)
        self._update(loss, guard=True)
        return loss.detach()

    def step(self, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        """One optimisation step on ``(image, target, weight)``, each ``(B, 1, d, h, w)``.

        Images must already be normalised (patches from :class:`PatchSampler` or the
        replay buffer are). Returns the loss, a detached 0-d float32 device tensor.
        With ``cuda_graph`` the first step of a shape captures the graph; batches of
        other shapes run eagerly.
        """
        image, target, weight = check_batch(batch, self.device)
        self.model.train()
        if self.use_graph and tuple(image.shape) == (self.config.batch_size, 1, *self.patch):
            loss = self._graph_step(image, target, weight)
        else:
            loss = self._eager_step(image, target, weight)
        self.steps_done += 1
        if self.average is not None:
            self.average.update(self.model)
        return loss

    def serving_state(self) -> dict[str, torch.Tensor]:
        """The general model's weights: the average when ``config.ema > 0``, else the
        training weights (the same tensors, not copies)."""
        return self.model.state_dict() if self.average is None else self.average.state(self.model)

    # ------------------------------------------------------------- CUDA graphs
    def _snapshot(self):
        return snapshot(self.model, self.optimizer), None if self.average is None else self.average.snapshot()

    def _restore(self, snap) -> None:
        """Undo steps in place (a captured CUDA graph keeps the same tensors)."""
        restore(self.model, self.optimizer, snap[0])
        if self.average is not None:
            self.average.restore(snap[1])

    def _capture(self) -> None:
        """Capture forward + backward + optimizer step as one CUDA graph."""
        shape = (self.config.batch_size, 1, *self.patch)
        self._static = {k: torch.zeros(shape, device=self.device) for k in ("image", "target", "weight")}
        snapshot = self._snapshot()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up: allocates grads and optimizer state
                self.optimizer.zero_grad(set_to_none=True)
                self._update(self._loss(**self._static, cache=False))
        torch.cuda.current_stream(self.device).wait_stream(side)
        self._restore(snapshot)
        graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            loss = self._loss(**self._static, cache=False)
            self._update(loss)
            self._static["loss"] = loss.detach()
        self._graph = graph

    def _graph_step(self, image: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self._graph is None:
            self._capture()
        self._static["image"].copy_(image)
        self._static["target"].copy_(target)
        self._static["weight"].copy_(weight)
        self._graph.replay()
        return self._static["loss"].clone()

    # --------------------------------------------------------------- train a case
    def _prepare_case(self, image, target, weight, residual, check_values: bool = True):
        image = as_volume(image, "image", device=self.device)
        target = as_volume(target, "target", device=self.device)
        weight = as_volume(weight, "weight", device=self.device)
        check_same_shape(image, "image", target=target, weight=weight)
        if check_values:
            check_finite("image", image)
            check_range(target, "target", 0.0, 1.0)
            check_range(weight, "weight", 0.0, None)
        if residual is not None:
            residual = as_volume(residual, "residual", device=self.device)
            check_same_shape(image, "image", residual=residual)
            if check_values:
                check_range(residual, "residual", 0.0, None)
        return image, target, weight, residual

    def _end_of_call(self) -> bool:
        """Fold the device-side skip count into :attr:`steps_skipped` and say whether
        every weight is finite: one read back from the device for both."""
        norms = torch._foreach_norm([p.detach() for p in self.model.parameters()])
        finite = torch.isfinite(torch.stack(norms).sum()).float().reshape(1)
        skipped = self._skipped_dev if self._skipped_dev is not None else torch.zeros_like(finite)
        ok, n = torch.cat([finite, skipped.float().reshape(1)]).tolist()
        self.steps_skipped += int(n)
        self._skipped_dev = None
        return ok > 0

    def replay_share(self, step: int, ratio: float) -> int:
        """Replay patches in the batch of global step ``step`` for ``ratio``."""
        b = self.config.batch_size
        return math.floor((step + 1) * b * ratio + 1e-9) - math.floor(step * b * ratio + 1e-9)

    def train_case(
        self,
        image,
        target,
        weight,
        steps: int,
        replay: ReplayBuffer | None = None,
        replay_ratio: float | None = None,
        residual=None,
        check_values: bool = True,
        normalized: bool = False,
    ) -> torch.Tensor:
        """Train ``steps`` steps on one case, mixing in replay patches.

        Args:
            image: raw ``(D, H, W)`` intensities (tensor or ndarray, D = annotation axis).
            target: ``(D, H, W)`` training target ``T`` in ``[0, 1]`` (see
                :func:`~engine.learn.losses.build_targets`).
            weight: ``(D, H, W)`` per-voxel loss weights ``>= 0``.
            steps: optimisation steps (0 validates and returns an empty tensor).
            replay: buffer of past cases; ``None`` or empty means no replay.
            replay_ratio: replay share of each batch (default ``config.replay_ratio``).
            residual: optional ``(D, H, W)`` residual ``|Q - P|`` that weights where
                current-case patches are centred.
            check_values: scan the inputs' values (finite image, target in [0, 1],
                weights and residual >= 0); the engine passes False for the volumes it
                built itself (checked where the data entered).
            normalized: ``image`` is already normalised (:meth:`normalize`), e.g. a
                crop normalised with its whole case's statistics.

        A step whose loss or gradient is not finite is skipped: weights and optimiser
        state stay as they were, :attr:`steps_skipped` counts it (on CUDA the fused
        optimiser skips it on the device; the count is read once at the end). If the
        weights are not finite at the end of the call, they and the optimiser state are
        restored to the call's start (:attr:`calls_restored`).

        Returns:
            ``(steps,)`` float32 losses on the device (read them when convenient;
            the loop itself never waits for the device).

        All inputs are validated before the model changes.
        """
        steps = check_int("steps", steps, 0)
        ratio = self.config.replay_ratio if replay_ratio is None else replay_ratio
        ratio = check_float("replay_ratio", ratio, 0.0, 1.0)
        if replay is not None:
            if not isinstance(replay, ReplayBuffer):
                raise InputError(f"replay must be a ReplayBuffer, got {type(replay).__name__}")
            if replay.patch != self.patch:
                raise ShapeError(f"replay patch {replay.patch} differs from the trainer's {self.patch}")
            if replay.device != self.device:
                raise InputError(f"replay buffer is on {replay.device}, the trainer on {self.device}")
        image, target, weight, residual = self._prepare_case(image, target, weight, residual, check_values)
        losses = torch.zeros(steps, dtype=torch.float32, device=self.device)
        if steps == 0:
            return losses
        snapshot = self._snapshot()
        cfg = self.config
        sampler = PatchSampler(
            image if normalized else self.normalize(image),
            target,
            weight,
            self.patch,
            residual=residual,
            fg_fraction=cfg.fg_fraction,
            floor=cfg.residual_floor,
            generator=self.generator,
        )
        use_replay = replay is not None and len(replay) > 0 and ratio > 0.0
        for i in range(steps):
            n_rep = self.replay_share(self.steps_done, ratio) if use_replay else 0
            parts = []
            if n_rep < cfg.batch_size:
                parts.append(sampler.sample(cfg.batch_size - n_rep))
            if n_rep > 0:
                parts.append(replay.sample(n_rep))  # type: ignore[union-attr]
            batch = [torch.cat(ts) if len(ts) > 1 else ts[0] for ts in zip(*parts)]
            batch = random_flip(batch, self.generator, cfg.flip_axes)
            losses[i] = self.step(batch)
        if not self._end_of_call():  # the one read back of the call
            self._restore(snapshot)
            self.calls_restored += 1
        return losses

    def warmup(self) -> None:
        """Run one forward + backward pass of the training shape and one inference
        pass, without changing weights, optimizer state, generators or counters.

        The first bf16 step on CPU builds oneDNN kernels (seconds); calling this at
        start-up moves that cost out of the first interaction.
        """
        cfg = self.config
        shape = (cfg.batch_size, 1, *self.patch)
        zeros = torch.zeros(shape, device=self.device)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._loss(zeros, zeros, torch.ones_like(zeros))  # kernels do not depend on values
        loss.backward()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.eval()
        try:
            with torch.no_grad(), self._autocast():
                batch = torch.zeros((cfg.sw_batch, 1, *self.patch), device=self.device)
                if cfg.channels_last:
                    batch = batch.contiguous(memory_format=torch.channels_last_3d)
                self.model(batch)
        finally:
            self.model.train()

    # ------------------------------------------------------------------ inference
    def predict(self, image) -> torch.Tensor:
        """Probabilities ``(D, H, W)`` float32 on the device for a raw image.

        Sliding-window inference at the training patch size with
        ``config.sw_overlap`` / ``sw_blend``; autocast in the training precision.
        """
        image = as_volume(image, "image", device=self.device)
        check_finite("image", image)
        cfg = self.config
        self.model.eval()
        try:
            return sliding_window_inference(
                self.model,
                self.normalize(image),
                self.patch,
                overlap=cfg.sw_overlap,
                blend=cfg.sw_blend,
                batch_size=cfg.sw_batch,
                autocast_dtype=self.amp_dtype,
                channels_last=cfg.channels_last,
            )
        finally:
            self.model.train()

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Model, optimizer, scaler, generator and step counter (plain containers)."""
        return {
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "generator": self.generator.get_state(),
            "steps_done": self.steps_done,
            "average": None if self.average is None else self.average.to_saved(),
        }

    def check_state_dict(self, state: dict[str, Any]) -> None:
        """Raise :class:`CheckpointError` unless ``state`` can load into this trainer."""
        check_trainer_state(self, state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output; validated first, so failures change nothing.

        Only the non-architectural config fields (lr, sampling, precision ...) of the
        running trainer stay in force; the optimizer's saved hyper-parameters are
        replaced by the checkpoint's.
        """
        self.check_state_dict(state)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"].cpu())
        self.steps_done = int(state["steps_done"])
        if self.average is not None:  # a checkpoint without an average starts one from its weights
            self.average.load(state.get("average"), self.model)
        self._graph = None  # the optimizer state tensors changed: capture again
