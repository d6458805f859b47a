"""Geometry between napari's viewer and a 3D layer: the annotation axis the view
slices through, the spacing from the layer's scale, the current slice, and the
jump to a slice. No Qt here (napari's model objects only)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["annotation_axis", "spacing_of", "current_slice", "viewer_axis", "go_to_slice"]


def _offset(viewer: Any, layer: Any) -> int:
    """Viewer axes before the layer's first axis (layers are right-aligned in napari)."""
    return int(viewer.dims.ndim) - int(layer.ndim)


def viewer_axis(viewer: Any, layer: Any, axis: int) -> int:
    """The viewer's dimension that shows the layer's array axis ``axis``."""
    return _offset(viewer, layer) + int(axis)


def annotation_axis(viewer: Any, layer: Any) -> int:
    """The layer's array axis the viewer slices through now.

    In the 2D view it is the layer axis that is not displayed (``dims.not_displayed``);
    in the 3D view, the first axis of ``dims.order`` (the one a 2D view of that order
    would slice). Raises ``ValueError`` for a layer that is not 3D or a view that
    slices more than one of its axes.
    """
    if layer.ndim != 3:
        raise ValueError(f"layer {layer.name!r} has {layer.ndim} dimensions; dilseg segments 3D volumes")
    dims = viewer.dims
    off = _offset(viewer, layer)
    if int(dims.ndisplay) == 2:
        axes = [int(a) - off for a in dims.not_displayed if int(a) - off >= 0]
    else:
        axes = [int(a) - off for a in dims.order if int(a) - off >= 0][:1]
    if len(axes) != 1:
        raise ValueError(f"the view slices axes {axes} of {layer.name!r}; show one 2D plane of it")
    return axes[0]


def spacing_of(layer: Any) -> tuple[float, float, float]:
    """Voxel size per array axis from the layer's ``scale`` (napari world units, mm
    for medical volumes)."""
    sp = tuple(float(abs(s)) for s in np.asarray(layer.scale, dtype=float)[-3:])
    if len(sp) != 3 or not all(np.isfinite(sp)) or min(sp) <= 0:
        raise ValueError(f"layer {layer.name!r} has no usable 3D scale: {tuple(layer.scale)}")
    return sp


def current_slice(viewer: Any, layer: Any, axis: int) -> int:
    """The slice of ``layer`` along its array axis ``axis`` the viewer shows now."""
    data = np.asarray(layer.world_to_data(tuple(viewer.dims.point)), dtype=float)
    n = int(layer.data.shape[axis])
    return int(np.clip(np.round(data[axis]), 0, n - 1))


def go_to_slice(viewer: Any, layer: Any, axis: int, index: int) -> None:
    """Move the viewer to slice ``index`` of ``layer`` along its array axis ``axis``."""
    data = np.asarray(layer.world_to_data(tuple(viewer.dims.point)), dtype=float)
    data[axis] = float(index)
    world = np.asarray(layer.data_to_world(data), dtype=float)
    viewer.dims.set_point(viewer_axis(viewer, layer, axis), float(world[-3:][axis]))
