"""Proxy mask from a few drawn slices: register once per case, propagate per annotation.

DESIGN.md §2 step 3. :func:`assemble_proxy` is the one proxy assembly of the engine
(the session, :class:`ProxyBuilder`, the CLI and the benchmarks all call it): it pushes
the drawn masks of the annotation axis through a case's cached :class:`Registration`
with :func:`engine.ops.propagate_chain` (one call for the whole extent), fuses the two
contributors of every slice, writes the planes drawn on the other axes, and applies the
object's extent:

* ``proxy`` ``Q``: float32 in [0, 1]; drawn slices carry their own mask;
* ``confidence`` ``C = 1 / (1 + d)`` per voxel, ``d`` the slice distance to the nearest
  drawn slice, the maximum over the annotated axes (1 on drawn slices);
* with a known object ``extent = (first, last)`` (DESIGN §2 step 4: the person gives
  it), chains run only inside it and every slice outside it is known background:
  ``Q = 0`` and ``C = 1`` there. Without an extent, chains run on to the volume's ends
  and stop when the mask vanishes (``min_mass``), as :func:`engine.ops.propagate_chain`
  does.

A :class:`ProxyBuilder` holds one case's image (any axis order), registers every
adjacent slice pair once (lazily or with :meth:`ProxyBuilder.register`) through
:func:`~engine.propagate.registration.register_volume`, and then each
:meth:`ProxyBuilder.propagate` only re-assembles the proxy, so a new or corrected
annotation costs milliseconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ..checks import check_axis, check_finite
from ..errors import InputError, MaskError, ShapeError, SliceIndexError
from ..ops import confidence_map, propagate_chain
from .registration import REGISTER_MARGIN, Extent, Registration, check_params, register_volume

__all__ = ["FUSIONS", "ProxyResult", "ProxyBuilder", "assemble_proxy", "build_proxy", "check_extent"]

FUSIONS = ("linear", "nearest")

ArrayLike = Union[np.ndarray, Tensor]
Key = tuple[int, int]  # (internal axis, slice index)


# --- the assembly -----------------------------------------------------------------------------


@dataclass
class ProxyResult:
    """One propagation.

    ``proxy`` float32 in [0, 1]; ``confidence`` float32; ``annotated`` the drawn slices
    of the annotation axis (sorted); ``from_below`` / ``from_above`` ``[D, H, W]`` the
    two contributors before fusion and ``dist_below`` / ``dist_above`` ``[D]`` int32
    their slice distances (-1: none), annotation axis first, zero / -1 outside the
    extent; ``seconds`` per stage: ``normalize`` and ``register`` (0 when a cached
    registration was reused), ``propagate`` and ``total``. From :func:`assemble_proxy`
    every volume is annotation axis first; :class:`ProxyBuilder` returns ``proxy`` and
    ``confidence`` in the image's own axis order.
    """

    proxy: Tensor
    confidence: Tensor
    annotated: tuple[int, ...]
    fusion: str
    extent: Extent
    from_below: Tensor
    from_above: Tensor
    dist_below: Tensor
    dist_above: Tensor
    seconds: dict

    def numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """``(proxy, confidence)`` as float32 numpy arrays."""
        return self.proxy.detach().cpu().numpy(), self.confidence.detach().cpu().numpy()


def assemble_proxy(
    registration: Optional[Registration],
    shape: Sequence[int],
    main: Mapping[int, Tensor],
    planes: Optional[Mapping[Key, Tensor]] = None,
    *,
    extent: Extent = None,
    fusion: str = "linear",
    min_mass: float = 0.02,
    device: Union[str, torch.device, None] = None,
) -> ProxyResult:
    """The proxy mask and its confidence from drawn slices (module docstring).

    Args:
        registration: the case's fields (``[D-1, 2, H, W]``); may be None when no
            slice of the annotation axis is drawn inside the extent.
        shape: ``(D, H, W)``, annotation axis first.
        main: ``{z: mask [H, W]}`` drawn on the annotation axis (binary, any dtype).
        planes: ``{(1, y): mask [D, W], (2, x): mask [D, H]}`` drawn on the other axes:
            known exactly, written into ``Q``.
        extent: ``(first, last)`` on the annotation axis; background outside.
        fusion: ``"linear"`` or ``"nearest"`` contributor fusion.
        min_mass: a chain stops when its mass falls below this share of its source's.

    The inputs are trusted (the session and :class:`ProxyBuilder` validate them where
    they enter). Volumes come back annotation axis first on ``device`` (default: the
    fields', else the masks' device).
    """
    D, H, W = (int(s) for s in shape)
    planes = planes or {}
    if device is None:
        ref = registration.fwd if registration is not None else next(iter(main.values()), None)
        ref = ref if ref is not None else next(iter(planes.values()), None)
        device = ref.device if ref is not None else torch.device("cpu")
    t0 = time.perf_counter()
    lo, hi = extent if extent is not None else (0, D - 1)
    inside = sorted(int(z) for z in main if lo <= z <= hi)
    q = torch.zeros((D, H, W), dtype=torch.float32, device=device)
    fb = torch.zeros_like(q)
    fa = torch.zeros_like(q)
    db = torch.full((D,), -1, dtype=torch.int32, device=device)
    da = torch.full((D,), -1, dtype=torch.int32, device=device)
    if inside:
        if registration is None:
            raise InputError("slices of the annotation axis are drawn inside the extent: a registration is needed")
        # a registration of a crop (Registration.box) propagates there: the drawn masks
        # are inside it (the session registers the box around them), Q is 0 outside
        r0, r1, c0, c1 = registration.box if registration.box is not None else (0, H, 0, W)
        vol = torch.zeros((hi - lo + 1, r1 - r0, c1 - c0), dtype=torch.float32, device=device)
        for z in inside:
            vol[z - lo] = main[z][r0:r1, c0:c1].float()
        fwd, bwd = registration.pairs(lo, hi)
        res = propagate_chain(
            vol,
            _on_device(hi - lo + 1, [z - lo for z in inside], device),
            fwd,
            bwd,
            min_mass=min_mass,
            fuse=fusion,
            check_inputs=False,
        )
        q[lo : hi + 1, r0:r1, c0:c1] = res.q
        fb[lo : hi + 1, r0:r1, c0:c1] = res.from_below
        fa[lo : hi + 1, r0:r1, c0:c1] = res.from_above
        db[lo : hi + 1] = res.dist_below
        da[lo : hi + 1] = res.dist_above
    for (ia, idx), m in planes.items():  # drawn planes on the other axes are known exactly
        if ia == 1:
            q[:, idx, :] = m.float()
        else:
            q[:, :, idx] = m.float()
    per_axis = [inside] + [sorted(i for (a, i) in planes if a == ax) for ax in (1, 2)]
    c = confidence_map(
        (D, H, W), [_on_device(n, idx, device) if idx else None for n, idx in zip((D, H, W), per_axis)], device=device
    )
    if extent is not None:  # slices, not a boolean mask: no host synchronisation
        q[:lo] = 0.0
        q[hi + 1 :] = 0.0
        c[:lo] = 1.0
        c[hi + 1 :] = 1.0
    seconds = {"normalize": 0.0, "register": 0.0, "propagate": time.perf_counter() - t0}
    seconds["total"] = seconds["propagate"]
    return ProxyResult(
        proxy=q,
        confidence=c,
        annotated=tuple(sorted(int(z) for z in main)),
        fusion=fusion,
        extent=extent,
        from_below=fb,
        from_above=fa,
        dist_below=db,
        dist_above=da,
        seconds=seconds,
    )


def _on_device(n: int, idx: Sequence[int], device) -> Tensor:
    """A ``[n]`` bool vector of the slices ``idx`` made on ``device`` (fills, no copy
    from the host: on CUDA a list argument would cost a synchronous copy)."""
    m = torch.zeros(n, dtype=torch.bool, device=device)
    for i in idx:
        m[int(i)] = True
    return m


# --- input checks (the builder's boundary) ----------------------------------------------------


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


def check_extent(extent: Any, D: int) -> Extent:
    """``(first, last)`` as ints with ``0 <= first <= last < D`` (None passes)."""
    if extent is None:
        return None
    try:
        lo, hi = (int(v) for v in extent)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"extent must be (first, last) slice indices, got {extent!r}") from exc
    if not 0 <= lo <= hi < D:
        raise SliceIndexError(f"extent ({lo}, {hi}) must satisfy 0 <= first <= last < {D}")
    return lo, hi


def _binary(t: Tensor, name: str) -> Tensor:
    if t.dtype == torch.bool:
        return t.to(torch.float32)
    if t.is_complex():
        raise MaskError(f"{name} must be binary, got {t.dtype}")
    if not bool(((t == 0) | (t == 1)).all()):
        bad = t[(t != 0) & (t != 1)]
        raise MaskError(f"{name} must be binary (0/1); found value {float(bad.reshape(-1)[0])}")
    return t.to(torch.float32)


# --- the builder ------------------------------------------------------------------------------


class ProxyBuilder:
    """Registration of one case, cached; propagation of annotations through it.

    Args:
        image: ``3D`` array or tensor (any real dtype; finite).
        axis: the annotation axis of ``image`` (moved first internally).
        backend: a name of :data:`engine.propagate.BACKENDS`: ``"native"`` (batched
            demons, :mod:`engine.propagate.native`; CPU or GPU, follows ``device``) or
            ``"elastix"`` (itk-elastix B-spline, :mod:`engine.propagate.elastix`;
            computed on CPU, fields moved to ``device``).
        extent: ``(first, last)`` slice of the object along ``axis`` when known: used
            for the intensity window and as the default extent of :meth:`propagate`.
        device: where the fields and results live (default: the image tensor's
            device, CPU for numpy input).
        params: the backend's parameters (``NativeParams`` / ``ElastixParams``).
        spacing: the voxel size (mm) per axis of ``image``, for backends with physical
            parameters (``native`` registers on a grid of about 1.25 mm); default: unknown
            (the native backend then takes a pixel for 1.25 mm).

    With an extent, only its slices (and :data:`REGISTER_MARGIN` beyond each end) are
    registered; a later :meth:`propagate` that needs more registers the whole volume.

    Raises ShapeError (not 3D, empty), NonFiniteError (NaN/Inf), InputError (bad axis,
    backend or params), SliceIndexError (extent out of range), BackendError (itk-elastix
    missing for ``backend="elastix"``).
    """

    def __init__(
        self,
        image: ArrayLike,
        axis: int = 0,
        backend: str = "native",
        *,
        extent: Extent = None,
        device: Union[str, torch.device, None] = None,
        params: Any = None,
        spacing: Optional[Sequence[float]] = None,
    ) -> None:
        params = check_params(backend, params)
        dev = (
            torch.device(device)
            if device is not None
            else (image.device if isinstance(image, Tensor) else torch.device("cpu"))
        )
        img = _as_tensor(image, "image", dev)
        if img.dim() != 3:
            raise ShapeError(f"image must be 3D, got shape {tuple(img.shape)}")
        if img.numel() == 0:
            raise ShapeError(f"image is empty, shape {tuple(img.shape)}")
        if img.dtype == torch.bool or img.is_complex():
            raise InputError(f"image must hold real numbers, got {img.dtype}")
        img = img.to(torch.float32)
        check_finite("image", img)
        self.axis = check_axis(axis, 3)
        self.shape = tuple(int(s) for s in img.shape)
        self.image = img.movedim(self.axis, 0).contiguous()  # [D, H, W]
        self.device = dev
        self.backend = backend
        self.extent = check_extent(extent, self.image.shape[0])
        self.params = params
        self.spacing = None
        if spacing is not None:
            sp = [float(v) for v in spacing]
            if len(sp) != 3 or not all(np.isfinite(sp)) or min(sp) <= 0:
                raise InputError(f"spacing must be three positive numbers, got {spacing!r}")
            others = [a for a in range(3) if a != self.axis]
            self.spacing = (sp[self.axis], sp[others[0]], sp[others[1]])
        self._registration: Optional[Registration] = None

    @property
    def registered(self) -> bool:
        return self._registration is not None

    def register(self, lo: Optional[int] = None, hi: Optional[int] = None) -> Registration:
        """Register the adjacent slice pairs (once; later calls return the cache unless
        it lacks the pairs between slices ``lo`` and ``hi``: then every pair)."""
        reg = self._registration
        if reg is not None and (lo is None or reg.covers(lo, hi)):
            return reg
        whole = reg is not None
        margin = None if whole or self.extent is None else REGISTER_MARGIN
        self._registration = register_volume(
            self.image, self.backend, self.extent, self.params, axis=self.axis, spacing=self.spacing, margin=margin
        )
        return self._registration

    @property
    def registration(self) -> Registration:
        return self.register()

    def _annotations(self, masks: Any, annotated: Optional[Sequence[int]]) -> dict[int, Tensor]:
        """``{slice: float32 [H, W] mask}`` along the annotation axis, validated."""
        D, H, W = self.image.shape
        if isinstance(masks, Mapping):
            if annotated is not None:
                raise InputError("pass either a {slice: mask} mapping or masks + annotated, not both")
            out = {}
            for z, m in masks.items():
                if not isinstance(z, (int, np.integer)) or isinstance(z, bool):
                    raise SliceIndexError(f"slice keys must be ints, got {z!r}")
                z = int(z)
                if not 0 <= z < D:
                    raise SliceIndexError(f"annotated slice {z} out of range [0, {D}) on axis {self.axis}")
                t = _as_tensor(m, f"mask of slice {z}", self.device)
                if tuple(t.shape) != (H, W):
                    raise ShapeError(f"mask of slice {z} has shape {tuple(t.shape)}, expected {(H, W)}")
                out[z] = _binary(t, f"mask of slice {z}")
            return dict(sorted(out.items()))
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
        if not idx:
            return {}
        sel = torch.tensor(idx, device=self.device)
        vol = _binary(t.index_select(0, sel), "annotated masks")
        return {z: vol[i] for i, z in enumerate(idx)}

    def propagate(
        self,
        masks: Any,
        annotated: Optional[Sequence[int]] = None,
        *,
        fusion: str = "linear",
        extent: Union[Extent, str] = "default",
        min_mass: float = 0.02,
    ) -> ProxyResult:
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
        ext = self.extent if (isinstance(extent, str) and extent == "default") else check_extent(extent, D)
        main = self._annotations(masks, annotated)
        if not main:
            raise MaskError("no annotated slice: draw at least one slice (or pass annotated=)")
        if ext is not None:
            outside = [z for z, m in main.items() if not ext[0] <= z <= ext[1] and bool(m.any())]
            if outside:
                raise SliceIndexError(f"drawn slices {outside} hold foreground outside the extent {ext}")
        lo, hi = (0, D - 1) if ext is None else ext
        before = self._registration
        needs = any(lo <= z <= hi for z in main)
        reg = self.register(lo, hi) if needs else self._registration
        fresh = reg is not None and reg is not before
        t1 = time.perf_counter()
        res = assemble_proxy(
            reg, self.image.shape, main, extent=ext, fusion=fusion, min_mass=min_mass, device=self.device
        )
        proxy = res.proxy.movedim(0, self.axis).contiguous()
        confidence = res.confidence.movedim(0, self.axis).contiguous()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = {"normalize": 0.0, "register": 0.0}
        if fresh and reg is not None:
            seconds = {k: reg.seconds[k] for k in ("normalize", "register")}
        seconds["propagate"] = time.perf_counter() - t1
        seconds["total"] = seconds["normalize"] + seconds["register"] + seconds["propagate"]
        res.proxy, res.confidence, res.seconds = proxy, confidence, seconds
        return res


def build_proxy(
    image: ArrayLike,
    masks: Any,
    annotated: Optional[Sequence[int]] = None,
    *,
    axis: int = 0,
    backend: str = "native",
    fusion: str = "linear",
    extent: Extent = None,
    device: Union[str, torch.device, None] = None,
    params: Any = None,
    spacing: Optional[Sequence[float]] = None,
) -> ProxyResult:
    """One-shot :class:`ProxyBuilder` ``(image, axis, backend).propagate(masks, ...)``."""
    return ProxyBuilder(image, axis, backend, extent=extent, device=device, params=params, spacing=spacing).propagate(
        masks, annotated, fusion=fusion
    )
