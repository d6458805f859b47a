"""A session's proxy mask, cached: the registration of the extent's slice pairs (once
per case and extent: the intensity window follows the extent) and the proxy assembled
from it (once per annotation stamp of the :class:`~engine.api.annotations.AnnotationStore`).

On the CPU the registration covers only the drawn masks' in-plane box grown by
:data:`~engine.propagate.params.REGISTER_CROP_MM` when that is a small part of the
plane (:func:`~engine.propagate.registration.crop_box`): a small object in a large scan
costs what the object needs. New drawings that come within half that margin of the
box's edge register again with a new box. (On CUDA the box would cost a read back per
drawing and whole slices cost little: whole slices.)"""

from __future__ import annotations

from typing import Optional

import torch

from .. import errors as E
from ..propagate import REGISTER_MARGIN, ProxyResult, Registration, assemble_proxy, register_volume
from ..propagate.params import REGISTER_CROP_MM
from ..propagate.registration import Box, crop_box
from .annotations import AnnotationStore
from .config import Config
from .roi import drawn_boxes
from .timing import Timer

__all__ = ["ProxyCache"]


class ProxyCache:
    """``get(store, config, timer)`` returns the proxy of ``store``'s drawings, rebuilt
    only when they changed. ``image`` is ``(D, H, W)``, annotation axis first."""

    def __init__(
        self,
        image: torch.Tensor,
        axis: int,
        spacing: Optional[tuple[float, float, float]],
        boxes: Optional[dict] = None,
    ) -> None:
        self.image = image
        self.boxes = {} if boxes is None else boxes  # id(mask) -> (mask, in-plane bbox), shared with the session
        self.axis = axis
        self.spacing = spacing
        self.registration: Optional[Registration] = None
        self.result: Optional[ProxyResult] = None  # the last proxy built
        self.stamp = -1  # the store stamp it was built at
        self.keys: frozenset = frozenset()  # the annotations it was built from

    def _register(self, config: Config, extent: Optional[tuple[int, int]], main: dict, timer: Timer) -> Registration:
        # on CUDA the boxes would cost a read back per drawing: whole slices there
        drawn = drawn_boxes({(0, z): m for z, m in main.items()}, self.boxes) if self.image.device.type == "cpu" else []

        def box(margin_mm: float) -> Optional[Box]:
            return crop_box(drawn, tuple(self.image.shape[1:]), self.spacing, config.registration, margin_mm=margin_mm)

        reg = self.registration
        stale = reg is None or reg.extent != extent
        if not stale and reg.box is not None:  # drawings near the edge of the registered box
            stale = not reg.contains(box(0.5 * REGISTER_CROP_MM))
        if stale:
            with timer.stage("register"):  # the extent's slices only: the cost follows the object
                self.registration = register_volume(
                    self.image,
                    config.registration,
                    extent,
                    axis=self.axis,
                    spacing=self.spacing,
                    margin=REGISTER_MARGIN,
                    timed=False,
                    box=box(REGISTER_CROP_MM),
                )
        return self.registration

    def get(self, store: AnnotationStore, config: Config, timer: Timer) -> ProxyResult:
        if self.result is not None and self.stamp == store.stamp:
            return self.result
        if not len(store):
            raise E.StateError("nothing annotated yet: annotate at least one slice before propagating")
        masks = store.masks
        main = {z: m for (ia, z), m in masks.items() if ia == 0}
        planes = {k: m for k, m in masks.items() if k[0] != 0}
        ext = store.extent
        lo, hi = ext if ext is not None else (0, self.image.shape[0] - 1)
        inside = {z: m for z, m in main.items() if lo <= z <= hi}
        reg = self._register(config, ext, inside, timer) if inside else None  # its own stage
        with timer.stage("propagate"):
            res = assemble_proxy(
                reg,
                self.image.shape,
                main,
                planes,
                extent=ext,
                fusion=config.fusion,
                min_mass=config.min_mass,
                device=self.image.device,
            )
        self.result, self.stamp = res, store.stamp
        self.keys = store.keys()
        return res
