"""A simulated person who draws ground-truth slice masks, optionally imperfectly.

The annotator knows a 3D ground truth ``label`` and an annotation ``axis``.
``draw(z)`` returns the 2D mask of slice ``z`` (``numpy.take(label, z, axis)``:
the other two axes keep their order), as a person would draw it:

* **jitter** ``j`` (pixels, default 0): the outline wanders by up to ``j``
  pixels. A smooth random field over the slice picks regions where the outline
  grows (one binary dilation) or shrinks (one binary erosion), both with the
  4-neighbour cross (the field exceeds +/-0.5 std, so about 30 % of the outline
  grows and 30 % shrinks); this is repeated ``j`` times with fresh fields. So every
  pixel that differs from the ground truth lies within ``j`` pixels (city-block)
  of the ground-truth boundary: a grown pixel touches the object, a shrunk
  pixel was a boundary pixel.
* **miss_islands** ``p``: every connected component (8-connected) smaller than
  ``island_size`` pixels is left out with probability ``p``. The largest
  component of a slice is never missed.
* A slice that holds the object never comes back empty: if jitter erased it, the
  unjittered mask is returned.

Results are deterministic: the randomness of slice ``z`` depends only on
``(seed, axis, z)``, so drawing a slice twice gives the same mask and the order
of calls does not matter.

The annotator also knows the object's extent along the axis (``extent()``, the
first and last slice holding it: a person marks them) and counts what it drew:
the distinct slices, and the 2D boundary pixels of the masks it returned (the
definition of :mod:`engine.eval.metrics`). ``effort()`` relates them to the
ground truth: slices drawn / slices holding the object, and boundary pixels
drawn / boundary pixels of the whole ground truth (the "labor" measure; with
jitter the drawn outlines differ slightly from the ground truth's).
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from ..errors import InputError, MaskError, ShapeError, SliceIndexError
from .metrics import Effort, as_mask, boundary_counts

__all__ = ["SimulatedAnnotator"]

_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)
_SQUARE = np.ones((3, 3), dtype=bool)
_FIELD_SIGMA = 3.0  # pixels: the size of grow/shrink regions
_FIELD_CUT = 0.5  # |field| above this (in field std units) grows or shrinks


class SimulatedAnnotator:
    """Draws slices of ``label`` along ``axis`` (module docstring).

    Args:
        label: 3D binary ground truth (bool or 0/1 values), any array-like.
        axis: the annotation axis, 0, 1 or 2.
        jitter: outline jitter in pixels, an int >= 0.
        miss_islands: probability in [0, 1] of missing each small component.
        seed: an int >= 0; results depend only on it and the slice.
        island_size: components with fewer pixels than this count as small.
    """

    def __init__(
        self,
        label: Any,
        axis: int = 0,
        jitter: int = 0,
        miss_islands: float = 0.0,
        seed: int = 0,
        island_size: int = 20,
    ) -> None:
        mask = as_mask(label, "label")
        if mask.ndim != 3:
            raise ShapeError(f"label must be 3D, got shape {mask.shape}")
        if axis not in (0, 1, 2) or isinstance(axis, bool):
            raise InputError(f"axis must be 0, 1 or 2, got {axis!r}")
        if not isinstance(jitter, (int, np.integer)) or isinstance(jitter, bool) or jitter < 0:
            raise InputError(f"jitter must be an int >= 0, got {jitter!r}")
        if not 0.0 <= float(miss_islands) <= 1.0:
            raise InputError(f"miss_islands must be a probability in [0, 1], got {miss_islands!r}")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise InputError(f"seed must be an int >= 0, got {seed!r}")
        if not isinstance(island_size, (int, np.integer)) or island_size < 1:
            raise InputError(f"island_size must be an int >= 1, got {island_size!r}")
        self.axis = int(axis)
        self.jitter = int(jitter)
        self.miss_islands = float(miss_islands)
        self.seed = int(seed)
        self.island_size = int(island_size)
        self._stack = np.ascontiguousarray(np.moveaxis(mask, self.axis, 0))  # (n, H, W) bool
        self._gt_counts = boundary_counts(self._stack, axis=0)
        self._drawn: dict[int, int] = {}  # slice -> boundary pixels of the drawn mask

    # ------------------------------------------------------------------ geometry

    @property
    def n_slices(self) -> int:
        return int(self._stack.shape[0])

    @property
    def slice_shape(self) -> tuple[int, int]:
        return (int(self._stack.shape[1]), int(self._stack.shape[2]))

    def object_slices(self) -> np.ndarray:
        """Indices of the slices holding the object, int64 ascending."""
        return np.flatnonzero(self._gt_counts).astype(np.int64)

    def extent(self) -> tuple[int, int]:
        """``(first, last)`` slice holding the object (inclusive); MaskError if empty."""
        idx = self.object_slices()
        if idx.size == 0:
            raise MaskError("the ground truth is empty: the object has no extent")
        return int(idx[0]), int(idx[-1])

    # ------------------------------------------------------------------ drawing

    def _check_index(self, index: Any) -> int:
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise SliceIndexError(f"slice index must be an int, got {index!r}")
        if not 0 <= index < self.n_slices:
            raise SliceIndexError(f"slice index {index} out of range [0, {self.n_slices})")
        return int(index)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, self.axis, index]))

    def _drop_islands(self, gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        from scipy import ndimage

        labels, n = ndimage.label(gt, structure=_SQUARE)
        if n < 2:
            return gt
        sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        keep = np.ones(n + 1, dtype=bool)
        keep[0] = False
        draws = rng.random(n)
        largest = int(np.argmax(sizes))
        for i in range(n):
            if i != largest and sizes[i] < self.island_size and draws[i] < self.miss_islands:
                keep[i + 1] = False
        return keep[labels]

    def _jittered(self, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        from scipy import ndimage

        out = mask
        for _ in range(self.jitter):
            field = ndimage.gaussian_filter(rng.standard_normal(mask.shape), _FIELD_SIGMA)
            field /= max(float(field.std()), 1e-12)
            grown = ndimage.binary_dilation(out, structure=_CROSS)
            shrunk = ndimage.binary_erosion(out, structure=_CROSS, border_value=0)
            out = np.where(field > _FIELD_CUT, grown, np.where(field < -_FIELD_CUT, shrunk, out))
        return out

    def _render(self, index: int) -> np.ndarray:
        gt = self._stack[index]
        if not gt.any() or (self.jitter == 0 and self.miss_islands == 0.0):
            return gt.copy()
        rng = self._rng(index)
        kept = self._drop_islands(gt, rng) if self.miss_islands > 0 else gt
        drawn = self._jittered(kept, rng)
        return drawn if drawn.any() else kept

    def draw(self, index: int) -> np.ndarray:
        """The person's mask of slice ``index``: uint8 ``(H, W)`` in {0, 1}.

        Counts the slice (once, however often it is drawn) and its boundary pixels.
        """
        z = self._check_index(index)
        mask = self._render(z).astype(np.uint8)
        self._drawn[z] = int(boundary_counts(mask)[0])
        return mask

    def draw_many(self, indices: Iterable[int]) -> np.ndarray:
        """``draw`` for several slices: uint8 ``(k, H, W)`` in the order given."""
        idx = [self._check_index(i) for i in indices]
        out = np.zeros((len(idx), *self.slice_shape), dtype=np.uint8)
        for k, z in enumerate(idx):
            out[k] = self.draw(z)
        return out

    # ------------------------------------------------------------------ accounting

    @property
    def drawn(self) -> list[int]:
        """The distinct slices drawn so far, ascending."""
        return sorted(self._drawn)

    @property
    def slices_drawn(self) -> int:
        return len(self._drawn)

    @property
    def boundary_drawn(self) -> int:
        """2D boundary pixels of the masks drawn so far (each slice once)."""
        return int(sum(self._drawn.values()))

    def effort(self) -> Effort:
        """What was drawn against the ground truth; MaskError if the truth is empty."""
        holding = int(np.count_nonzero(self._gt_counts))
        if holding == 0:
            raise MaskError("ground truth is empty: annotation effort is undefined")
        return Effort(self.slices_drawn, holding, self.boundary_drawn, int(self._gt_counts.sum()))

    def reset(self) -> None:
        """Forget what was drawn (e.g. between cases or runs)."""
        self._drawn.clear()
