"""One Python entry per kernel op.

Each op module holds, side by side: the pure-torch reference (the oracle and the
last fallback), the adapters to its C++ CPU, CUDA and Triton kernels, and ONE
declaration (:func:`engine.ops._declare.declare`) from which come the torch custom op
``dilseg::<op>`` with its fake for ``torch.compile`` (and, where differentiable, its
autograd formula), the backend table and the dispatch. The rule that picks a backend
is in :mod:`engine.ops._common`; :func:`backend_table` reports, per op, the declared
backends and which one serves CPU and CUDA tensors now. docs/ops.md is the guide.
"""

from ._declare import table as backend_table
from .confidence_map import confidence_map, confidence_map_reference, confidence_vector
from .demons_step import demons_step, demons_step_reference
from .instance_norm import (
    instance_norm,
    instance_norm_backward,
    instance_norm_backward_reference,
    instance_norm_reference,
)
from .propagate_chain import PropagateChainResult, as_annotated, propagate_chain, propagate_chain_reference
from .regularize_field import regularize_field, regularize_field_reference
from .select_slices import select_slices, select_slices_reference
from .slice_residuals import slice_residuals, slice_residuals_reference
from .warp2d import warp2d, warp2d_reference

__all__ = [
    "backend_table",
    "warp2d",
    "warp2d_reference",
    "propagate_chain",
    "propagate_chain_reference",
    "PropagateChainResult",
    "as_annotated",
    "confidence_map",
    "confidence_map_reference",
    "confidence_vector",
    "slice_residuals",
    "slice_residuals_reference",
    "select_slices",
    "select_slices_reference",
    "demons_step",
    "demons_step_reference",
    "regularize_field",
    "regularize_field_reference",
    "instance_norm",
    "instance_norm_reference",
    "instance_norm_backward",
    "instance_norm_backward_reference",
]
