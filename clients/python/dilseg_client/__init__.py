"""dilseg-client: the dilseg HTTP server as ``engine.Engine`` / ``engine.Session``,
with numpy and httpx only (no torch)."""

from . import errors
from .remote import RemoteEngine, RemoteSession

__version__ = "0.1.0"
__all__ = ["RemoteEngine", "RemoteSession", "errors", "__version__"]
