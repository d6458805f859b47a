"""dilseg-client on a real loopback port: the same methods, return types and error
classes as engine.Session; torch-free import; heartbeats; concurrent clients."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import engine
from engine import errors as EE
from engine.server import Limits, create_app

from .conftest import ROOT, live_server, tiny_case, tiny_config

dilseg_client = pytest.importorskip("dilseg_client")
from dilseg_client import RemoteEngine  # noqa: E402
from dilseg_client import errors as CE  # noqa: E402


def _run_case(s, label, zs_first=(2, 6, 9), zs_next=1):
    """The docs' loop through any session-like object; returns what it saw."""
    zs = np.nonzero(label.any((1, 2)))[0]
    s.set_extent(int(zs[0]), int(zs[-1]))
    for z in zs_first:
        s.annotate(z, label[z])
    q, c = s.propagate()
    s.learn(2)
    nxt = s.propose(zs_next)
    p = s.predict()
    f = s.result()
    return q, c, p, f, nxt


def test_remote_session_matches_engine_session():
    image, label = tiny_case(0)
    local = engine.Engine(tiny_config())
    served = engine.Engine(tiny_config())
    with live_server(create_app(served)) as url:
        remote = RemoteEngine(url)
        assert remote.ping() > 0
        s_local = local.open(image, spacing=(1, 1, 1), axis=0)
        s_remote = remote.open(image, spacing=(1, 1, 1), axis=0)
        a = _run_case(s_local, label)
        b = _run_case(s_remote, label)
        for x, y in zip(a[:4], b[:4]):
            assert type(x) is type(y) and x.dtype == y.dtype and x.shape == y.shape
            np.testing.assert_allclose(x, y, atol=1e-5)  # same seed, same calls, same numbers
        assert a[4] == b[4] and isinstance(b[4], list)
        assert s_remote.annotated == s_local.annotated and s_remote.extent == s_local.extent
        assert s_remote.fusion_weight == s_local.fusion_weight
        # a second result after a change: the client pastes the changed box onto its copy
        z = a[4][0]
        s_local.annotate(z, label[z])
        s_remote.annotate(z, label[z])
        s_local.propagate(), s_remote.propagate()
        assert np.array_equal(s_local.result(), s_remote.result())
        assert np.array_equal(s_remote.result(), s_remote.result())  # 304 path
        s_local.commit(final_mask=label)
        s_remote.commit(final_mask=label)
        assert remote.counters["cases"] == local.counters["cases"] == 1
        with pytest.raises(CE.SessionClosedError):
            s_remote.annotate(2, label[2])
        remote.close()
    local.close()
    served.close()


BAD = [
    (lambda s, lab: s.annotate(99, lab[0]), "SliceIndexError"),
    (lambda s, lab: s.annotate(2, lab[0][:5]), "ShapeError"),
    (lambda s, lab: s.annotate(2, lab[6] * 3), "MaskError"),
    (lambda s, lab: s.annotate(2, np.full(lab[0].shape, np.nan)), "NonFiniteError"),
    (lambda s, lab: s.set_extent(5, 2), "SliceIndexError"),
    (lambda s, lab: s.erase(7), "StateError"),
    (lambda s, lab: s.propose(2, rule="magic"), "InputError"),
    (lambda s, lab: s.propagate(), "StateError"),
    (lambda s, lab: s.learn(-3), "InputError"),
    (lambda s, lab: s.commit(final_mask=lab * 2), "MaskError"),
]


@pytest.mark.parametrize("call,name", BAD, ids=[n for _, n in BAD])
def test_errors_have_the_engine_class_names(call, name, request):
    image, label = tiny_case(1)
    eng = engine.Engine(tiny_config())
    with live_server(create_app(eng)) as url:
        remote = RemoteEngine(url)
        s_local, s_remote = eng.open(image), remote.open(image)
        with pytest.raises(getattr(EE, name)):
            call(s_local, label)
        with pytest.raises(getattr(CE, name)) as info:
            call(s_remote, label)
        assert type(info.value).__name__ == name
        # the same hierarchy: an InputError subclass is caught as InputError on both sides
        assert issubclass(getattr(CE, name), CE.DilsegError)
        assert [c.__name__ for c in getattr(CE, name).__mro__ if c.__module__.endswith("errors")] == [
            c.__name__ for c in getattr(EE, name).__mro__ if c.__module__.endswith("errors")
        ]
        s_local.close()
        remote.close()
    eng.close()


def test_client_imports_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import dilseg_client, numpy, httpx\n"
        "from dilseg_client import RemoteEngine, errors\n"
        "e = RemoteEngine('http://127.0.0.1:9')\n"
        "try:\n    e.ping()\nexcept errors.NetworkError:\n    pass\n"
        "assert 'engine' not in sys.modules and sys.modules['torch'] is None\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=str(ROOT / "clients" / "python")
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_heartbeats_keep_a_lease_alive():
    eng = engine.Engine(tiny_config())
    app = create_app(eng, limits=Limits(lease_timeout_s=1.5), reap_interval_s=0.1)
    with live_server(app) as url:
        image, label = tiny_case(2)
        alive = RemoteEngine(url, heartbeat_s=0.25).open(image)
        dead = RemoteEngine(url, heartbeat_s=60).open(image)
        time.sleep(3.5)
        alive.annotate(3, label[3])
        with pytest.raises(CE.SessionClosedError):
            dead.annotate(3, label[3])
        alive.engine.close()
    eng.close()


def test_concurrent_clients_lose_no_commit(tmp_path):
    """Three clients, two sessions each at a time, for a bounded time: every commit
    the server acknowledged is counted and saved."""
    eng = engine.Engine(tiny_config())
    app = create_app(tmp_path / "state", limits=Limits(max_sessions=8), config=tiny_config())
    acked, errors = [], []
    deadline = time.monotonic() + 12.0
    with live_server(app) as url:

        def worker(w):
            remote = RemoteEngine(url)
            i = 0
            try:
                while time.monotonic() < deadline and i < 6:
                    image, label = tiny_case(100 * w + i)
                    a, b = remote.open(image), remote.open(image)
                    for s in (a, b):
                        s.annotate_many([3, 6, 9], [label[3], label[6], label[9]])
                    fa = a.learn_async(1)
                    b.round(steps=1, k=1)
                    fa.result(60)
                    a.commit()
                    acked.append((w, i, "a"))
                    b.commit(final_mask=label)
                    acked.append((w, i, "b"))
                    i += 1
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
            finally:
                remote.close()

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        n = len(acked)
        assert n >= 6
        assert RemoteEngine(url).counters["cases"] == n
    back = engine.server.StateDir(tmp_path / "state").load()
    assert back.counters["cases"] == n
    eng.close()


def test_a_body_over_the_limit_gets_413_before_it_is_sent():
    """On a real port: headers announcing a huge body, and no body at all; the answer
    must come at once (the server never waits for, or reads, the body)."""
    import socket
    from urllib.parse import urlparse

    eng = engine.Engine(tiny_config())
    with live_server(create_app(eng, limits=Limits(max_body_bytes=1 << 20))) as url:
        u = urlparse(url)
        with socket.create_connection((u.hostname, u.port), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/sessions?shape=512,512,512 HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/octet-stream\r\nContent-Length: 536870912\r\n\r\n"
            )
            t0 = time.monotonic()
            data = b""
            while b"TooLargeError" not in data and time.monotonic() - t0 < 5:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
            text = data.decode("latin-1")
            assert text.startswith("HTTP/1.1 413") and "TooLargeError" in text and time.monotonic() - t0 < 5
    eng.close()
