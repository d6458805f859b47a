"""Derived variants of a case, made in code (never stored): other slice thicknesses
and voxel sizes of the same anatomy, to test that the learner configures itself.

* :func:`thick_slices` averages groups of ``factor`` adjacent slices along an axis,
  as a thick-slice acquisition does (partial volume): the image is the group mean,
  the label the majority of the group (mean >= 0.5), the spacing along the axis is
  ``factor`` times larger. A last, incomplete group is averaged over what it has.
* :func:`parse_variant` / :func:`apply_variant` read a variant spec such as
  ``"thick:4"`` (the LA data at 5 mm slices: 11 slices of 5 mm instead of 44 of
  1.25 mm along axis 2), as ``dilseg run --variant`` takes it.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..checks import check_axis
from ..errors import InputError
from .dataset import Case

__all__ = ["thick_slices", "parse_variant", "apply_variant", "VARIANTS"]

VARIANTS = ("none", "thick:N")


def thick_slices(case: Case, factor: int, axis: Optional[int] = None) -> Case:
    """``case`` with groups of ``factor`` slices along ``axis`` (default: the case's
    annotation axis, else 0) averaged into one (module docstring)."""
    if not isinstance(factor, (int, np.integer)) or isinstance(factor, bool) or factor < 1:
        raise InputError(f"factor must be an int >= 1, got {factor!r}")
    axis = check_axis(case.axis if axis is None else axis, 3)
    if factor == 1:
        return case
    n = case.image.shape[axis]
    groups = [(a, min(a + factor, n)) for a in range(0, n, factor)]
    img = np.moveaxis(case.image.astype(np.float32), axis, 0)
    lab = np.moveaxis(case.label.astype(np.float32), axis, 0)
    image = np.stack([img[a:b].mean(0) for a, b in groups]).astype(np.float32)
    label = (np.stack([lab[a:b].mean(0) for a, b in groups]) >= 0.5).astype(np.uint8)
    spacing = list(case.spacing)
    spacing[axis] = float(spacing[axis]) * factor
    return Case(
        f"{case.name}",
        np.ascontiguousarray(np.moveaxis(image, 0, axis)),
        np.ascontiguousarray(np.moveaxis(label, 0, axis)),
        tuple(spacing),
        case.axis,
    )


def parse_variant(spec: Optional[str]) -> Optional[tuple[str, int]]:
    """``"thick:4"`` -> ``("thick", 4)``; ``None``, ``""`` or ``"none"`` -> None."""
    if spec in (None, "", "none"):
        return None
    kind, _, arg = str(spec).partition(":")
    if kind == "thick":
        try:
            factor = int(arg)
        except ValueError:
            factor = 0
        if factor >= 1:
            return "thick", factor
    raise InputError(f"variant {spec!r}: expected one of {VARIANTS} (e.g. 'thick:4': average 4 slices into one)")


def apply_variant(case: Case, spec: Optional[str], axis: Optional[int] = None) -> Case:
    """The variant ``spec`` of ``case`` (``axis``: the annotation axis)."""
    parsed = parse_variant(spec)
    if parsed is None:
        return case
    _, factor = parsed
    return thick_slices(case, factor, axis)
