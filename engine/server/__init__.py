"""``dilseg serve``: one engine behind an HTTP API (DESIGN §5b).

* :func:`create_app` builds the FastAPI app (``/v1`` native API, the MONAI Label
  subset, health); :class:`Limits` says what a request may ask for.
* :mod:`.auth` bearer keys (``dilseg keys add``), :mod:`.state` the atomic state
  folder, :mod:`.leases` sessions as leases, :mod:`.codecs` array bodies and crops,
  :mod:`.web` the annotation page (``dilseg serve --web``, docs/web.md).

Importing ``engine.server`` is cheap: FastAPI (the ``server`` extra) loads with
:func:`create_app`, torch when an engine is built.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "Limits", "KeyStore", "StateDir"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "Limits":
        from .limits import Limits

        return Limits
    if name == "KeyStore":
        from .auth import KeyStore

        return KeyStore
    if name == "StateDir":
        from .state import StateDir

        return StateDir
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
