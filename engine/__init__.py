"""dilseg: a latency-focused engine for dynamic interactive learning of 3D
medical image segmentation.

Importing ``engine`` is cheap: no extension is built or loaded here. Compiled
backends load on first use; :func:`backends` reports what loaded and why
something did not.
"""

from __future__ import annotations

from typing import Any

from . import errors
from ._backends import backends

__version__ = "0.1.0"
__all__ = ["backends", "errors", "__version__", "Engine", "Session", "Config"]


def __getattr__(name: str) -> Any:  # lazy: the API pulls in the learning stack
    if name in {"Engine", "Session", "Config"}:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
