"""One case as the segmenter sees it: its region of interest on the planned grid.

A round's cost follows the object, not the volume (DESIGN §5): prediction, learning
and the replay patches of a session run inside the **region of interest**, the
object's extent along the annotation axis and the in-plane bounding box of the drawn
masks and of the last prediction, each grown by a margin in mm (at least
:data:`ROI_MARGIN_MM`, at least half the patch, so windows and patches see context).
The last prediction widens the region only where the front end can show it: when the
fusion gate's ``lam`` is at least 0.5 (where the proxy is 0 the fused
``F = lam (1 - C) P`` reaches 0.5 only then), and only near what was drawn: its box is
clipped to the drawn box grown by one margin, so a model that still fires on
look-alike tissue (early in a stream) cannot pull the region out to the whole slice
(a later round on a 240x240x155 brain-sized volume: 0.88 M voxels instead of 1.65 M,
``benchmarks/bench_region.py``).
Outside it the session's prediction is background. The region is resampled to the
segmenter's planned grid and normalised with the statistics of the *whole* case
(computed once), so a crop is normalised exactly as the whole volume is for
``Engine.predict`` and held-out evaluation.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional, Sequence

import torch

from ..learn.resample import resample

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["ModelView", "ROI_MARGIN_MM", "Box", "bbox2d", "drawn_boxes"]

#: The region of interest grows by at least this much around what is known (mm).
ROI_MARGIN_MM = 16.0

Box = tuple[slice, slice, slice]


def bbox2d(mask: torch.Tensor) -> Optional[tuple[int, int, int, int]]:
    """``(r0, r1, c0, c1)`` (inclusive) of a 2D mask's foreground, or None (one read back)."""
    rows = torch.nonzero(mask.any(1)).reshape(-1)
    if rows.numel() == 0:
        return None
    cols = torch.nonzero(mask.any(0)).reshape(-1)
    r = torch.stack([rows[0], rows[-1], cols[0], cols[-1]]).tolist()
    return int(r[0]), int(r[1]), int(r[2]), int(r[3])


def drawn_boxes(masks: dict, cache: dict) -> list[tuple[int, int, int, int]]:
    """In-plane bounding boxes ``(r0, r1, c0, c1)`` of a session's drawings ``{(internal
    axis, index): mask}`` (``cache``: id(mask) -> (mask, box); one read back per new
    mask; the cache holds the mask, so its id cannot be reused by a later drawing)."""
    out = []
    for (ia, idx), m in masks.items():
        key = id(m)
        if key not in cache:
            b = bbox2d(m.bool())
            if b is not None and ia == 1:  # a plane at row idx: (D, W)
                b = (idx, idx, b[2], b[3])
            elif b is not None and ia == 2:  # a plane at column idx: (D, H)
                b = (b[2], b[3], idx, idx)
            cache[key] = (m, b)
        b = cache[key][1]
        if b is not None:
            out.append(b)
    return out


def reaches_past(region: Box, box: Box) -> bool:
    """Whether ``region`` extends beyond ``box`` on any axis."""
    return any(n.start < o.start or n.stop > o.stop for n, o in zip(region, box))


