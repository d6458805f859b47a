"""Lazy jitting, shared by every Triton kernel module.

``triton.jit`` decides between the compiler and the interpreter when it decorates, by
reading ``TRITON_INTERPRET`` then; tests flip the interpreter on and off within one
process. So nothing here is jitted at import:

* ``LazyJit(fn)[grid](...)`` jits the kernel ``fn`` at launch time in the mode that
  ``TRITON_INTERPRET`` asks for *now* (one jitted kernel per mode, cached);
* ``@helper`` marks a device function shared by kernels (engine/kernels/_helpers.py);
  a kernel (or helper) jitted for a mode sees, under the helper's name, the helper
  jitted for the same mode.

Kernels and helpers may call ``triton.language`` builtins and ``@helper`` functions;
not Triton's own ``@triton.jit`` library functions (``tl.sum``, ``tl.max``,
``tl.zeros``, ``tl.cdiv``...), which were decorated in whatever mode was set when
triton was imported: reductions go through ``tl.reduce`` with the standard combine
functions instead.
"""

from __future__ import annotations

import types
from typing import Any, Callable

import triton
from triton import knobs

__all__ = ["LazyJit", "helper"]


def _interpret() -> bool:
    return bool(knobs.runtime.interpret)  # reads TRITON_INTERPRET now


def _bind(fn: Callable, interpret: bool) -> Callable:
    """A copy of ``fn`` whose globals name, for every ``@helper`` it calls, that helper
    jitted in the given mode (Triton resolves calls through the function's globals)."""
    g = dict(fn.__globals__)
    for name in fn.__code__.co_names:
        v = g.get(name)
        if isinstance(v, Helper):
            g[name] = v.jitted(interpret)
    f = types.FunctionType(fn.__code__, g, fn.__name__, fn.__defaults__, fn.__closure__)
    f.__qualname__, f.__module__, f.__doc__ = fn.__qualname__, fn.__module__, fn.__doc__
    f.__kwdefaults__ = fn.__kwdefaults__
    f.__annotations__ = dict(fn.__annotations__)
    return f


class Helper:
    """A Triton device function shared by kernels, jitted per mode on first use."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        self._jitted: dict[bool, Any] = {}
        self.__doc__ = fn.__doc__
        self.__name__ = fn.__name__

    def jitted(self, interpret: bool) -> Any:
        k = self._jitted.get(interpret)
        if k is None:
            k = self._jitted[interpret] = triton.jit(_bind(self.fn, interpret))
        return k

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"{self.__name__} is a Triton device function: call it from a kernel")


def helper(fn: Callable) -> Helper:
    """Mark ``fn`` as a Triton device function shared by kernels."""
    return Helper(fn)


class LazyJit:
    """A Triton kernel jitted at launch time in the mode TRITON_INTERPRET asks for now."""

    def __init__(self, fn: Callable) -> None:
        self._fn = fn
        self._jitted: dict[bool, Any] = {}

    def jitted(self, interpret: bool) -> Any:
        k = self._jitted.get(interpret)
        if k is None:
            k = self._jitted[interpret] = triton.jit(_bind(self._fn, interpret))
        return k

    def __getitem__(self, grid: Any) -> Any:
        return self.jitted(_interpret())[grid]
