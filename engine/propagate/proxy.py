"""Proxy mask from a few drawn slices: register once per case, propagate per annotation.

DESIGN.md §2 step 3. A :class:`ProxyBuilder` holds one case's image (annotation axis
moved first, ``[D, H, W]``), registers every adjacent slice pair once (lazily, on the
first :meth:`ProxyBuilder.propagate`, or explicitly with :meth:`ProxyBuilder.register`)
and keeps the fields in a :class:`Registration`. Each :meth:`ProxyBuilder.propagate`
call then only pushes the annotated masks through the cached fields with
:func:`engine.ops.propagate_chain` (one call for the whole volume) and fuses the two
contributors of every slice, so a new or corrected annotation costs milliseconds.

Outputs (:class:`ProxyResult`) come back in the image's own axis order:

* ``proxy`` ``Q``: float32 in [0, 1]; annotated slices carry their own mask;
* ``confidence`` ``C = 1 / (1 + d)`` per voxel, ``d`` the slice distance to the nearest
  annotated slice (1 on annotated slices);
* with a known object ``extent = (first, last)`` (DESIGN §2 step 4: the person gives
  it; the simulated annotator draws both end slices anyway), every slice outside it is
  known background: ``Q = 0`` and ``C = 1`` there, and chains stop at the extent.
  Without an extent, chains run on to the volume's ends and stop when the mask
  vanishes (``min_mass``), as :func:`engine.ops.propagate_chain` does.

Intensity preprocessing (:func:`normalize_intensity`): clip to the 1st-99th
percentile of the case (over the extent's slices when it is known, else the whole
volume) and scale to [0, 1]; both backends see the same normalised image.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ..errors import BackendError, InputError, MaskError, NonFiniteError, ShapeError, SliceIndexError
from ..ops import propagate_chain
from .native import NativeParams, register_stack as native_register_stack

__all__ = ["BACKENDS", "FUSIONS", "Registration", "ProxyResult", "ProxyBuilder", "normalize_intensity",
           "build_proxy"]

BACKENDS = ("native", "elastix")
FUSIONS = ("linear", "nearest")

ArrayLike = Union[np.ndarray, Tensor]
Extent = Optional[tuple[int, int]]


# --- helpers ------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _as_tensor(x: Any, name: str, device: Optional[torch.device] = None) -> Tensor:
    if isinstance(x, Tensor):
        t = x
    else:
        try:
            a = np.asarray(x)
        except Exception as exc:  # noqa: BLE001 - anything numpy refuses is bad input
            raise InputError(f"{name} must be an array or tensor, got {type(x).__name__}") from exc
        if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
            raise InputError(f"{name} must be a numeric array, got dtype {a.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(a))
    return t if device is None else t.to(device)


def _check_axis(axis: int, ndim: int) -> int:
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
        raise InputError(f"axis must be an int, got {type(axis).__name__}")
    if not -ndim <= axis < ndim:
        raise InputError(f"axis={axis} out of range for a {ndim}D volume")
    return int(axis) % ndim


def _check_extent(extent: Any, D: int) -> Extent:
    if extent is None:
        return None
    try:
        lo, hi = (int(v) for v in extent)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"extent must be (first, last) slice indices, got {extent!r}") from exc
    if not 0 <= lo <= hi < D:
        raise SliceIndexError(f"extent ({lo}, {hi}) must satisfy 0 <= first <= last < {D}")
    return lo, hi


def normalize_intensity(image: Tensor, extent: Extent = None, percentiles: tuple[float, float] = (1.0, 99.0)) -> Tensor:
    """Clip ``image`` ``[D, H, W]`` to its ``percentiles`` and scale to [0, 1] (float32).

    The percentiles are taken over the slices ``extent[0]..extent[1]`` when given, else
    over the whole volume (nearest-rank, :func:`torch.kthvalue`: no full sort). A
    constant image maps to 0.
    """
    x = image.to(torch.float32)
    ref = x if extent is None else x[extent[0]: extent[1] + 1]
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


# --- results --------------------------------------------------------------------------------

@dataclass
class Registration:
    """The adjacent-slice fields of one case along its annotation axis.

    ``fwd`` / ``bwd`` ``[D-1, 2, H, W]`` float32 pixel displacements (channel 0 rows,
    1 columns) in the conventions of :func:`engine.ops.propagate_chain`: ``fwd[z]``
    pushes slice ``z`` to ``z+1``, ``bwd[z]`` slice ``z+1`` to ``z`` (pull-back).
    ``seconds``: wall time of ``normalize`` and ``register`` (device-synchronised).
    """

    fwd: Tensor
    bwd: Tensor
    axis: int
    backend: str
    extent: Extent
    params: dict
    seconds: dict = field(default_factory=dict)

    @property
    def num_slices(self) -> int:
        return int(self.fwd.shape[0]) + 1


@dataclass
class ProxyResult:
    """One propagation: every volume in the image's own axis order and device.

    ``proxy`` float32 in [0, 1]; ``confidence`` float32; ``annotated`` the drawn slices
    (sorted); ``from_below`` / ``from_above`` (annotation axis first, ``[D, H, W]``) the
    two contributors before fusion; ``seconds`` per stage: ``normalize`` and
    ``register`` (0 when the cached registration was reused), ``propagate``
    (chains + fusion + outputs) and ``total``.
    """

    proxy: Tensor
    confidence: Tensor
    annotated: tuple[int, ...]
    fusion: str
    extent: Extent
    from_below: Tensor
    from_above: Tensor
    seconds: dict

    def numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """``(proxy, confidence)`` as float32 numpy arrays."""
        return self.proxy.detach().cpu().numpy(), self.confidence.detach().cpu().numpy()


# --- the builder ------------------------------------------------------------------------------

class ProxyBuilder:
    """Registration of one case, cached; propagation of annotations through it.

    Args:
        image: ``3D`` array or tensor (any real dtype; finite).
        axis: the annotation axis of ``image`` (moved first internally).
        backend: ``"native"`` (batched demons, :mod:`engine.propagate.native`; CPU or
            GPU, follows ``device``) or ``"elastix"`` (itk-elastix B-spline,
            :mod:`engine.propagate.elastix`; computed on CPU, fields moved to ``device``).
        extent: ``(first, last)`` slice of the object along ``axis`` when known: used
            for the intensity percentiles and as the default extent of
            :meth:`propagate`.
        device: where the fields and results live (default: the image tensor's
            device, CPU for numpy input).
        params: :class:`~engine.propagate.native.NativeParams` or
            :class:`~engine.propagate.elastix.ElastixParams` for the backend.

    Raises ShapeError (not 3D, empty), NonFiniteError (NaN/Inf), InputError (bad axis,
    backend or params), SliceIndexError (extent out of range), BackendError (itk-elastix
    missing for ``backend="elastix"``).
    """

    def __init__(self, image: ArrayLike, axis: int = 0, backend: str = "native", *, extent: Extent = None,
                 device: Union[str, torch.device, None] = None, params: Any = None) -> None:
        if backend not in BACKENDS:
            raise InputError(f"backend={backend!r}; expected one of {BACKENDS}")
        dev = torch.device(device) if device is not None else (image.device if isinstance(image, Tensor) else
                                                                torch.device("cpu"))
        img = _as_tensor(image, "image", dev)
        if img.dim() != 3:
            raise ShapeError(f"image must be 3D, got shape {tuple(img.shape)}")
        if img.numel() == 0:
            raise ShapeError(f"image is empty, shape {tuple(img.shape)}")
        if img.dtype == torch.bool or img.is_complex():
            raise InputError(f"image must hold real numbers, got {img.dtype}")
        img = img.to(torch.float32)
        if not bool(torch.isfinite(img).all()):
            raise NonFiniteError("image holds NaN or Inf")
        self.axis = _check_axis(axis, 3)
        self.shape = tuple(int(s) for s in img.shape)
        self.image = img.movedim(self.axis, 0).contiguous()  # [D, H, W]
        self.device = dev
        self.backend = backend
        self.extent = _check_extent(extent, self.image.shape[0])
        self.params = self._check_params(params)
        self._registration: Optional[Registration] = None

    # -- registration --------------------------------------------------------------------

    def _check_params(self, params: Any) -> Any:
        if self.backend == "native":
            if params is None:
                return NativeParams()
            if not isinstance(params, NativeParams):
                raise InputError(f"backend 'native' takes NativeParams, got {type(params).__name__}")
            return params
        from .elastix import ElastixParams

        if params is None:
            return ElastixParams()
        if not isinstance(params, ElastixParams):
            raise InputError(f"backend 'elastix' takes ElastixParams, got {type(params).__name__}")
        return params

    @property
    def registered(self) -> bool:
        return self._registration is not None

    def register(self) -> Registration:
        """Register every adjacent slice pair (once; later calls return the cache)."""
        if self._registration is not None:
            return self._registration
        t0 = time.perf_counter()
        norm = normalize_intensity(self.image, self.extent)
        _sync(self.device)
        t1 = time.perf_counter()
        if self.backend == "native":
            fwd, bwd = native_register_stack(norm, self.params)
        else:
            from .elastix import register_stack as elastix_register_stack

            f, b = elastix_register_stack(norm.cpu().numpy(), self.params)
            fwd, bwd = torch.from_numpy(f).to(self.device), torch.from_numpy(b).to(self.device)
        _sync(self.device)
        t2 = time.perf_counter()
        self._registration = Registration(fwd=fwd, bwd=bwd, axis=self.axis, backend=self.backend,
                                          extent=self.extent, params=self.params.as_dict(),
                                          seconds={"normalize": t1 - t0, "register": t2 - t1})
        return self._registration

    @property
    def registration(self) -> Registration:
        return self.register()

    # -- propagation ---------------------------------------------------------------------

    def _annotations(self, masks: Any, annotated: Optional[Sequence[int]]) -> tuple[Tensor, list[int]]:
        """Masks ``[D, H, W]`` float32 (axis first) and the sorted annotated slices."""
        D, H, W = self.image.shape
        if isinstance(masks, Mapping):
            if annotated is not None:
                raise InputError("pass either a {slice: mask} mapping or masks + annotated, not both")
            vol = torch.zeros((D, H, W), dtype=torch.float32, device=self.device)
            idx = []
            for z, m in masks.items():
                if not isinstance(z, (int, np.integer)) or isinstance(z, bool):
                    raise SliceIndexError(f"slice keys must be ints, got {z!r}")
                z = int(z)
                if not 0 <= z < D:
                    raise SliceIndexError(f"annotated slice {z} out of range [0, {D}) on axis {self.axis}")
                t = _as_tensor(m, f"mask of slice {z}", self.device)
                if tuple(t.shape) != (H, W):
                    raise ShapeError(f"mask of slice {z} has shape {tuple(t.shape)}, expected {(H, W)}")
                vol[z] = self._binary(t, f"mask of slice {z}")
                idx.append(z)
            return vol, sorted(set(idx))
        t = _as_tensor(masks, "masks", self.device)
        if tuple(t.shape) != self.shape:
            raise ShapeError(f"masks have shape {tuple(t.shape)}, the image {self.shape}")
        t = t.movedim(self.axis, 0)
        if annotated is None:
            idx = [int(z) for z in torch.nonzero(t.reshape(D, -1).ne(0).any(1)).reshape(-1).tolist()]
        else:
            idx = []
            for z in annotated:
                if not isinstance(z, (int, np.integer)) or isinstance(z, bool):
                    raise SliceIndexError(f"annotated slices must be ints, got {z!r}")
                if not 0 <= int(z) < D:
                    raise SliceIndexError(f"annotated slice {int(z)} out of range [0, {D}) on axis {self.axis}")
                idx.append(int(z))
            idx = sorted(set(idx))
        vol = torch.zeros((D, H, W), dtype=torch.float32, device=self.device)
        if idx:
            sel = torch.tensor(idx, device=self.device)
            vol[sel] = self._binary(t.index_select(0, sel), "annotated masks")
        return vol, idx

    @staticmethod
    def _binary(t: Tensor, name: str) -> Tensor:
        if t.dtype == torch.bool:
            return t.to(torch.float32)
        if t.is_complex():
            raise MaskError(f"{name} must be binary, got {t.dtype}")
        if not bool(((t == 0) | (t == 1)).all()):
            bad = t[(t != 0) & (t != 1)]
            raise MaskError(f"{name} must be binary (0/1); found value {float(bad.reshape(-1)[0])}")
        return t.to(torch.float32)

    def propagate(self, masks: Any, annotated: Optional[Sequence[int]] = None, *, fusion: str = "linear",
                  extent: Union[Extent, str] = "default", min_mass: float = 0.02) -> ProxyResult:
        """Propagate the drawn slices and fuse them into the proxy mask.

        Args:
            masks: a label volume of the image's shape in which the annotated slices
                carry the binary mask (other slices are ignored), or a mapping
                ``{slice index: 2D mask}`` along the annotation axis.
            annotated: the drawn slices (indices along the annotation axis); default:
                the slices of ``masks`` holding any foreground (pass them explicitly to
                declare a drawn *empty* slice).
            fusion: ``"linear"`` or ``"nearest"`` contributor fusion.
            extent: ``(first, last)`` object slices; outside them ``Q = 0``, ``C = 1``.
                ``"default"``: the builder's extent; ``None``: no extent.
            min_mass: a chain stops when its mass falls below this fraction of its
                source mask's (see :func:`engine.ops.propagate_chain`).

        Raises MaskError (non-binary masks, nothing annotated), ShapeError,
        SliceIndexError (index or extent out of range, or a drawn non-empty slice
        outside the extent), InputError (bad fusion). Registration happens on the first
        call and is reused afterwards.
        """
        if fusion not in FUSIONS:
            raise InputError(f"fusion={fusion!r}; expected one of {FUSIONS}")
        D = self.image.shape[0]
        ext = self.extent if (isinstance(extent, str) and extent == "default") else _check_extent(extent, D)
        t0 = time.perf_counter()
        vol, idx = self._annotations(masks, annotated)
        if not idx:
            raise MaskError("no annotated slice: draw at least one slice (or pass annotated=)")
        if ext is not None:
            outside = [z for z in idx if not ext[0] <= z <= ext[1] and bool(vol[z].any())]
            if outside:
                raise SliceIndexError(f"drawn slices {outside} hold foreground outside the extent {ext}")
        fresh = self._registration is None
        reg = self.register()
        t1 = time.perf_counter()
        lo, hi = (0, D - 1) if ext is None else ext
        sub_idx = [z - lo for z in idx if lo <= z <= hi]
        _, H, W = self.image.shape
        q = torch.zeros((D, H, W), dtype=torch.float32, device=self.device)
        fb = torch.zeros_like(q)
        fa = torch.zeros_like(q)
        conf = torch.ones((D,), dtype=torch.float32, device=self.device)
        if sub_idx:
            res = propagate_chain(vol[lo: hi + 1], sub_idx, reg.fwd[lo:hi], reg.bwd[lo:hi], min_mass=min_mass,
                                  fuse=fusion, check_inputs=False)
            q[lo: hi + 1] = res.q
            fb[lo: hi + 1] = res.from_below
            fa[lo: hi + 1] = res.from_above
            conf[lo: hi + 1] = res.confidence
        else:  # every drawn slice is an empty one outside the extent: the extent is all we know
            conf[lo: hi + 1] = 0.0
        for z in idx:  # a drawn slice is known exactly, inside or outside the extent
            q[z] = vol[z]
            conf[z] = 1.0
        cvol = conf.view(D, 1, 1).expand(D, H, W)
        proxy = q.movedim(0, self.axis).contiguous()
        confidence = cvol.movedim(0, self.axis).contiguous()
        _sync(self.device)
        t2 = time.perf_counter()
        seconds = {
            "normalize": reg.seconds["normalize"] if fresh else 0.0,
            "register": reg.seconds["register"] if fresh else 0.0,
            "propagate": t2 - t1 + (t1 - t0 - (sum(reg.seconds.values()) if fresh else 0.0)),
        }
        seconds["total"] = seconds["normalize"] + seconds["register"] + seconds["propagate"]
        return ProxyResult(proxy=proxy, confidence=confidence, annotated=tuple(idx), fusion=fusion, extent=ext,
                           from_below=fb, from_above=fa, seconds=seconds)


def build_proxy(image: ArrayLike, masks: Any, annotated: Optional[Sequence[int]] = None, *, axis: int = 0,
                backend: str = "native", fusion: str = "linear", extent: Extent = None,
                device: Union[str, torch.device, None] = None, params: Any = None) -> ProxyResult:
    """One-shot :class:`ProxyBuilder` ``(image, axis, backend).propagate(masks, ...)``."""
    return ProxyBuilder(image, axis, backend, extent=extent, device=device, params=params).propagate(
        masks, annotated, fusion=fusion)
