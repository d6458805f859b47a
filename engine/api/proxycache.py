"""A session's proxy mask, cached: the registration of the extent's slice pairs (once
per case and extent: the intensity window follows the extent) and the proxy assembled
from it (once per annotation stamp of the :class:`~engine.api.annotations.AnnotationStore`)."""

from __future__ import annotations

from typing import Optional

import torch

from .. import errors as E
from ..propagate import REGISTER_MARGIN, ProxyResult, Registration, assemble_proxy, register_volume
from .annotations import AnnotationStore
from .config import Config
from .timing import Timer

__all__ = ["ProxyCache"]


class ProxyCache:
    """``get(store, config, timer)`` returns the proxy of ``store``'s drawings, rebuilt
    only when they changed. ``image`` is ``(D, H, W)``, annotation axis first."""

    def __init__(self, image: torch.Tensor, axis: int, spacing: Optional[tuple[float, float, float]]) -> None:
        self.image = image
        self.axis = axis
        self.spacing = spacing
        self.registration: Optional[Registration] = None
        self.result: Optional[ProxyResult] = None  # the last proxy built
        self.stamp = -1  # the store stamp it was built at
        self.keys: frozenset = frozenset()  # the annotations it was built from

    def _register(self, config: Config, extent: Optional[tuple[int, int]], timer: Timer) -> Registration:
        if self.registration is None or self.registration.extent != extent:
            with timer.stage("register"):  # the extent's slices only: the cost follows the object
                self.registration = register_volume(
                    self.image,
                    config.registration,
                    extent,
                    axis=self.axis,
                    spacing=self.spacing,
                    margin=REGISTER_MARGIN,
                    timed=False,
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
        reg = self._register(config, ext, timer) if any(lo <= z <= hi for z in main) else None  # its own stage
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