class ModelView:
    """A case ``image`` ``(D, H, W)`` (annotation axis first) at ``spacing`` (that order;
    None: the planned spacing) on ``engine``'s planned grid."""

    def __init__(self, engine: "Engine", image: torch.Tensor, spacing: Optional[Sequence[float]]) -> None:
        self.engine = engine
        self.image = image
        self.spacing = spacing
        self._stats: Optional[torch.Tensor] = None
        self.box: Box = (slice(0, image.shape[0]), slice(0, image.shape[1]), slice(0, image.shape[2]))
        #: where learning and the replay buffer crop (the last prediction's region, or
        #: a larger one when drawings reached past it before the next prediction)
        self.train_box: Box = self.box

    @property
    def stats(self) -> torch.Tensor:
        """The case's normalisation statistics on the planned grid (computed once)."""
        if self._stats is None:
            whole = resample(self.image, self.engine.grid(self.image.shape, self.spacing))
            self._stats = self.engine.trainer.intensity(whole)
        return self._stats

    def margins(self) -> list[int]:
        """The region's margin per axis in native voxels: max(:data:`ROI_MARGIN_MM`, half
        the planned patch) in mm."""
        sp = self.spacing or self.engine.plan.learn.target_spacing or (1.0, 1.0, 1.0)
        lc = self.engine.plan.learn
        tsp = lc.target_spacing or sp
        return [math.ceil(max(ROI_MARGIN_MM, 0.5 * p * t) / s) for p, t, s in zip(lc.patch, tsp, sp)]

    def region(
        self,
        extent: Optional[tuple[int, int]],
        boxes: Sequence[tuple[int, int, int, int]],
        predicted: Optional[tuple[int, int, int, int]] = None,
    ) -> Box:
        """The region of interest: ``extent`` (slices; None: all) and the union of the
        in-plane drawn ``boxes`` ``(r0, r1, c0, c1)`` (none: the whole slice) and of the
        last prediction's box ``predicted`` clipped to the drawn box grown by one margin,
        grown by the margins."""
        D, H, W = self.image.shape
        margin = self.margins()
        lo, hi = extent if extent is not None else (0, D - 1)
        z = slice(max(0, lo - margin[0]), min(D, hi + 1 + margin[0]))
        if not boxes:
            return (z, slice(0, H), slice(0, W))
        r0, r1 = min(b[0] for b in boxes), max(b[1] for b in boxes)
        c0, c1 = min(b[2] for b in boxes), max(b[3] for b in boxes)
        if predicted is not None:
            my, mx = margin[1], margin[2]
            pr0, pr1 = max(predicted[0], r0 - my), min(predicted[1], r1 + my)
            pc0, pc1 = max(predicted[2], c0 - mx), min(predicted[3], c1 + mx)
            if pr0 <= pr1 and pc0 <= pc1:  # the part of the prediction near the drawings
                r0, r1, c0, c1 = min(r0, pr0), max(r1, pr1), min(c0, pc0), max(c1, pc1)
        return (
            z,
            slice(max(0, r0 - margin[1]), min(H, r1 + 1 + margin[1])),
            slice(max(0, c0 - margin[2]), min(W, c1 + 1 + margin[2])),
        )

    def cover(self, region: Box) -> None:
        """Learning's crop grows to ``region`` when that reaches past it."""
        if reaches_past(region, self.train_box):
            self.train_box = region

    def front_box(self, extent: Optional[tuple[int, int]], roi: bool) -> Box:
        """Where the front end can be non-zero: the extent's slices (None: all), and
        with ``roi`` only inside the last prediction's region."""
        z = slice(0, self.image.shape[0]) if extent is None else slice(extent[0], extent[1] + 1)
        if not roi:
            return (z, slice(None), slice(None))
        r = self.box
        return (slice(max(z.start, r[0].start), min(z.stop, r[0].stop)), r[1], r[2])

    def _grid(self, box: Box) -> tuple[int, ...]:
        shape = tuple(s.stop - s.start for s in box)
        return self.engine.grid(shape, self.spacing)

    def predict(self, box: Box, adapted: bool = False) -> torch.Tensor:
        """Probabilities ``(D, H, W)`` of the whole case: the segmenter inside ``box``
        (sliding windows at ``sw_overlap_round``; ``adapted``: the training weights, for
        a session that has learned its case), background outside."""
        self.box = self.train_box = box
        out = torch.zeros(self.image.shape, dtype=torch.float32, device=self.image.device)
        crop = self.image[box]
        overlap = self.engine.trainer.config.sw_overlap_round
        out[box] = self.engine._predict_crop(crop, self._grid(box), self.stats, overlap, adapted)
        return out

    def training(self, *volumes: torch.Tensor) -> list[torch.Tensor]:
        """The normalised image and ``volumes`` (whole-case, native; None stays None)
        inside the current region (:attr:`train_box`), on the planned grid: what learning
        and the replay buffer take."""
        box = self.train_box
        size = self._grid(box)
        image = self.engine.trainer.normalize(resample(self.image[box], size), self.stats)
        return [image] + [None if v is None else resample(v[box], size) for v in volumes]
