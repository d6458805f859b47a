"""The one helper every Triton kernel module shares.

``LazyJit(fn)[grid](...)`` jits ``fn`` at launch time in the mode that
``TRITON_INTERPRET`` asks for *now* (one jitted kernel per mode, cached): tests flip
the interpreter on and off within one process, and ``triton.jit`` at import time would
freeze whichever mode was set when the module was first imported. Kernels wrapped this
way must call only Triton builtins (no other ``@triton.jit`` helpers), since those
would be frozen in their import-time mode.
"""

from __future__ import annotations

import triton
from triton import knobs

__all__ = ["LazyJit"]


class LazyJit:
    """A Triton kernel jitted at launch time in the mode TRITON_INTERPRET asks for now."""

    def __init__(self, fn):
        self._fn = fn
        self._jitted = {}

    def __getitem__(self, grid):
        interpret = bool(knobs.runtime.interpret)  # reads TRITON_INTERPRET now
        k = self._jitted.get(interpret)
        if k is None:
            k = self._jitted[interpret] = triton.jit(self._fn)
        return k[grid]
