"""Trainer state helpers (private): in-place snapshots of weights and optimiser
state, and the check that a saved trainer state fits a trainer."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import CheckpointError
from .average import WeightAverage
from .config import ARCH_FIELDS

__all__ = ["snapshot", "restore", "check_trainer_state"]


def snapshot(model: torch.nn.Module, optimizer: torch.optim.Optimizer):
    """Copies of the weights and of the optimiser's per-parameter state."""
    params = [p.detach().clone() for p in model.parameters()]
    state = {
        id(p): {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in s.items()}
        for p, s in optimizer.state.items()
    }
    return params, state


def restore(model: torch.nn.Module, optimizer: torch.optim.Optimizer, snap) -> None:
    """Write a :func:`snapshot` back in place (state created after it is zeroed: a
    fresh optimiser state)."""
    params, state = snap
    with torch.no_grad():
        for p, saved in zip(model.parameters(), params):
            p.copy_(saved)
        for p, s in optimizer.state.items():
            saved = state.get(id(p))
            for k, v in s.items():
                if isinstance(v, torch.Tensor):
                    if saved is None:
                        v.zero_()
                    else:
                        v.copy_(saved[k])


def _canon(v: Any) -> Any:
    """Lists and tuples (nested) as tuples, for comparing saved configs."""
    return tuple(_canon(x) for x in v) if isinstance(v, (list, tuple)) else v


def check_trainer_state(trainer, state: dict[str, Any]) -> None:
    """Raise :class:`CheckpointError` unless ``state`` can load into ``trainer``."""
    try:
        saved = state["config"]
        depth = int(saved.get("depth", trainer.config.depth))
        defaults = {"strides": ((2, 2, 2),) * depth, "kernels": ((3, 3, 3),) * (depth + 1)}
        for name in ARCH_FIELDS:
            theirs_v = _canon(saved.get(name, defaults.get(name)))
            if theirs_v is None and name in defaults:  # checkpoints from before planned nets
                theirs_v = _canon(defaults[name])
            if theirs_v != _canon(getattr(trainer.config, name)):
                raise CheckpointError(
                    f"checkpoint {name}={saved.get(name)!r} does not match the trainer's "
                    f"{getattr(trainer.config, name)!r}"
                )
        mine = trainer.model.state_dict()
        theirs = state["model"]
        if set(mine) != set(theirs):
            raise CheckpointError("checkpoint model parameters do not match the model's")
        for key, value in mine.items():
            if not isinstance(theirs[key], torch.Tensor) or theirs[key].shape != value.shape:
                raise CheckpointError(f"checkpoint parameter {key} has the wrong shape")
        groups = state["optimizer"]["param_groups"]
        if [len(g["params"]) for g in groups] != [len(g["params"]) for g in trainer.optimizer.param_groups]:
            raise CheckpointError("checkpoint optimizer groups do not match the model's parameters")
        if state.get("average") is not None and not WeightAverage.check(state["average"], trainer.model):
            raise CheckpointError("checkpoint weight average does not match the model's parameters")
        if not isinstance(state["generator"], torch.Tensor) or int(state["steps_done"]) < 0:
            raise CheckpointError("checkpoint trainer generator / step counter is invalid")
    except (KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint trainer state is malformed ({exc!r})") from None
