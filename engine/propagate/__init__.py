"""Proxy masks: a 3D mask from a few drawn slices (DESIGN.md §2 step 3).

* :mod:`~engine.propagate.registration`: the backends behind one protocol
  (:data:`BACKENDS`: ``native``, batched demons on CPU or GPU built on
  :func:`engine.ops.warp2d`; ``elastix``, itk-elastix B-spline per pair, the CPU
  reference) and :func:`register_volume`, which registers every adjacent slice pair
  of a case once (:class:`Registration`).
* :mod:`~engine.propagate.proxy`: :func:`assemble_proxy`, the one proxy assembly
  (drawn masks pushed through the cached fields in both directions, the two
  contributors of each slice fused ``"linear"`` or ``"nearest"`` into the soft proxy
  ``Q``, the confidence ``C = 1 / (1 + d)``, the extent applied), and
  :class:`ProxyBuilder`, one case's registration cache with input checks.
* :mod:`~engine.propagate.baselines`: the registration-free proxies (nearest copy,
  signed distance, ITK morphological contour interpolation) it is measured against.

See docs/propagation.md for the algorithms, parameters and measurements.

    >>> from engine.propagate import ProxyBuilder
    >>> pb = ProxyBuilder(image, axis=2, backend="native", extent=(first, last))
    >>> res = pb.propagate(label_with_drawn_slices, annotated=[first, mid, last])
    >>> res.proxy, res.confidence, res.seconds
"""

from __future__ import annotations

import importlib
from typing import Any

# names -> the submodule that defines them; loaded on first use, so that importing
# engine.propagate (the CLI does) costs nothing and engine.propagate.lite needs no torch
_EXPORTS = {
    "NativeParams": "params",
    "REGISTER_MARGIN": "params",
    "FUSIONS": "proxy",
    "ProxyBuilder": "proxy",
    "ProxyResult": "proxy",
    "assemble_proxy": "proxy",
    "build_proxy": "proxy",
    "check_extent": "proxy",
    "BACKENDS": "registration",
    "Registration": "registration",
    "RegistrationBackend": "registration",
    "register_backend": "registration",
    "register_volume": "registration",
    "window_to_unit": "registration",
    "ElastixParams": "elastix",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'engine.propagate' has no attribute {name!r}")
