"""Triton kernels of dilseg (installed as ``engine.kernels``; imported lazily by engine.ops)."""

from .warp2d import warp2d_backward, warp2d_forward  # noqa: F401
from .warp3d import warp3d_backward, warp3d_forward  # noqa: F401
from .compose2d import compose2d_backward, compose2d_forward  # noqa: F401
from .propagate_chain import propagate_chain  # noqa: F401
from .confidence_map import confidence_map  # noqa: F401
from .slice_residuals import slice_residuals_forward  # noqa: F401
from .select_slices import select_slices_forward  # noqa: F401
from .demons_step import demons_step_forward  # noqa: F401
from .regularize_field import regularize_field_forward  # noqa: F401

# ops implemented here (engine.ops checks membership before picking Triton)
ops = [
    "warp2d",
    "warp3d",
    "compose2d",
    "propagate_chain",
    "confidence_map",
    "slice_residuals",
    "select_slices",
    "demons_step",
    "regularize_field",
]
