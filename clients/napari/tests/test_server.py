"""The widget against a real ``dilseg serve`` on a 127.0.0.1 port, through
``dilseg_client``: connect with a key, open, two slices, the result layer, commit;
the same Dice as the same calls in process. The server runs in the main
environment (``.venv``: FastAPI, uvicorn), as it would beside a napari install."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from qtpy.QtCore import Qt

from .conftest import ROOT, dice, mark_extent, paint, tiny_config, wait_idle

MAIN_PY = ROOT / ".venv" / "bin" / "python"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path: Path):
    """``dilseg serve --keys --state`` in a subprocess of the main venv; yields (url, key)."""
    import httpx

    from engine import Engine
    from engine.server.state import StateDir

    py = MAIN_PY if MAIN_PY.exists() else Path(sys.executable)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    keys = tmp_path / "keys.json"
    key = subprocess.run(
        [str(py), "-m", "engine.cli", "keys", "add", "napari", "--file", str(keys)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    ).stdout.strip()
    eng = Engine(tiny_config(steps=3))  # the server's engine: saved here, loaded by the server
    StateDir(tmp_path / "state").save(eng)
    eng.close()
    port = _free_port()
    proc = subprocess.Popen(
        [
            str(py),
            "-m",
            "engine.cli",
            "serve",
            "--port",
            str(port),
            "--state",
            str(tmp_path / "state"),
            "--keys",
            str(keys),
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"dilseg serve exited {proc.returncode}: {proc.stdout.read()}")
            try:
                if httpx.get(url + "/v1/health", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("dilseg serve did not answer within 90 s")
            time.sleep(0.2)
        yield url, key
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_widget_through_a_real_server(dock, qtbot, server):
    from engine.io.phantoms import phantom_case

    url, key = server
    viewer, _, w = dock
    steps = 3
    case = phantom_case(3, shape=(32, 40, 36), axis=0)
    image = viewer.add_image(case.image, name="remote", scale=case.spacing)

    w.remote_radio.setChecked(True)
    w.url_edit.setText(url)
    w.key_edit.setText("dsk_wrong")
    qtbot.mouseClick(w.connect_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    assert w.engine is None and type(w.last_error).__name__ == "AuthError"  # a wrong key says so
    w.key_edit.setText(key)
    qtbot.mouseClick(w.connect_btn, Qt.LeftButton)
    wait_idle(qtbot, w)
    assert w.engine is not None and w.status.counters["cases"] == 0

    viewer.layers.selection.active = image
    qtbot.mouseClick(w.open_btn, Qt.LeftButton)
    wait_idle(qtbot, w)
    assert w.axis == 0 and type(w.session).__name__ == "RemoteSession"
    first, last = mark_extent(qtbot, w, case.label, 0, 2)
    drawn = []
    for _ in range(2):
        qtbot.mouseClick(w.next_btn, Qt.LeftButton)
        z = w._here()
        paint(w.drawing_layer, 0, z, case.label[z])
        drawn.append(z)
    w.steps_spin.setValue(steps)
    qtbot.mouseClick(w.send_btn, Qt.LeftButton)
    wait_idle(qtbot, w)
    d_remote = dice(w.result_layer.data, case.label)

    import engine

    eng = engine.Engine(tiny_config(steps=steps))
    s = eng.open(case.image, spacing=case.spacing, axis=0)
    s.set_extent(first, last)
    for z in sorted(drawn):
        s.annotate(z, case.label[z])
    s.propagate()
    s.learn(steps)
    d_local = dice(s.result(), case.label)
    eng.close()
    print(f"server round: Dice {d_remote:.4f} through dilseg serve, {d_local:.4f} in process; {w.status.describe()}")
    assert round(d_remote, 3) == round(d_local, 3)
    assert w.status.counters["rounds"] == 1

    qtbot.mouseClick(w.commit_btn, Qt.LeftButton)
    wait_idle(qtbot, w)
    assert w.session is None and w.status.counters["cases"] == 1
