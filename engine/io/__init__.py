"""Volume readers/writers, dataset folders, phantoms and the LA download.

Importing ``engine.io`` is cheap: the submodules (and their heavy libraries,
itk above all) load on first use of a name.

* :mod:`engine.io.volumes`   ``read_volume``, ``write_volume``, ``Volume``
* :mod:`engine.io.dataset`   ``CaseFolder``, ``Case``, ``default_data_dir``, ``la_folder``
* :mod:`engine.io.phantoms`  ``phantom_case``, ``phantom_stream``
* :mod:`engine.io.download`  ``download_la2018``
* :mod:`engine.io.variants`  ``thick_slices``, ``apply_variant`` (derived variants, made in code)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Volume": "volumes",
    "read_volume": "volumes",
    "read_arrays": "volumes",
    "write_volume": "volumes",
    "Case": "dataset",
    "CaseFolder": "dataset",
    "default_data_dir": "dataset",
    "la_folder": "dataset",
    "phantom_case": "phantoms",
    "phantom_stream": "phantoms",
    "phantom_in_volume": "phantoms",
    "download_la2018": "download",
    "thick_slices": "variants",
    "apply_variant": "variants",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
