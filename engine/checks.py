"""Validation helpers shared by every layer (below ``ops``, like :mod:`engine.errors`).

Each raises a typed :mod:`engine.errors` exception that names the argument. Value
checks (:func:`check_finite`) read one boolean back from the device: they belong at
the boundary where data enters the engine, never on an internal hot path.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .errors import InputError, NonFiniteError

__all__ = ["check_finite", "check_axis"]


def check_finite(name: str, t: torch.Tensor) -> None:
    """Raise :class:`~engine.errors.NonFiniteError` if the floating tensor ``t``
    (named ``name`` in the message) holds NaN or Inf; non-floating tensors pass."""
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise NonFiniteError(f"{name} holds NaN or Inf")


def check_axis(axis: Any, ndim: int = 3, *, negative: bool = True, what: str = "volume") -> int:
    """``axis`` as an int in ``[0, ndim)``; negative axes count from the end when
    ``negative`` (else they are refused). Raises :class:`~engine.errors.InputError`."""
    ok = isinstance(axis, (int, np.integer)) and not isinstance(axis, bool)
    lo = -ndim if negative else 0
    if not ok or not lo <= int(axis) < ndim:
        span = f"{lo}..{ndim - 1}" if negative else ", ".join(str(a) for a in range(ndim))
        raise InputError(f"axis must be an int in {span} for a {ndim}D {what}, got {axis!r}")
    return int(axis) % ndim
