"""Registration backends behind one small protocol, and the registration of a case.

A backend registers every adjacent slice pair of a ``[D, H, W]`` volume whose
intensities were windowed to [0, 1] (:func:`window_to_unit`) and returns the pull-back
fields ``(fwd, bwd)``, each ``[D-1, 2, H, W]`` float32 (the conventions of
:func:`engine.ops.propagate_chain`). Backends register themselves by name in
:data:`BACKENDS`; :func:`register_volume` is the one entry everything calls (the
session, :class:`~engine.propagate.ProxyBuilder`, the CLI, the benchmarks).

Adding a backend (docs/contributing.md): a class with ``name``, ``params_type`` and
``register(volume01, params) -> (fwd, bwd)``, then ``register_backend(MyBackend())``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError
from .params import REGISTER_CROP_MM, REGISTER_CROP_SHARE, REGISTER_MARGIN, grid_factors

__all__ = [
    "BACKENDS",
    "RegistrationBackend",
    "Registration",
    "register_backend",
    "register_volume",
    "window_to_unit",
    "Extent",
    "Box",
    "REGISTER_MARGIN",
    "crop_box",
]

Extent = Optional[tuple[int, int]]
#: An in-plane region ``(r0, r1, c0, c1)``: rows ``r0:r1``, columns ``c0:c1`` (half-open).
Box = tuple[int, int, int, int]


class RegistrationBackend(Protocol):
    """What a registration backend provides."""

    #: the name ``Config.registration`` / ``--backend`` selects it by
    name: str
    #: the frozen dataclass of its parameters (with ``as_dict()``); ``params_type()``
    #: gives the defaults
    params_type: type

    def register(
        self, volume: Tensor, params: Any, spacing: Optional[tuple[float, float, float]] = None
    ) -> tuple[Tensor, Tensor]:
        """``(fwd, bwd)`` ``[D-1, 2, H, W]`` float32 on ``volume``'s device for a
        ``[D, H, W]`` float32 volume in [0, 1]; ``spacing`` (mm, annotation axis first)
        when known, for backends whose parameters are physical."""
        ...


#: name -> backend; :func:`register_backend` adds one.
BACKENDS: dict[str, RegistrationBackend] = {}


def register_backend(backend: RegistrationBackend) -> RegistrationBackend:
    """Make ``backend`` selectable by its ``name`` (replacing one of the same name)."""
    for attr in ("name", "params_type", "register"):
        if not hasattr(backend, attr):
            raise InputError(f"a registration backend needs .{attr}; {type(backend).__name__} has none")
    BACKENDS[backend.name] = backend
    return backend


class _Native:
    """Batched demons over all pairs at once on the volume's device
    (:mod:`engine.propagate.native`)."""

    name = "native"

    @property
    def params_type(self) -> type:
        from .native import NativeParams

        return NativeParams

    def register(
        self, volume: Tensor, params: Any, spacing: Optional[tuple[float, float, float]] = None
    ) -> tuple[Tensor, Tensor]:
        from .native import register_stack

        return register_stack(volume, params, None if spacing is None else tuple(spacing[1:]))


class _Elastix:
    """itk-elastix B-spline per pair on the CPU, fields moved back to the volume's
    device (:mod:`engine.propagate.elastix`; imports itk on first use)."""

    name = "elastix"

    @property
    def params_type(self) -> type:
        from .elastix import ElastixParams

        return ElastixParams

    def register(
        self, volume: Tensor, params: Any, spacing: Optional[tuple[float, float, float]] = None
    ) -> tuple[Tensor, Tensor]:
        from .elastix import register_stack  # parameters in pixels (the CPU reference)

        f, b = register_stack(volume.cpu().numpy(), params)
        return torch.from_numpy(f).to(volume.device), torch.from_numpy(b).to(volume.device)


register_backend(_Native())
register_backend(_Elastix())


def check_params(backend: str, params: Any) -> Any:
    """``params`` for ``backend`` (its defaults for None); InputError for a wrong type."""
    if backend not in BACKENDS:
        raise InputError(f"backend={backend!r}; expected one of {tuple(BACKENDS)}")
    kind = BACKENDS[backend].params_type
    if params is None:
        return kind()
    if not isinstance(params, kind):
        raise InputError(f"backend {backend!r} takes {kind.__name__}, got {type(params).__name__}")
    return params


def window_to_unit(
    image: Tensor,
    extent: Extent = None,
    percentiles: tuple[float, float] = (1.0, 99.0),
    box: Optional[Box] = None,
) -> Tensor:
    """Clip ``image`` ``[D, H, W]`` to its ``percentiles`` and scale to [0, 1] (float32):
    the intensity window both registration backends see.

    The percentiles are taken over the slices ``extent[0]..extent[1]`` when given, else
    over the whole volume (nearest-rank, :func:`torch.kthvalue`: no full sort), always
    over whole slices. ``box`` ``(r0, r1, c0, c1)``: only that in-plane region comes
    back (contiguous), windowed as the whole slices. A constant image maps to 0. (Not
    the segmenter's normalisation: :func:`engine.learn.normalize_intensity` z-scores.)
    """
    x = image.to(torch.float32)
    ref = x if extent is None else x[extent[0] : extent[1] + 1]
    if box is not None:
        x = x[:, box[0] : box[1], box[2] : box[3]].contiguous()
    flat = ref.reshape(-1)
    n = flat.numel()
    if n == 0:
        return torch.zeros_like(x)
    k_lo = min(n, max(1, int(round(percentiles[0] / 100.0 * (n - 1))) + 1))
    k_hi = min(n, max(1, int(round(percentiles[1] / 100.0 * (n - 1))) + 1))
    if flat.device.type == "cpu":  # torch.kthvalue on CPU is a full sort per call; numpy partitions
        part = np.partition(flat.numpy(), (k_lo - 1, k_hi - 1))
        lo, hi = float(part[k_lo - 1]), float(part[k_hi - 1])
        span = hi - lo
        if span <= 0:
            return torch.zeros_like(x)
        return ((x - lo) / span).clamp_(0.0, 1.0)
    lo_t = torch.kthvalue(flat, k_lo).values
    hi_t = torch.kthvalue(flat, k_hi).values
    span = (hi_t - lo_t).clamp_min(torch.finfo(torch.float32).tiny)
    out = ((x - lo_t) / span).clamp_(0.0, 1.0)
    return torch.where(hi_t > lo_t, out, torch.zeros_like(out))


@dataclass
class Registration:
    """The adjacent-slice fields of one case along its annotation axis.

    ``fwd`` / ``bwd`` ``[D-1, 2, H, W]`` float32 pixel displacements (channel 0 rows,
    1 columns) in the conventions of :func:`engine.ops.propagate_chain`: ``fwd[z]``
    pushes slice ``z`` to ``z+1``, ``bwd[z]`` slice ``z+1`` to ``z`` (pull-back).
    ``extent``: the slices the intensity window was taken over (a new extent means a
    new registration). ``z0``: the first registered slice (only slices ``z0 ..
    z0 + num_slices - 1`` were registered: the extent and a slice beyond each end).
    ``seconds``: wall time of ``normalize`` and ``register`` (device-synchronised).
    ``box``: the in-plane region registered, ``(r0, r1, c0, c1)`` half-open (the fields
    are ``[.., 2, r1 - r0, c1 - c0]``); None: whole slices.
    """

    fwd: Tensor
    bwd: Tensor
    axis: int
    backend: str
    extent: Extent
    params: dict
    seconds: dict = field(default_factory=dict)
    z0: int = 0
    box: Optional[Box] = None

    @property
    def num_slices(self) -> int:
        return int(self.fwd.shape[0]) + 1

    def covers(self, lo: int, hi: int) -> bool:
        """Whether the fields of every pair between slices ``lo`` and ``hi`` are here."""
        return self.z0 <= lo and hi <= self.z0 + self.num_slices - 1

    def pairs(self, lo: int, hi: int) -> tuple[Tensor, Tensor]:
        """``(fwd, bwd)`` of the pairs ``(z, z+1)`` for ``lo <= z < hi``."""
        if not self.covers(lo, hi):
            raise InputError(
                f"slices {lo}..{hi} are not all registered (registered: {self.z0}..{self.z0 + self.num_slices - 1})"
            )
        return self.fwd[lo - self.z0 : hi - self.z0], self.bwd[lo - self.z0 : hi - self.z0]

    def contains(self, box: Optional[Box]) -> bool:
        """Whether the in-plane region ``box`` (None: whole slices) was registered."""
        if self.box is None:
            return True
        if box is None:
            return False
        r0, r1, c0, c1 = self.box
        return r0 <= box[0] and box[1] <= r1 and c0 <= box[2] and box[3] <= c1


def _alignment(backend: str, params: Any, spacing: Optional[tuple[float, float, float]]) -> tuple[int, int]:
    """Per in-plane axis, the multiple a crop must start at for the native pyramid to
    group the same pixels as on whole slices (grid averaging, then 2x2 per level)."""
    if backend != "native":
        return (1, 1)
    f = grid_factors(None if spacing is None else tuple(spacing[1:]), params)
    levels = 1 << max(0, len(params.iterations) - 1)
    return (f[0] * levels, f[1] * levels)


def crop_box(
    drawn: Sequence[tuple[int, int, int, int]],
    plane: tuple[int, int],
    spacing: Optional[tuple[float, float, float]],
    backend: str = "native",
    params: Any = None,
    margin_mm: float = REGISTER_CROP_MM,
    share: float = REGISTER_CROP_SHARE,
) -> Optional[Box]:
    """The in-plane region a session registers: the union of the ``drawn`` masks'
    boxes ``(r0, r1, c0, c1)`` (inclusive) grown by ``margin_mm`` (``spacing`` mm,
    annotation axis first; None: 1 mm pixels), its start aligned for the backend's
    pyramid; None (whole slices) when nothing is drawn or the region would cover more
    than ``share`` of the ``plane`` ``(H, W)``. Measured on brain-sized volumes
    (240x240, a ~60 mm object; benchmarks/bench_register_crop.py): the same proxy
    within rounding of the Dice, registration ~4x cheaper."""
    if not drawn:
        return None
    params = check_params(backend, params)
    H, W = plane
    sy, sx = (1.0, 1.0) if spacing is None else (float(spacing[1]), float(spacing[2]))
    my, mx = int(math.ceil(margin_mm / sy)), int(math.ceil(margin_mm / sx))
    ay, ax = _alignment(backend, params, spacing)
    r0 = max(0, min(b[0] for b in drawn) - my)
    c0 = max(0, min(b[2] for b in drawn) - mx)
    r0, c0 = r0 - r0 % ay, c0 - c0 % ax
    r1 = min(H, max(b[1] for b in drawn) + 1 + my)
    c1 = min(W, max(b[3] for b in drawn) + 1 + mx)
    if (r1 - r0) * (c1 - c0) > share * H * W:
        return None
    return (r0, r1, c0, c1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def register_volume(
    volume: Tensor,
    backend: str = "native",
    extent: Extent = None,
    params: Any = None,
    axis: int = 0,
    spacing: Optional[tuple[float, float, float]] = None,
    margin: Optional[int] = None,
    timed: bool = True,
    box: Optional[Box] = None,
) -> Registration:
    """Register the adjacent slice pairs of ``volume`` ``[D, H, W]`` (annotation axis
    first, float32, finite: validated by the caller) with ``backend``, after windowing
    its intensities over the object's ``extent`` when known. ``spacing``: the voxel size
    (mm, that order) for backends with physical parameters. ``margin``: with an extent,
    register only its slices and ``margin`` more beyond each end (the cost follows the
    object; None: every slice). ``box``: register only this in-plane region ``(r0, r1,
    c0, c1)`` (:func:`crop_box`; the intensity window is still that of whole slices).
    ``axis`` is only recorded (the caller's annotation axis). ``timed``: synchronise
    the device to fill ``Registration.seconds`` (the session times its stages with CUDA
    events instead: no host synchronisation).
    Returns the :class:`Registration`."""
    params = check_params(backend, params)
    D = int(volume.shape[0])
    z0, z1 = 0, D
    if extent is not None and margin is not None:
        z0, z1 = max(0, extent[0] - margin), min(D, extent[1] + 1 + margin)
    t0 = time.perf_counter()
    sub = volume[z0:z1]
    norm = window_to_unit(sub, None if extent is None else (extent[0] - z0, extent[1] - z0), box=box)
    if timed:
        _sync(volume.device)
    t1 = time.perf_counter()
    fwd, bwd = BACKENDS[backend].register(norm, params, spacing)
    if timed:
        _sync(volume.device)
    t2 = time.perf_counter()
    return Registration(
        fwd=fwd,
        bwd=bwd,
        axis=axis,
        backend=backend,
        extent=extent,
        params=params.as_dict(),
        seconds={"normalize": t1 - t0, "register": t2 - t1},
        z0=z0,
        box=None if box is None else tuple(int(v) for v in box),
    )
