"""``dilseg serve --web``: the annotation page (``clients/web``) on the same app.

The page is a static build (``make web``: ``npm ci`` from the lock file, then
esbuild into ``clients/web/dist``); this module only serves that folder under
``/web/`` (``/`` redirects there) with headers that keep it on this origin
(a Content-Security-Policy allowing nothing but ``'self'``: no CDN, no third-party
connection). The page itself is public, like ``/v1/health``; every call it makes
carries the bearer key the person types in, checked by the same gate as any client.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

PREFIX = "/web"

#: what the page may load and call: its own origin only (NiiVue's shaders and fonts
#: are in the bundle; images it makes itself are data: / blob: URLs)
CSP = (
    "default-src 'self'; script-src 'self'; connect-src 'self'; img-src 'self' data: blob:; "
    "style-src 'self' 'unsafe-inline'; worker-src 'self' blob:; font-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class WebBuildMissing(RuntimeError):
    """The page's build output is not there (run ``make web``)."""


def default_dir() -> Path:
    """``DILSEG_WEB_DIR``, else ``clients/web/dist`` of the source tree this package
    runs from (an editable install or a checkout)."""
    env = os.environ.get("DILSEG_WEB_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "clients" / "web" / "dist"


def check_dir(folder: Union[str, os.PathLike, None]) -> Path:
    """The build folder, or :class:`WebBuildMissing` saying how to make it."""
    path = Path(folder) if folder else default_dir()
    missing = [f for f in ("index.html", "app.js") if not (path / f).is_file()]
    if missing:
        raise WebBuildMissing(
            f"the web page is not built: {', '.join(missing)} missing in {path}. "
            "Run `make web` in the dilseg checkout (npm ci from clients/web/package-lock.json, "
            "then the esbuild bundle into clients/web/dist), or point --web / DILSEG_WEB_DIR "
            "at a built folder"
        )
    return path


class _Headers:
    """ASGI wrapper adding the page's security and caching headers."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        async def with_headers(msg):
            if msg["type"] == "http.response.start":
                headers = list(msg.get("headers", []))
                headers += [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"cache-control", b"no-cache"),
                ]
                msg = dict(msg, headers=headers)
            await send(msg)

        await self.app(scope, receive, with_headers)


def is_public(path: Optional[str]) -> bool:
    """Paths of the page itself (no key needed to load it)."""
    return path is not None and (path in ("/", PREFIX) or path.startswith(PREFIX + "/"))


def mount(app: Any, folder: Union[str, os.PathLike]) -> Path:
    """Serve the built page in ``folder`` under ``/web/`` and redirect ``/`` there."""
    from starlette.responses import RedirectResponse
    from starlette.staticfiles import StaticFiles

    path = check_dir(folder)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse(PREFIX + "/", status_code=307)

    app.mount(PREFIX, _Headers(StaticFiles(directory=str(path), html=True)), name="web")
    return path
