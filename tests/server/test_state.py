"""The state folder: atomic slot switch, and `kill -9` of a real server process
after N commits loses nothing (counters and predictions survive a restart)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import engine
from engine.server import StateDir

from .conftest import ROOT, free_port, tiny_case, tiny_config, wait_http

dilseg_client = pytest.importorskip("dilseg_client")
from dilseg_client import RemoteEngine  # noqa: E402


def test_slots_switch_atomically_and_are_pruned(tmp_path):
    st = StateDir(tmp_path / "s")
    assert st.current() is None
    eng = engine.Engine(tiny_config())
    first = st.save(eng)
    image, label = tiny_case(0)
    s = eng.open(image)
    s.annotate(4, label[4])
    s.commit()
    for _ in range(3):
        last = st.save(eng)
    assert st.current() == last and not first.exists()
    assert len(list((tmp_path / "s" / "slots").iterdir())) == 2
    # a half-written slot that CURRENT does not name is never read
    junk = tmp_path / "s" / "slots" / "zzz-partial"
    junk.mkdir()
    (junk / "engine.ckpt").write_bytes(b"truncated")
    assert st.load().counters["cases"] == 1
    (tmp_path / "s" / "CURRENT").write_text("missing-slot\n")
    with pytest.raises(engine.errors.CheckpointError):
        st.load()
    eng.close()


def _serve(state, port):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "serve",
            "--port",
            str(port),
            "--state",
            str(state),
            "--log-level",
            "error",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def test_kill_9_after_commits_loses_nothing(tmp_path):
    state = tmp_path / "state"
    StateDir(state).save(engine.Engine(tiny_config()))  # a tiny engine to serve
    probe, _ = tiny_case(99)
    n = 3
    port = free_port()
    proc = _serve(state, port)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url, 120, proc)
        remote = RemoteEngine(url)
        for i in range(n):
            image, label = tiny_case(i)
            s = remote.open(image)
            s.annotate_many([3, 6, 9], [label[3], label[6], label[9]])
            s.learn(2)
            s.commit()
        before = remote.predict(probe)
        assert remote.counters["cases"] == n
        remote.close()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    port = free_port()
    proc = _serve(state, port)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url, 120, proc)
        remote = RemoteEngine(url)
        assert remote.counters["cases"] == n
        np.testing.assert_array_equal(remote.predict(probe), before)
        # learning without a commit is saved at a clean shutdown (SIGTERM)
        image, label = tiny_case(50)
        s = remote.open(image)
        s.annotate_many([3, 6, 9], [label[3], label[6], label[9]])
        s.learn(2)
        steps = remote.counters["steps"]
        remote.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    # uvicorn re-raises the captured SIGTERM after its graceful shutdown
    assert proc.returncode in (0, -signal.SIGTERM) and b"Traceback" not in proc.stderr.read()
    back = StateDir(state).load()
    assert back.counters["cases"] == n and back.counters["steps"] == steps
