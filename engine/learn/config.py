"""``LearnConfig``: every learning hyper-parameter with its measured default."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Optional

from ..errors import InputError
from ._checks import check_float, check_int, check_patch
from .models import MODELS, NORMALIZE_MODES, NORMS

__all__ = ["LearnConfig", "PRECISIONS", "OPTIMIZERS", "BLENDS", "ARCH_FIELDS"]

PRECISIONS = ("bf16", "fp16", "fp32")
OPTIMIZERS = ("adamw", "adam", "sgd")
BLENDS = ("gaussian", "linear", "constant")


@dataclass
class LearnConfig:
    """Hyper-parameters of the segmenter, the optimiser and the sampling.

    Fields marked *planned* default to ``None`` (``"auto"`` for ``normalize``): the
    engine plans them from the data (:func:`engine.learn.plan.make_plan`, DESIGN §5a);
    a value given here overrides the plan. :meth:`concrete` fills them with fixed
    defaults for a :class:`~engine.learn.Trainer` used without a plan.

    Model:
        arch: a name of :data:`engine.learn.models.MODELS` (``"unet"`` plain 3D U-Net,
            ``"resunet"`` residual blocks).
        base_width: channels at full resolution (doubling per level).
        depth: number of down-sampling steps.
        norm: ``"instance"`` or ``"group"`` (both independent of the batch size).
        strides, kernels: *planned* per-level strides (``depth`` triples) and
            convolution kernels (``depth + 1`` triples); default isotropic 2 / 3.
    Geometry (``(D, H, W)`` order, D the annotation axis):
        target_spacing: *planned* voxel size (mm) the segmenter works at; cases are
            resampled in and predictions out where it differs enough from theirs.
        patch: *planned* training and sliding-window size (voxels at the target
            spacing); default without a plan (32, 48, 48).
        patch_voxels: *planned* voxel budget of a patch the plan spends.
        batch_size: *planned* patches per step (default 2).
        fg_fraction: probability that a current-case patch is centred on foreground.
        residual_floor: uniform share of residual-weighted centre draws.
        flip_axes: spatial axes flipped at random (augmentation on the device).
            Off by default: the scans share one orientation, and within the short
            online budget flips cost accuracy (LA data, 400 offline steps: held-out
            Dice 0.64 with flips on all three axes, 0.77 without).
        replay_ratio: default share of replay patches per batch.
        normalize: *planned* intensity normalisation (``"auto"``: CT-like data ``"ct"``,
            else ``"robust_zscore"``; see ``normalize_intensity``).
        ct_window: *planned* ``(clip_lo, clip_hi, mean, std)`` of ``normalize="ct"``.
    Optimiser:
        optimizer: ``"adamw"`` (default), ``"adam"`` or ``"sgd"`` (Nesterov
            momentum; momentum 0.99 was measured unstable with these small batches,
            0.9 works).
        lr, weight_decay, momentum: as usual.
        grad_clip: max gradient norm, ``None`` for no clipping.
    Loss:
        bce_weight, dice_weight, dice_smooth: see ``weighted_bce_dice``.
    Execution:
        precision: ``"auto"`` (default: bf16 where the device computes bf16 natively,
            else fp32; :mod:`engine.learn.device`), ``"bf16"`` (CPU and GPU), ``"fp16"``
            (GPU only, with ``GradScaler``) or ``"fp32"``.
        channels_last: use ``torch.channels_last_3d`` for the model and inputs
            (default; faster in fp32 and bf16 alike on the CPUs measured).
        compile: wrap the model in ``torch.compile`` for training steps.
        cuda_graph: capture the whole training step in a CUDA graph (GPU, bf16/fp32
            only; ignored with a warning on CPU).
    Inference:
        sw_overlap, sw_blend, sw_batch: sliding-window overlap fraction, blending
            (``"gaussian"``, ``"linear"``, ``"constant"``) and windows per pass
            (*planned*, default 4). ``sw_overlap`` is for whole volumes
            (``Engine.predict``, held-out evaluation).
        sw_overlap_round: the overlap of a session's prediction inside its region of
            interest, the one a round waits for (default 0.25: 2.2-2.4x fewer windows
            than 0.5 on the regions measured, Gaussian blending keeps the seams soft).
    Serving weights:
        ema: the general model, which predicts new cases and whole volumes
            (``Engine.predict``, held-out evaluation, a session before it has learned),
            is an exponential moving average of the training weights with this decay
            per step (default 0.99), warmed up as ``min(ema, (1 + n) / (10 + n))`` after
            ``n`` updates; a session that has learned its own case predicts from the
            training weights, which have just adapted to it. 0: one model, the
            training weights.
    seed: seeds the trainer's device generator (patch draws, flips).
    """

    arch: str = "unet"
    base_width: int = 8
    depth: int = 3
    strides: Optional[tuple] = None
    kernels: Optional[tuple] = None
    target_spacing: Optional[tuple[float, float, float]] = None
    norm: str = "instance"
    patch: Optional[tuple[int, int, int]] = None
    patch_voxels: Optional[int] = None
    batch_size: Optional[int] = None
    fg_fraction: float = 0.5
    residual_floor: float = 0.25
    flip_axes: tuple[int, ...] = ()
    replay_ratio: float = 0.5
    normalize: str = "auto"
    ct_window: Optional[tuple[float, float, float, float]] = None
    optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    grad_clip: float | None = None
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    dice_smooth: float = 1.0
    precision: str = "auto"
    channels_last: bool = True
    compile: bool = False
    cuda_graph: bool = False
    sw_overlap: float = 0.5
    sw_overlap_round: float = 0.25
    ema: float = 0.99
    sw_blend: str = "gaussian"
    sw_batch: Optional[int] = None
    seed: int = 0

    def validate(self) -> None:
        """Raise :class:`~engine.errors.InputError` naming the first bad field."""
        for name, allowed in (
            ("arch", tuple(MODELS)),
            ("norm", NORMS),
            ("normalize", NORMALIZE_MODES + ("auto",)),
            ("optimizer", OPTIMIZERS),
            ("precision", PRECISIONS + ("auto",)),
            ("sw_blend", BLENDS),
        ):
            if getattr(self, name) not in allowed:
                raise InputError(f"LearnConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        check_int("LearnConfig.base_width", self.base_width, 1)
        check_int("LearnConfig.depth", self.depth, 1, 6)
        if self.patch is not None:
            check_patch(self.patch, "LearnConfig.patch")
        if self.patch_voxels is not None:
            check_int("LearnConfig.patch_voxels", self.patch_voxels, 1)
        if self.batch_size is not None:
            check_int("LearnConfig.batch_size", self.batch_size, 1)
        if self.sw_batch is not None:
            check_int("LearnConfig.sw_batch", self.sw_batch, 1)
        if self.target_spacing is not None:
            ts = tuple(self.target_spacing)
            if len(ts) != 3 or not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in ts):
                raise InputError(f"LearnConfig.target_spacing must be three positive numbers, got {ts!r}")
        for name, n in (("strides", self.depth), ("kernels", self.depth + 1)):
            v = getattr(self, name)
            if v is not None and (len(v) != n or any(len(t) != 3 or min(t) < 1 for t in v)):
                raise InputError(f"LearnConfig.{name} must be {n} triples of positive ints, got {v!r}")
        if self.kernels is not None and any(k % 2 == 0 for t in self.kernels for k in t):
            raise InputError(f"LearnConfig.kernels must be odd, got {self.kernels!r}")
        if self.normalize == "ct" and (
            self.ct_window is None or len(self.ct_window) != 4 or not float(self.ct_window[3]) > 0
        ):
            raise InputError("LearnConfig.normalize='ct' needs ct_window=(clip_lo, clip_hi, mean, std > 0)")
        check_int("LearnConfig.seed", self.seed, 0)
        check_float("LearnConfig.fg_fraction", self.fg_fraction, 0.0, 1.0)
        check_float("LearnConfig.residual_floor", self.residual_floor, 1e-6, 1.0)
        check_float("LearnConfig.replay_ratio", self.replay_ratio, 0.0, 1.0)
        check_float("LearnConfig.lr", self.lr, 1e-12, 10.0)
        check_float("LearnConfig.weight_decay", self.weight_decay, 0.0, 1.0)
        check_float("LearnConfig.momentum", self.momentum, 0.0, 1.0, hi_open=True)
        check_float("LearnConfig.sw_overlap", self.sw_overlap, 0.0, 1.0, hi_open=True)
        check_float("LearnConfig.sw_overlap_round", self.sw_overlap_round, 0.0, 1.0, hi_open=True)
        check_float("LearnConfig.ema", self.ema, 0.0, 1.0, hi_open=True)
        for name in ("bce_weight", "dice_weight", "dice_smooth"):
            check_float(f"LearnConfig.{name}", getattr(self, name), 0.0, 1e6)
        if self.grad_clip is not None:
            check_float("LearnConfig.grad_clip", self.grad_clip, 1e-12, 1e12)
        if any(a not in (0, 1, 2) for a in self.flip_axes) or len(set(self.flip_axes)) != len(self.flip_axes):
            raise InputError(f"LearnConfig.flip_axes must be distinct axes from (0, 1, 2), got {self.flip_axes!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-container form (tuples as lists) for checkpoints."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LearnConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`InputError`."""
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise InputError(f"unknown LearnConfig fields: {sorted(unknown)}")
        kwargs = {k: (tuple(v) if k in _TUPLES and v is not None else v) for k, v in data.items()}
        for k in ("strides", "kernels"):
            if kwargs.get(k) is not None:
                kwargs[k] = tuple(tuple(int(x) for x in t) for t in kwargs[k])
        return cls(**kwargs)

    @property
    def planned(self) -> bool:
        """Whether every planned field holds a value (nothing left for a plan)."""
        return all(getattr(self, f) is not None for f in _PLANNED) and self.normalize != "auto"

    def concrete(self) -> "LearnConfig":
        """A copy with every planned field still open set to its fixed default
        (isotropic strides and kernels, patch (32, 48, 48), batch 2, robust z-score)."""
        d = {
            "patch": (32, 48, 48),
            "batch_size": 2,
            "sw_batch": 4,
            "strides": ((2, 2, 2),) * self.depth,
            "kernels": ((3, 3, 3),) * (self.depth + 1),
            "patch_voxels": None,
            "target_spacing": None,
        }
        changes = {k: v for k, v in d.items() if getattr(self, k) is None}
        if self.normalize == "auto":
            changes["normalize"] = "robust_zscore"
        return replace(self, **changes)


# Fields that determine the parameter / optimizer-state layout: a checkpoint must
# agree on them with the trainer it is loaded into.
ARCH_FIELDS = ("arch", "base_width", "depth", "norm", "optimizer", "strides", "kernels")
#: Fields a plan fills when they are None.
_PLANNED = ("patch", "batch_size", "sw_batch", "strides", "kernels", "target_spacing")
_TUPLES = ("patch", "flip_axes", "target_spacing", "ct_window")
