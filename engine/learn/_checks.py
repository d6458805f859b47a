"""Input validation shared by the learning modules (private).

Every check raises a typed :mod:`engine.errors` exception naming the argument.
Value checks (finiteness, range) read one boolean back from the device; they run
once per call on whole volumes, never inside a training step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..checks import check_finite
from ..errors import DTypeError, InputError, ShapeError


def as_volume(
    x: Any,
    name: str,
    device: torch.device | str | None = None,
    ndim: int = 3,
) -> torch.Tensor:
    """Return ``x`` as a float32 tensor with ``ndim`` dims on ``device``.

    Accepts torch tensors and NumPy arrays of floating, integer or bool dtype.
    A float32 tensor already on ``device`` is returned as is (no copy).
    """
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "fiub":
            raise DTypeError(f"{name} must be a numeric array, got dtype {x.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if x.is_complex():
        raise DTypeError(f"{name} must be real, got {x.dtype}")
    if x.dim() != ndim:
        raise ShapeError(f"{name} must have {ndim} dims, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ShapeError(f"{name} is empty: shape {tuple(x.shape)}")
    return x.to(device=device if device is not None else x.device, dtype=torch.float32)


def check_same_shape(ref: torch.Tensor, ref_name: str, **others: torch.Tensor | None) -> None:
    """Raise :class:`ShapeError` unless every given tensor has ``ref``'s shape."""
    for name, t in others.items():
        if t is not None and tuple(t.shape) != tuple(ref.shape):
            raise ShapeError(f"{name} has shape {tuple(t.shape)}, {ref_name} has {tuple(ref.shape)}")


def check_range(x: torch.Tensor, name: str, lo: float, hi: float | None) -> None:
    """Raise :class:`InputError` unless ``lo <= x <= hi`` (and finite) everywhere."""
    check_finite(name, x)
    bad = x < lo if hi is None else (x < lo) | (x > hi)
    if bool(bad.any()):
        span = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise InputError(f"{name} must be {span}; found values from {float(x.min())} to {float(x.max())}")


def check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    """Return ``value`` if it is an int in ``[minimum, maximum]``, else raise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name} must be an int, got {value!r}")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        span = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise InputError(f"{name} must be {span}, got {value}")
    return value


def check_float(name: str, value: Any, lo: float, hi: float, hi_open: bool = False) -> float:
    """Return ``value`` as float if it is a finite number in ``[lo, hi]`` (or ``[lo, hi)``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not (lo <= value <= hi) or (hi_open and value >= hi):
        close = ")" if hi_open else "]"
        raise InputError(f"{name} must be in [{lo}, {hi}{close}, got {value}")
    return value


def check_patch(patch: Any, name: str = "patch") -> tuple[int, int, int]:
    """Return ``patch`` as a tuple of three positive ints ``(pd, ph, pw)``."""
    try:
        items = tuple(patch)
    except TypeError:
        raise InputError(f"{name} must be three positive ints (D, H, W), got {patch!r}") from None
    if len(items) != 3:
        raise InputError(f"{name} must be three positive ints (D, H, W), got {patch!r}")
    return tuple(check_int(f"{name}[{i}]", p, 1) for i, p in enumerate(items))  # type: ignore[return-value]


def check_batch(batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(image, target, weight)`` of a training batch: tensors ``(B, 1, d, h, w)`` of one
    shape, floating point, on ``device``."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 3:
        raise InputError("batch must be a (image, target, weight) tuple")
    image, target, weight = batch
    for name, t in (("image", image), ("target", target), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise InputError(f"batch {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 5 or t.shape[1] != 1 or t.shape[0] < 1:
            raise ShapeError(f"batch {name} must be (B, 1, D, H, W), got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise InputError(f"batch {name} must be floating point, got {t.dtype}")
        if t.device != device and not (t.device.type == device.type == "cuda" and device.index is None):
            raise InputError(f"batch {name} is on {t.device}, the trainer on {device}")
    check_same_shape(image, "image", target=target, weight=weight)
    return image, target, weight
