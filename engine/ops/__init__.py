"""One Python entry per kernel op.

Each op module holds, side by side: the pure-torch reference (the oracle and the
last fallback), the glue to its C++ CPU, CUDA and Triton kernels (``IMPLS``), the
registration as a torch custom op (``dilseg::<op>``) with a fake implementation
for ``torch.compile`` and, where differentiable, an autograd formula. The rule
that picks a backend is in :mod:`engine.ops._common`.
"""

from .warp2d import warp2d, warp2d_reference
from .warp3d import warp3d, warp3d_reference
from .compose2d import compose2d, compose2d_reference
from .propagate_chain import PropagateChainResult, propagate_chain, propagate_chain_reference  # noqa: F401
from .confidence_map import confidence_map, confidence_map_reference, confidence_vector  # noqa: F401
from .slice_residuals import slice_residuals, slice_residuals_reference  # noqa: F401
from .select_slices import select_slices, select_slices_reference  # noqa: F401
from .demons_step import demons_step, demons_step_reference  # noqa: F401
from .regularize_field import regularize_field, regularize_field_reference  # noqa: F401

__all__ = ["warp2d", "warp2d_reference", "warp3d", "warp3d_reference", "compose2d", "compose2d_reference"]
