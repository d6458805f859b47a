"""Browser tests of the annotation page (``dilseg serve --web``).

A real ``dilseg serve --web`` runs in a subprocess on a 127.0.0.1 port; Playwright
drives Debian's Chromium (``/usr/bin/chromium``, installed by ``make browser``; Playwright
never downloads a browser here) headless with SwiftShader's software WebGL2. Every
request the page makes to anything but that server is aborted and fails the test (the
page must work offline). Screenshots go to ``runs/web-tests/`` (git-ignored).

Without Chromium, Playwright or the built page (``make web``) the tests skip, unless
``DILSEG_WEB_TESTS=required`` (what ``make test`` sets): then they fail.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "runs" / "web-tests"
CHROMIUM = os.environ.get("DILSEG_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-gl=angle",
    "--use-angle=swiftshader",
]
VIEWPORT = {"width": 1100, "height": 720}  # the canvas's size sets SwiftShader's cost per mouse event
WEB_DIR = ROOT / "clients" / "web" / "dist"


def _missing() -> str | None:
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        return f"no Chromium at {CHROMIUM} (make browser installs Debian's)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (requirements.txt)"
    if not (WEB_DIR / "index.html").is_file():
        return f"the page is not built in {WEB_DIR} (make web)"
    return None


@pytest.fixture(scope="session", autouse=True)
def _web_prerequisites():
    why = _missing()
    if why:
        if os.environ.get("DILSEG_WEB_TESTS") == "required":
            pytest.fail(f"browser tests required but {why}")
        pytest.skip(why)


def wait_js(page, expr: str, timeout: float = 60.0, what: str = "") -> object:
    """Poll a JavaScript expression until it is truthy (page.evaluate runs outside the
    page's Content-Security-Policy, which forbids Playwright's own wait_for_function)."""
    deadline = time.monotonic() + timeout
    while True:
        v = page.evaluate(expr)
        if v:
            return v
        if time.monotonic() > deadline:
            shot(page, "timeout")
            err = page.evaluate("window.dilsegPage ? window.dilsegPage.errors.map(e => e.text) : []")
            raise TimeoutError(f"{what or expr} not true within {timeout} s; page errors: {err}")
        time.sleep(0.1)


def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A ``dilseg serve --web`` subprocess with one annotator key."""

    def __init__(self, tmp: Path, steps: int = 2, extra: tuple[str, ...] = ()) -> None:
        from engine.server import KeyStore

        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        keys = KeyStore.load(tmp / "keys.json")
        self.key = keys.add("annotator", "annotator")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state = tmp / "state"
        cmd = [
            sys.executable,
            "-m",
            "engine.cli",
            "serve",
            "--web",
            "--port",
            str(self.port),
            "--state",
            str(self.state),
            "--keys",
            str(tmp / "keys.json"),
            "--device",
            "cpu",
            "--steps",
            str(steps),
            *extra,
        ]
        self.log = open(tmp / "server.log", "w")
        self.proc = subprocess.Popen(cmd, cwd=str(ROOT), stdout=self.log, stderr=subprocess.STDOUT)
        self._wait()

    def _wait(self, timeout: float = 90.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"dilseg serve exited with {self.proc.returncode}: {(self.tmp / 'server.log').read_text()[-2000:]}"
                )
            try:
                if httpx.get(self.url + "/v1/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"dilseg serve did not answer within {timeout} s")

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.key}"}

    def get(self, path: str, **kw):
        import httpx

        r = httpx.get(self.url + path, headers=self.headers, timeout=60, **kw)
        r.raise_for_status()
        return r

    def frame(self, path: str) -> tuple[dict, np.ndarray]:
        from engine.server.codecs import unframe

        meta, payload = unframe(self.get(path).content)
        return meta, np.frombuffer(payload, dtype=meta["dtype"]).reshape(meta["shape"])

    def upload(self, image_id: str, path: Path) -> None:
        import httpx

        r = httpx.put(
            self.url + "/datastore/",
            params={"image": image_id},
            headers=self.headers,
            timeout=60,
            files={"file": (path.name, path.read_bytes())},
            data={"params": "{}"},
        )
        r.raise_for_status()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
            headless=True,
            args=CHROMIUM_ARGS,
        )  # a fresh temporary profile each launch
        yield b
        b.close()


class Tab:
    """One browser tab on a server, recording what the page asked of the outside world."""

    def __init__(self, browser, server: Server) -> None:
        self.server = server
        self.context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
        self.foreign: list[str] = []
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        origin = server.url

        def gate(route):
            url = route.request.url
            if url.startswith(origin + "/"):
                route.continue_()
            else:  # the page must not reach anything but its server (no CDN, no telemetry)
                self.foreign.append(url)
                route.abort()

        self.context.route("**/*", gate)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))
        self.page.on("pageerror", lambda e: self.page_errors.append(str(e)))

    def open(self) -> None:
        self.page.goto(self.server.url + "/")
        wait_js(
            self.page,
            "window.dilsegPage && window.dilsegPage.auth !== null || "
            "(window.dilsegPage && window.dilsegPage.errors.length > 0)",
            30,
            "the page started",
        )

    def connect(self, key: str | None = None) -> None:
        page = self.page
        n = page.evaluate("window.dilsegPage.errors.length")
        page.fill("#key", self.server.key if key is None else key)
        page.click("#connect")
        wait_js(
            page,
            f"!window.dilsegPage.connecting && (window.dilsegPage.info !== null || "
            f"window.dilsegPage.errors.length > {n})",
            30,
            "connected",
        )

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def tab_factory(browser):
    tabs: list[Tab] = []

    def make(server: Server) -> Tab:
        t = Tab(browser, server)
        tabs.append(t)
        return t

    yield make
    for t in tabs:
        foreign = list(t.foreign)
        with contextlib.suppress(Exception):
            t.close()
        assert not foreign, f"the page tried to reach other hosts: {foreign[:5]}"
