"""Triton kernels of dilseg (the GPU path; the interpreter, ``TRITON_INTERPRET=1``,
runs them on CPU tensors in tests). Imported lazily by engine.ops (engine._backends):
``import engine`` never imports triton.

One module per op with its launchers; the sampling steps several kernels share are
written once in :mod:`engine.kernels._helpers`; :mod:`engine.kernels._jit` jits
kernels and helpers at launch time. Which op has a Triton kernel is stated by the
op's declaration in engine/ops/<op>.py, nowhere else.
"""

from .confidence_map import confidence_map  # noqa: F401
from .demons_step import demons_step_forward  # noqa: F401
from .propagate_chain import propagate_chain  # noqa: F401
from .regularize_field import regularize_field_forward  # noqa: F401
from .select_slices import select_slices_forward  # noqa: F401
from .slice_residuals import slice_residuals_forward  # noqa: F401
from .warp2d import warp2d_backward, warp2d_forward  # noqa: F401
