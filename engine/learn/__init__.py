"""The learning core: 3D segmenters, losses, patch sampling, replay, online trainer,
checkpoints (DESIGN section 2, step 4).

Typical use by a session (all volumes ``(D, H, W)`` with D the annotation axis)::

    from engine.learn import LearnConfig, Trainer, build_targets, checkpoint

    trainer = Trainer(LearnConfig(), device="cuda")
    replay = trainer.make_replay(capacity=512)           # or ReplayBuffer(...)
    target, weight = build_targets(q, c, extent, axis=0)
    trainer.train_case(image, target, weight, steps=40, replay=replay)
    probs = trainer.predict(image)                         # float32 (D, H, W)
    replay.add_case(image, target, weight, n_patches=16)   # commit the case
    checkpoint.save("state.ckpt", trainer, replay, counters={"case": 7})
    counters = checkpoint.load("state.ckpt", trainer, replay)

This package imports only torch, numpy and :mod:`engine.errors`.
"""

from __future__ import annotations

from . import checkpoint
from .config import LearnConfig
from .losses import build_targets, extent_mask, weighted_bce_dice
from .models import UNet3D, build_model, normalize_intensity, sliding_window_inference
from .replay import ReplayBuffer
from .sampler import PatchSampler, extract_patches, random_flip
from .trainer import Trainer

__all__ = [
    "LearnConfig",
    "PatchSampler",
    "ReplayBuffer",
    "Trainer",
    "UNet3D",
    "build_model",
    "build_targets",
    "checkpoint",
    "extent_mask",
    "extract_patches",
    "normalize_intensity",
    "random_flip",
    "sliding_window_inference",
    "weighted_bce_dice",
]
