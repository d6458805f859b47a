"""Registration backends and contributor fusion: a 3D proxy mask from a few drawn slices.

DESIGN.md §2 step 3. Register every adjacent slice pair of a case once
(:class:`ProxyBuilder`, cached in a :class:`Registration`), then push the drawn masks
through the chained fields in both directions and fuse the two contributors of each
slice (``"linear"`` or ``"nearest"``) into the soft proxy mask ``Q`` and the confidence
``C = 1 / (1 + d)`` (:class:`ProxyResult`). Only the propagation reruns when the
annotations change.

Backends: ``native`` (:mod:`engine.propagate.native`: batched demons over all pairs at
once, on CPU or GPU, built on :func:`engine.ops.warp2d`) and ``elastix``
(:mod:`engine.propagate.elastix`: itk-elastix B-spline per pair, the CPU reference).
See docs/propagation.md for the algorithms, parameters and measurements.

    >>> from engine.propagate import ProxyBuilder
    >>> pb = ProxyBuilder(image, axis=2, backend="native", extent=(first, last))
    >>> res = pb.propagate(label_with_drawn_slices, annotated=[first, mid, last])
    >>> res.proxy, res.confidence, res.seconds
"""

from .native import NativeParams
from .proxy import (BACKENDS, FUSIONS, ProxyBuilder, ProxyResult, Registration, build_proxy,
                    normalize_intensity)

__all__ = ["BACKENDS", "FUSIONS", "NativeParams", "ElastixParams", "ProxyBuilder", "ProxyResult", "Registration",
           "build_proxy", "normalize_intensity", "register_pairs"]


def register_pairs(image, backend: str = "native", extent=None, params=None) -> Registration:
    """Register every adjacent slice pair of ``image`` ``[D, H, W]`` (annotation axis first).

    The session API's entry point (:meth:`engine.Session.propagate`): intensity
    normalisation over the object's ``extent`` when known, then the backend's stack
    registration on the image's device. Returns the :class:`Registration` whose ``fwd``
    / ``bwd`` ``[D-1, 2, H, W]`` fields feed :func:`engine.ops.propagate_chain`.
    """
    dev = image.device if hasattr(image, "device") else None
    return ProxyBuilder(image, axis=0, backend=backend, extent=extent, device=dev, params=params).register()


def __getattr__(name: str):  # the elastix module imports itk lazily; keep its params importable from here
    if name == "ElastixParams":
        from .elastix import ElastixParams

        return ElastixParams
    raise AttributeError(f"module 'engine.propagate' has no attribute {name!r}")
