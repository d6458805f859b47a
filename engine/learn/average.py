"""The general model: an exponential moving average of the training weights.

Online training takes a few dozen steps per case, which pull the weights towards the
case in hand. :class:`WeightAverage` keeps ``avg <- d avg + (1 - d) w`` after every
step with ``d = min(decay, (1 + n) / (10 + n))`` after ``n`` updates (warmed up, so the
average follows quickly while the model is young). The engine predicts new cases,
whole volumes and held-out data from it (``LearnConfig.ema``, ``docs/learner.md``).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

__all__ = ["WeightAverage"]


class WeightAverage:
    """The average of ``model``'s parameters (copies, on their device)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = float(decay)
        self.params = [p.detach().clone() for p in model.parameters()]
        self.updates = 0

    def update(self, model: torch.nn.Module) -> None:
        """One step towards the weights (a skipped step left them as they were, so the
        average moves towards finite weights; no read back)."""
        n = self.updates
        d = min(self.decay, (1.0 + n) / (10.0 + n))
        with torch.no_grad():
            torch._foreach_lerp_(self.params, [p.detach() for p in model.parameters()], 1.0 - d)
        self.updates = n + 1

    def state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """``model``'s state dict with the parameters replaced by the average (the same
        tensors, not copies)."""
        state = model.state_dict()
        for (name, _), avg in zip(model.named_parameters(), self.params):
            state[name] = avg
        return state

    def snapshot(self) -> tuple[list[torch.Tensor], int]:
        return [a.clone() for a in self.params], self.updates

    def restore(self, snap: tuple[list[torch.Tensor], int]) -> None:
        params, self.updates = snap
        with torch.no_grad():
            torch._foreach_copy_(self.params, params)

    def to_saved(self) -> dict[str, Any]:
        return {"params": [a.clone() for a in self.params], "updates": self.updates}

    def load(self, saved: Optional[dict[str, Any]], model: torch.nn.Module) -> None:
        """Restore :meth:`to_saved` output; ``None`` (a checkpoint without an average)
        starts the average from ``model``'s weights."""
        src: Sequence[torch.Tensor] = saved["params"] if saved else [p.detach() for p in model.parameters()]
        with torch.no_grad():
            for a, v in zip(self.params, src):
                a.copy_(v)
        self.updates = int(saved["updates"]) if saved else 0

    @staticmethod
    def check(saved: Any, model: torch.nn.Module) -> bool:
        """Whether ``saved`` (:meth:`to_saved` output) fits ``model``'s parameters."""
        try:
            params = list(model.parameters())
            got = saved["params"]
            return len(got) == len(params) and all(
                isinstance(a, torch.Tensor) and a.shape == p.shape for a, p in zip(got, params)
            )
        except (KeyError, TypeError):
            return False
