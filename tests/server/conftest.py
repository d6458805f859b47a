"""Server test helpers: a tiny engine, an in-process client, a real loopback server."""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "clients" / "python") not in sys.path:  # the client without installing it
    sys.path.insert(0, str(ROOT / "clients" / "python"))

import engine  # noqa: E402
import engine.learn  # noqa: E402


def tiny_config(**kw):
    learn = engine.learn.LearnConfig(
        patch=(8, 16, 16), base_width=4, depth=2, batch_size=2, precision="fp32", channels_last=False
    )
    kw.setdefault("steps", 2)
    return engine.Config(device="cpu", learn=learn, replay_capacity=16, replay_patches_per_case=4, **kw)


def tiny_case(seed=0, shape=(12, 20, 18)):
    """A blob image and its label, annotation axis 0."""
    g = np.random.default_rng(seed)
    d, h, w = shape
    zz, yy, xx = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    r = 1 + (zz - d / 2) ** 2 / (d / 3) ** 2 + (yy - h / 2) ** 2 / (h / 4) ** 2 + (xx - w / 2) ** 2 / (w / 4) ** 2
    label = (r < 2.0).astype(np.uint8)
    image = (label * 2.0 + g.normal(0, 0.3, shape)).astype(np.float32)
    return image, label


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_server(app, port=None):
    """``app`` served by uvicorn on 127.0.0.1 in a thread; yields its URL."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", timeout_graceful_shutdown=5)
    )
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not t.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        t.join(30)


def wait_http(url: str, timeout: float = 60.0, proc=None) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/v1/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


@pytest.fixture
def tiny_engine():
    eng = engine.Engine(tiny_config())
    yield eng
    eng.close()
