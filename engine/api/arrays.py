"""Array interop at the API boundary: NumPy / PyTorch / CuPy / DLPack in, the
caller's own type out, and the checks an image gets where it enters."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch

from .. import errors as E
from ..checks import check_finite

__all__ = [
    "ArrayKind",
    "as_tensor",
    "check_image",
    "check_slice_index",
    "check_slice_mask",
    "check_volume_mask",
    "internal_spacing",
]


class ArrayKind:
    """Remembers the caller's array type so results go back the way they came."""

    def __init__(self, x: Any) -> None:
        mod = type(x).__module__.split(".")[0]
        if isinstance(x, torch.Tensor):
            self.kind = "torch"
        elif isinstance(x, np.ndarray):
            self.kind = "numpy"
        elif mod == "cupy":
            self.kind = "cupy"
        elif hasattr(x, "__dlpack__"):
            self.kind = "dlpack"
        else:
            self.kind = "numpy"  # lists and scalars: NumPy out

    def out(self, t: torch.Tensor) -> Any:
        if self.kind == "torch":
            return t
        if self.kind == "cupy" and t.is_cuda:
            import cupy

            return cupy.from_dlpack(t.contiguous())
        return t.detach().cpu().numpy()


def as_tensor(x: Any, name: str, device: torch.device) -> torch.Tensor:
    """NumPy / PyTorch / CuPy / DLPack → tensor on ``device`` (no copy when it is
    already there)."""
    if isinstance(x, torch.Tensor):
        t = x
    elif isinstance(x, np.ndarray):
        if x.dtype == np.bool_:
            x = x.astype(np.uint8)
        if x.dtype.byteorder == ">":
            x = x.astype(x.dtype.newbyteorder("="))
        t = torch.from_numpy(np.ascontiguousarray(x))
    elif hasattr(x, "__dlpack__"):
        t = torch.from_dlpack(x)
    else:
        try:
            t = torch.as_tensor(np.asarray(x))
        except Exception as exc:  # noqa: BLE001
            raise E.InputError(f"{name} must be an array (NumPy, PyTorch, CuPy), got {type(x).__name__}") from exc
    return t.to(device)


def check_image(t: torch.Tensor) -> torch.Tensor:
    """A 3D intensity volume (at least 2 voxels per axis, finite) as float32."""
    if t.dim() != 3:
        raise E.ShapeError(f"image must be a 3D volume, got shape {tuple(t.shape)}")
    if min(t.shape) < 2:
        raise E.ShapeError(f"image must have at least 2 voxels along every axis, got {tuple(t.shape)}")
    if t.dtype == torch.bool or t.is_complex():
        raise E.DTypeError(f"image dtype {t.dtype} is not an intensity type")
    t = t.float()
    check_finite("image", t)
    return t


def internal_spacing(spacing: Optional[Sequence[float]], axis: int) -> Optional[tuple[float, float, float]]:
    """A caller-order spacing validated and moved to the internal order (annotation axis
    first); None stays None."""
    if spacing is None:
        return None
    try:
        sp = tuple(float(s) for s in spacing)
    except (TypeError, ValueError) as exc:
        raise E.InputError(f"spacing must be three positive numbers, got {spacing!r}") from exc
    if len(sp) != 3 or not all(np.isfinite(sp)) or min(sp) <= 0:
        raise E.InputError(f"spacing must be three positive numbers, got {spacing!r}")
    others = [d for d in range(3) if d != axis]
    return (sp[axis], sp[others[0]], sp[others[1]])


def check_slice_index(index: Any, size: int, caller_axis: int) -> int:
    """A slice index in ``[0, size)`` on ``caller_axis`` (SliceIndexError otherwise)."""
    if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
        raise E.SliceIndexError(f"index must be an int, got {index!r}")
    index = int(index)
    if not 0 <= index < size:
        raise E.SliceIndexError(f"slice {index} outside [0, {size - 1}] on axis {caller_axis}")
    return index


def check_slice_mask(
    mask: Any, shape: Sequence[int], caller_axis: int, session_axis: int, device: torch.device
) -> torch.Tensor:
    """A person's 2D mask of a slice on ``caller_axis`` of a volume of ``shape`` (the
    caller's layout): binary, finite, the plane's shape; returned as contiguous uint8 in
    the session's internal orientation (planes of the other axes are (annotation axis,
    remaining axis))."""
    m = as_tensor(mask, "mask", device)
    plane = tuple(s for d, s in enumerate(shape) if d != caller_axis)  # caller's layout
    if m.dim() != 2 or tuple(m.shape) != plane:
        raise E.ShapeError(f"mask must have shape {plane} for a slice on axis {caller_axis}, got {tuple(m.shape)}")
    if caller_axis != session_axis:
        rest = [d for d in range(3) if d not in (caller_axis, session_axis)][0]
        if session_axis > rest:
            m = m.t()
    if m.is_floating_point() and not bool(torch.isfinite(m).all()):
        raise E.NonFiniteError("mask holds NaN or Inf")
    if m.is_complex() or not bool(((m == 0) | (m == 1)).all()):
        raise E.MaskError("mask must be binary (0/1 or bool)")
    return m.to(torch.uint8).contiguous()


def check_volume_mask(mask: Any, name: str, shape: Sequence[int], axis: int, device: torch.device) -> torch.Tensor:
    """A 3D mask in the caller's layout (binary, finite, ``shape``) as float32 with
    ``axis`` first."""
    m = as_tensor(mask, name, device)
    if tuple(m.shape) != tuple(shape):
        raise E.ShapeError(f"{name} must have the image's shape {tuple(shape)}, got {tuple(m.shape)}")
    if m.is_complex():
        raise E.MaskError(f"{name} must be binary (0/1 or bool), got a complex array")
    if m.is_floating_point() and not bool(torch.isfinite(m).all()):
        raise E.NonFiniteError(f"{name} holds NaN or Inf")
    if not bool(((m == 0) | (m == 1)).all()):
        raise E.MaskError(f"{name} must be binary (0/1 or bool)")
    return m.float().movedim(axis, 0).contiguous()
