"""``LearnConfig``: every learning hyper-parameter with its measured default."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

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

    Model:
        arch: ``"unet"`` (plain 3D U-Net) or ``"resunet"`` (residual blocks).
        base_width: channels at full resolution (doubling per level).
        depth: number of 2x down-sampling steps.
        norm: ``"instance"`` or ``"group"`` (both independent of the batch size).
    Patches (``(D, H, W)`` order, D the annotation axis):
        patch: training and sliding-window size.
        batch_size: patches per step.
        fg_fraction: probability that a current-case patch is centred on foreground.
        residual_floor: uniform share of residual-weighted centre draws.
        flip_axes: spatial axes flipped at random (augmentation on the device).
            Off by default: the scans share one orientation, and within the short
            online budget flips cost accuracy (LA data, 400 offline steps: held-out
            Dice 0.64 with flips on all three axes, 0.77 without).
        replay_ratio: default share of replay patches per batch.
        normalize: per-case intensity normalisation (see ``normalize_intensity``).
    Optimiser:
        optimizer: ``"adamw"`` (default), ``"adam"`` or ``"sgd"`` (Nesterov
            momentum; momentum 0.99 was measured unstable with these small batches,
            0.9 works).
        lr, weight_decay, momentum: as usual.
        grad_clip: max gradient norm, ``None`` for no clipping.
    Loss:
        bce_weight, dice_weight, dice_smooth: see ``weighted_bce_dice``.
    Execution:
        precision: ``"bf16"`` (default; CPU and GPU), ``"fp16"`` (GPU only, with
            ``GradScaler``) or ``"fp32"``.
        channels_last: use ``torch.channels_last_3d`` for the model and inputs.
        compile: wrap the model in ``torch.compile`` for training steps.
        cuda_graph: capture the whole training step in a CUDA graph (GPU, bf16/fp32
            only; ignored with a warning on CPU).
    Inference:
        sw_overlap, sw_blend, sw_batch: sliding-window overlap fraction, blending
            (``"gaussian"``, ``"linear"``, ``"constant"``) and windows per pass.
    seed: seeds the trainer's device generator (patch draws, flips).
    """

    arch: str = "unet"
    base_width: int = 8
    depth: int = 3
    norm: str = "instance"
    patch: tuple[int, int, int] = (32, 48, 48)
    batch_size: int = 2
    fg_fraction: float = 0.5
    residual_floor: float = 0.25
    flip_axes: tuple[int, ...] = ()
    replay_ratio: float = 0.5
    normalize: str = "robust_zscore"
    optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    grad_clip: float | None = None
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    dice_smooth: float = 1.0
    precision: str = "bf16"
    channels_last: bool = True
    compile: bool = False
    cuda_graph: bool = False
    sw_overlap: float = 0.5
    sw_blend: str = "gaussian"
    sw_batch: int = 4
    seed: int = 0

    def validate(self) -> None:
        """Raise :class:`~engine.errors.InputError` naming the first bad field."""
        for name, allowed in (
            ("arch", tuple(MODELS)),
            ("norm", NORMS),
            ("normalize", NORMALIZE_MODES),
            ("optimizer", OPTIMIZERS),
            ("precision", PRECISIONS),
            ("sw_blend", BLENDS),
        ):
            if getattr(self, name) not in allowed:
                raise InputError(f"LearnConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        check_int("LearnConfig.base_width", self.base_width, 1)
        check_int("LearnConfig.depth", self.depth, 1, 6)
        check_patch(self.patch, "LearnConfig.patch")
        check_int("LearnConfig.batch_size", self.batch_size, 1)
        check_int("LearnConfig.sw_batch", self.sw_batch, 1)
        check_int("LearnConfig.seed", self.seed, 0)
        check_float("LearnConfig.fg_fraction", self.fg_fraction, 0.0, 1.0)
        check_float("LearnConfig.residual_floor", self.residual_floor, 1e-6, 1.0)
        check_float("LearnConfig.replay_ratio", self.replay_ratio, 0.0, 1.0)
        check_float("LearnConfig.lr", self.lr, 1e-12, 10.0)
        check_float("LearnConfig.weight_decay", self.weight_decay, 0.0, 1.0)
        check_float("LearnConfig.momentum", self.momentum, 0.0, 1.0, hi_open=True)
        check_float("LearnConfig.sw_overlap", self.sw_overlap, 0.0, 1.0, hi_open=True)
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
        kwargs = {k: (tuple(v) if k in ("patch", "flip_axes") else v) for k, v in data.items()}
        return cls(**kwargs)


# Fields that determine the parameter / optimizer-state layout: a checkpoint must
# agree on them with the trainer it is loaded into.
ARCH_FIELDS = ("arch", "base_width", "depth", "norm", "optimizer")
