"""Registration-free proxy masks: what the registration-based proxy must beat.

Not in the product path: the evaluation harness (``*_even`` methods) and
benchmarks/bench_proxy.py run them on the same drawn slices as the proxy; they live
beside the registration backends because they answer the same question (a 3D mask
from a few drawn slices) without fields. :data:`BASELINES` maps a name to each. Every function takes a label
volume in which
the drawn slices carry their binary mask, the drawn slice indices along ``axis`` and
an optional object ``extent = (first, last)`` along that axis (outside it everything
is background, as for the proxy), and returns a float32 volume of the label's shape
with values in [0, 1] (threshold at 0.5 for a binary mask). Drawn slices are returned
as drawn.

* :func:`nearest_slice_copy`: every slice copies the nearest drawn slice (ties: the
  lower one); within the extent, or everywhere when there is none.
* :func:`signed_distance_interpolation` (shape-based interpolation, Raya & Udupa 1990):
  between consecutive drawn slices ``a < z < b`` the signed distance maps (pixels,
  negative inside) are blended with weights ``(b-z)/(b-a)``, ``(z-a)/(b-a)`` and the
  result is ``clip(0.5 - sdf, 0, 1)`` (a one-pixel ramp around the zero level). Towards
  a drawn *empty* slice the other shape shrinks about its medial axis and vanishes at
  the empty slice (its distance map shifted so that its deepest point reaches the zero
  level there). Nothing is extrapolated beyond the outermost drawn slices.
* :func:`morphological_contour_interpolation`: ITK's MorphologicalContourInterpolator
  (Albu et al. 2008; what 3D Slicer's "Fill between slices" uses), restricted to
  ``axis``. It interpolates between *non-empty* labelled slices only: a drawn empty
  slice is invisible to it (a limitation of the method, kept as is), and it does not
  extrapolate.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..checks import check_axis
from ..errors import MaskError, ShapeError, SliceIndexError

__all__ = [
    "nearest_slice_copy",
    "signed_distance_interpolation",
    "morphological_contour_interpolation",
    "signed_distance_2d",
    "BASELINES",
]


def _prepare(
    label: np.ndarray, annotated: Sequence[int], axis: int, extent: Optional[tuple[int, int]]
) -> tuple[np.ndarray, list[int], Optional[tuple[int, int]]]:
    lab = np.asarray(label)
    if lab.ndim != 3:
        raise ShapeError(f"label must be 3D, got shape {lab.shape}")
    lab = np.moveaxis(lab, check_axis(axis, 3), 0)
    D = lab.shape[0]
    idx = sorted(set(int(z) for z in annotated))
    if not idx:
        raise MaskError("no annotated slice")
    bad = [z for z in idx if not 0 <= z < D]
    if bad:
        raise SliceIndexError(f"annotated slices {bad} out of range [0, {D})")
    drawn = lab[idx]
    if not np.isin(drawn, (0, 1)).all():
        raise MaskError("drawn slices must be binary (0/1)")
    if extent is not None:
        lo, hi = int(extent[0]), int(extent[1])
        if not 0 <= lo <= hi < D:
            raise SliceIndexError(f"extent ({lo}, {hi}) must satisfy 0 <= first <= last < {D}")
        extent = (lo, hi)
    return (lab != 0), idx, extent


def _finish(out: np.ndarray, fg: np.ndarray, idx: list[int], extent, axis: int) -> np.ndarray:
    for z in idx:
        out[z] = fg[z]
    if extent is not None:
        out[: extent[0]] = 0
        out[extent[1] + 1 :] = 0
        for z in idx:  # drawn slices are known, wherever they are
            out[z] = fg[z]
    return np.ascontiguousarray(np.moveaxis(out.astype(np.float32), 0, axis))


def nearest_slice_copy(
    label: np.ndarray, annotated: Sequence[int], axis: int = 0, extent: Optional[tuple[int, int]] = None
) -> np.ndarray:
    """Copy the nearest drawn slice into every slice (see the module docstring)."""
    fg, idx, extent = _prepare(label, annotated, axis, extent)
    D = fg.shape[0]
    ann = np.asarray(idx)
    z = np.arange(D)
    nearest = ann[np.argmin(np.abs(z[:, None] - ann[None, :]), axis=1)]  # argmin: first (lower) on ties
    out = fg[nearest].astype(np.float32)
    return _finish(out, fg, idx, extent, axis)


def signed_distance_2d(mask: np.ndarray, far: Optional[float] = None) -> np.ndarray:
    """Signed Euclidean distance (pixels) of a 2D mask: positive outside (distance to
    the nearest foreground pixel), negative inside (minus the distance to the nearest
    background pixel); ``far`` (default ``H + W``) everywhere for an empty mask."""
    from scipy import ndimage

    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return np.full(m.shape, float(far if far is not None else sum(m.shape)), np.float32)
    if m.all():
        return np.full(m.shape, -float(far if far is not None else sum(m.shape)), np.float32)
    return (ndimage.distance_transform_edt(~m) - ndimage.distance_transform_edt(m)).astype(np.float32)


def signed_distance_interpolation(
    label: np.ndarray, annotated: Sequence[int], axis: int = 0, extent: Optional[tuple[int, int]] = None
) -> np.ndarray:
    """Shape-based interpolation between consecutive drawn slices (module docstring)."""
    fg, idx, extent = _prepare(label, annotated, axis, extent)
    out = np.zeros(fg.shape, np.float32)
    sdf = {z: signed_distance_2d(fg[z]) for z in idx if fg[z].any()}
    for a, b in zip(idx[:-1], idx[1:]):
        if a not in sdf and b not in sdf:
            continue  # both drawn empty: background between them
        # an empty end is the other shape shrunk to nothing: its deepest point reaches
        # the zero level just at the empty slice
        sa = sdf[a] if a in sdf else sdf[b] - sdf[b].min() + 0.5
        sb = sdf[b] if b in sdf else sdf[a] - sdf[a].min() + 0.5
        for z in range(a + 1, b):
            wa = (b - z) / (b - a)
            d = wa * sa + (1.0 - wa) * sb
            out[z] = np.clip(0.5 - d, 0.0, 1.0)
    return _finish(out, fg, idx, extent, axis)


def morphological_contour_interpolation(
    label: np.ndarray, annotated: Sequence[int], axis: int = 0, extent: Optional[tuple[int, int]] = None
) -> np.ndarray:
    """ITK MorphologicalContourInterpolator along ``axis`` (module docstring)."""
    import itk

    fg, idx, extent = _prepare(label, annotated, axis, extent)
    drawn = np.zeros(fg.shape, np.uint8)
    for z in idx:
        drawn[z] = fg[z]
    img = itk.image_from_array(np.ascontiguousarray(drawn))
    # The filter (and the filters it creates inside) runs on ITK's pool threader, not the
    # TBB default of the itk wheels: with torch loaded in the same process the
    # TBB-threaded filter corrupts the heap on some inputs (an abort at interpreter exit;
    # LA case 20 at k=3, itk 5.4.7). Filters take their threader from the global default
    # when they are created, so it is set around the whole run and restored afterwards.
    mt = itk.MultiThreaderBase
    saved = mt.GetGlobalDefaultThreader()
    mt.SetGlobalDefaultThreader(mt.ThreaderTypeFromString("POOL"))
    try:
        filt = itk.MorphologicalContourInterpolator.New(img)
        filt.SetAxis(2)  # numpy axis 0 (the annotation axis, moved first) is ITK's last index axis
        filt.SetLabel(1)
        filt.Update()
        out = itk.array_from_image(filt.GetOutput()).astype(np.float32)
    finally:
        mt.SetGlobalDefaultThreader(saved)
    out = (out != 0).astype(np.float32)
    return _finish(out, fg, idx, extent, axis)


BASELINES = {
    "nearest_copy": nearest_slice_copy,
    "signed_distance": signed_distance_interpolation,
    "morph_contour": morphological_contour_interpolation,
}
