"""Segmentation quality and annotation effort.

Masks are binary arrays: bool, or integer/float arrays holding only 0 and 1
(probabilities must be thresholded first, e.g. ``p >= 0.5``; anything else raises
:class:`~engine.errors.MaskError`). numpy arrays, torch tensors and CuPy arrays are
accepted (the latter two are copied to host memory: metrics run on the CPU).

Definitions
-----------
* **Dice** ``2|A ∩ B| / (|A| + |B|)``; when both masks are empty it is **1.0**
  (nothing to find, nothing found), when exactly one is empty it is 0.0.
* **Per-slice Dice** along ``axis``: the Dice of each 2D slice, with the same
  empty/empty convention (``empty=`` changes the value, e.g. ``nan`` to skip
  such slices in a mean).
* **Boundary pixels of a 2D slice mask**: foreground pixels with at least one
  4-neighbour (up, down, left, right) in the background; pixels on the image
  edge count as having background outside. A one-pixel-wide structure is all
  boundary.
* **Boundary of a 3D ground truth** along the annotation axis: the sum over all
  slices along that axis of their 2D boundary pixel counts.
* **Slice effort**: distinct slices drawn / slices holding the object along the
  annotation axis. A drawn slice counts even when it holds no object (drawing it
  still cost a look); so the value can exceed 1.
* **Labor**: 2D boundary pixels of the ground truth on the drawn slices /
  boundary of the whole ground truth (as above). It is 1.0 when every slice
  holding the object was drawn.
* **Hausdorff-95** (``hausdorff95``): the larger of the two directed 95th
  percentiles of distances between the 3D surfaces (surface voxels = foreground
  voxels with a 6-neighbour in the background or on the volume edge), in units
  of ``spacing`` (mm); 0.0 when both masks are empty and ``inf`` when exactly
  one is.

Boundary counting runs in numba (``njit``, compiled on first use, no cache files)
with a numpy fallback of identical results; ``backend="numpy"`` forces it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

from ..checks import check_axis
from ..errors import InputError, MaskError, ShapeError, SliceIndexError

__all__ = [
    "dice",
    "per_slice_dice",
    "slice_boundary",
    "boundary_counts",
    "object_slices",
    "slice_effort",
    "labor",
    "annotation_effort",
    "Effort",
    "hausdorff95",
]


# --------------------------------------------------------------------------- inputs


def as_mask(mask: Any, name: str = "mask") -> np.ndarray:
    """``mask`` as a bool numpy array; MaskError if it holds values other than 0/1.

    Accepts numpy arrays, torch tensors (any device) and CuPy arrays (copied to host).
    """
    if hasattr(mask, "detach"):  # a torch tensor: bring it to host memory
        mask = mask.detach().cpu().numpy()
    elif type(mask).__module__.split(".")[0] == "cupy":
        mask = mask.get()
    arr = np.asarray(mask)
    if arr.dtype == np.bool_:
        return arr
    if arr.dtype.kind not in "biuf":
        raise MaskError(f"{name} must be numeric or bool, got dtype {arr.dtype}")
    out = arr != 0
    bad = out & (arr != 1)  # NaN lands here too
    if bad.any():
        value = arr[bad].ravel()[0].item()
        raise MaskError(f"{name} is not binary: holds {value!r} (threshold probabilities first)")
    return out


def _pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    ma, mb = as_mask(a, "prediction"), as_mask(b, "target")
    if ma.shape != mb.shape:
        raise ShapeError(f"prediction shape {ma.shape} != target shape {mb.shape}")
    return ma, mb


def _slices_first(mask: np.ndarray, axis: int) -> np.ndarray:
    """3D bool -> contiguous uint8 ``(n_slices, H, W)`` with ``axis`` moved first."""
    if mask.ndim != 3:
        raise ShapeError(f"need a 3D mask, got shape {mask.shape}")
    return np.ascontiguousarray(np.moveaxis(mask, check_axis(axis, 3, what="mask"), 0), dtype=np.uint8)


# --------------------------------------------------------------------------- Dice


def dice(prediction: Any, target: Any) -> float:
    """Dice of two binary masks of the same shape (any ndim); 1.0 when both are empty."""
    a, b = _pair(prediction, target)
    inter = np.count_nonzero(a & b)
    total = np.count_nonzero(a) + np.count_nonzero(b)
    return 1.0 if total == 0 else 2.0 * inter / total


def per_slice_dice(prediction: Any, target: Any, axis: int = 0, empty: float = 1.0) -> np.ndarray:
    """Dice of every 2D slice along ``axis`` of two 3D masks.

    Returns float64 ``(n_slices,)``; slices where both masks are empty get ``empty``.
    """
    a, b = _pair(prediction, target)
    if a.ndim != 3:
        raise ShapeError(f"need 3D masks, got shape {a.shape}")
    ax = check_axis(axis, 3, what="mask")
    other = tuple(i for i in range(3) if i != ax)
    inter = np.count_nonzero(a & b, axis=other).astype(np.float64)
    total = (np.count_nonzero(a, axis=other) + np.count_nonzero(b, axis=other)).astype(np.float64)
    out = np.full(total.shape, float(empty))
    np.divide(2.0 * inter, total, out=out, where=total > 0)
    return out


# --------------------------------------------------------------------------- boundary


def _boundary_numpy(stack: np.ndarray) -> np.ndarray:
    """``(n, H, W)`` uint8 -> bool boundary mask (4-neighbourhood, edge is background)."""
    m = stack.astype(bool)
    pad = np.pad(m, ((0, 0), (1, 1), (1, 1)), constant_values=False)
    interior = pad[:, :-2, 1:-1] & pad[:, 2:, 1:-1] & pad[:, 1:-1, :-2] & pad[:, 1:-1, 2:]
    return m & ~interior


def _counts_numpy(stack: np.ndarray) -> np.ndarray:
    return np.count_nonzero(_boundary_numpy(stack), axis=(1, 2)).astype(np.int64)


_NUMBA_KERNEL: Optional[Callable[[np.ndarray], np.ndarray]] = None
_NUMBA_ERROR: Optional[str] = None


def _numba_kernel() -> Optional[Callable[[np.ndarray], np.ndarray]]:
    """Compile (once) the numba boundary counter; None when numba is unusable."""
    global _NUMBA_KERNEL, _NUMBA_ERROR
    if _NUMBA_KERNEL is not None or _NUMBA_ERROR is not None:
        return _NUMBA_KERNEL
    try:
        from numba import njit

        @njit(cache=False)
        def counts(stack):  # stack: (n, H, W) uint8, C-contiguous
            n, h, w = stack.shape
            out = np.zeros(n, dtype=np.int64)
            for z in range(n):
                c = 0
                for y in range(h):
                    for x in range(w):
                        if stack[z, y, x] == 0:
                            continue
                        if (
                            y == 0
                            or y == h - 1
                            or x == 0
                            or x == w - 1
                            or stack[z, y - 1, x] == 0
                            or stack[z, y + 1, x] == 0
                            or stack[z, y, x - 1] == 0
                            or stack[z, y, x + 1] == 0
                        ):
                            c += 1
                out[z] = c
            return out

        counts(np.zeros((1, 2, 2), dtype=np.uint8))  # compile now, fail here if at all
        _NUMBA_KERNEL = counts
    except Exception as exc:  # numba missing or unable to compile: numpy serves
        _NUMBA_ERROR = f"{type(exc).__name__}: {exc}"
    return _NUMBA_KERNEL


def slice_boundary(mask2d: Any) -> np.ndarray:
    """Boundary pixels of a 2D mask as a bool ``(H, W)`` array (definition above)."""
    m = as_mask(mask2d)
    if m.ndim != 2:
        raise ShapeError(f"need a 2D mask, got shape {m.shape}")
    return _boundary_numpy(m[None].astype(np.uint8))[0]


def boundary_counts(mask: Any, axis: int = 0, backend: str = "auto") -> np.ndarray:
    """2D boundary pixel count of every slice along ``axis``.

    Args:
        mask: 3D binary mask, or a 2D one (then one count, ``axis`` ignored).
        axis: the slicing axis.
        backend: ``"auto"`` (numba if it compiles, else numpy), ``"numba"`` or ``"numpy"``.

    Returns int64 ``(n_slices,)``.
    """
    m = as_mask(mask)
    stack = np.ascontiguousarray(m[None], dtype=np.uint8) if m.ndim == 2 else _slices_first(m, axis)
    if backend not in ("auto", "numba", "numpy"):
        raise InputError(f"backend must be 'auto', 'numba' or 'numpy', got {backend!r}")
    kernel = _numba_kernel() if backend != "numpy" else None
    if backend == "numba" and kernel is None:
        raise InputError(f"numba backend unavailable: {_NUMBA_ERROR}")
    return kernel(stack) if kernel is not None else _counts_numpy(stack)


# --------------------------------------------------------------------------- effort


@dataclass(frozen=True)
class Effort:
    """Annotation effort of a set of drawn slices against a ground truth.

    ``slices`` = ``n_drawn / n_object_slices``; ``labor`` =
    ``boundary_drawn / boundary_total`` (module docstring).
    """

    n_drawn: int
    n_object_slices: int
    boundary_drawn: int
    boundary_total: int

    @property
    def slices(self) -> float:
        return self.n_drawn / self.n_object_slices

    @property
    def labor(self) -> float:
        return self.boundary_drawn / self.boundary_total


def object_slices(label: Any, axis: int = 0) -> np.ndarray:
    """Indices of the slices along ``axis`` that hold foreground, int64 ascending."""
    stack = _slices_first(as_mask(label, "label"), axis)
    return np.flatnonzero(stack.reshape(stack.shape[0], -1).any(axis=1)).astype(np.int64)


def _drawn_indices(drawn: Iterable[int], n: int) -> np.ndarray:
    idx = []
    for z in drawn:
        if not isinstance(z, (int, np.integer)) or isinstance(z, bool):
            raise SliceIndexError(f"slice index must be an int, got {z!r}")
        if not 0 <= z < n:
            raise SliceIndexError(f"slice index {z} out of range [0, {n})")
        idx.append(int(z))
    return np.unique(np.asarray(idx, dtype=np.int64))


def annotation_effort(label: Any, drawn: Iterable[int], axis: int = 0, backend: str = "auto") -> Effort:
    """Effort of drawing the slices ``drawn`` (indices along ``axis``; repeats
    count once) of the 3D ground truth ``label``. MaskError if ``label`` is empty."""
    m = as_mask(label, "label")
    counts = boundary_counts(m, axis, backend)
    holding = int(np.count_nonzero(counts))  # a non-empty slice has >= 1 boundary pixel
    if holding == 0:
        raise MaskError("ground truth is empty: annotation effort is undefined")
    idx = _drawn_indices(drawn, counts.shape[0])
    return Effort(int(idx.size), holding, int(counts[idx].sum()), int(counts.sum()))


def slice_effort(label: Any, drawn: Iterable[int], axis: int = 0) -> float:
    """Distinct slices drawn / slices holding the object (along ``axis``)."""
    return annotation_effort(label, drawn, axis).slices


def labor(label: Any, drawn: Iterable[int], axis: int = 0) -> float:
    """Ground-truth boundary pixels on the drawn slices / on all slices (along ``axis``)."""
    return annotation_effort(label, drawn, axis).labor


# --------------------------------------------------------------------------- Hausdorff


def _surface(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def hausdorff95(prediction: Any, target: Any, spacing: Optional[Sequence[float]] = None) -> float:
    """95th-percentile symmetric Hausdorff distance between two binary masks.

    ``max(P95(d(S_pred -> S_target)), P95(d(S_target -> S_pred)))`` over surface
    voxels, distances in ``spacing`` units (default 1 per axis).
    """
    from scipy import ndimage

    a, b = _pair(prediction, target)
    sp = np.ones(a.ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    if sp.shape != (a.ndim,) or np.any(sp <= 0) or not np.all(np.isfinite(sp)):
        raise InputError(f"spacing must be {a.ndim} positive numbers, got {spacing!r}")
    if not a.any() and not b.any():
        return 0.0
    if not a.any() or not b.any():
        return float("inf")
    sa, sb = _surface(a), _surface(b)
    to_b = ndimage.distance_transform_edt(~sb, sampling=sp)[sa]
    to_a = ndimage.distance_transform_edt(~sa, sampling=sp)[sb]
    return float(max(np.percentile(to_b, 95), np.percentile(to_a, 95)))
