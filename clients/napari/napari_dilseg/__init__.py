"""napari-dilseg: annotate 3D images in napari with dilseg, which learns while you draw.

The dock widget (:class:`DilsegWidget`, contributed by ``napari.yaml``) talks to an
in-process ``engine.Engine`` or to a ``dilseg serve`` through ``dilseg_client``.
"""

__version__ = "0.1.0"

__all__ = ["DilsegWidget", "__version__"]


def __getattr__(name: str):  # napari reads the manifest without importing Qt code
    if name == "DilsegWidget":
        from ._widget import DilsegWidget

        return DilsegWidget
    raise AttributeError(f"module 'napari_dilseg' has no attribute {name!r}")
