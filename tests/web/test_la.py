"""Done criterion on a real left-atrium case: three slices drawn on the page (by mouse,
from a NIfTI file opened on the page) give the same result as the same three masks given
to ``engine.Session`` in process with the same engine config and seed (Dice equal to
3 decimals; in practice the masks are equal voxel for voxel)."""

from __future__ import annotations

import time

import numpy as np
import pytest

import engine
from engine.io.volumes import read_volume, write_volume

from .conftest import Server, shot, wait_js
from .drawing import Painter
from .test_page import go, send_and_wait

pytestmark = pytest.mark.timeout(300)

STEPS = 3  # few learning steps: the protocol is the same, the test stays short on two cores


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


@pytest.fixture(scope="module")
def la_case():
    from engine.io.dataset import la_folder

    try:
        return la_folder()["la_000"]
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"shared LA data not available: {exc}")


def test_three_slices_on_the_page_equal_three_annotate_calls(tab_factory, tmp_path, la_case):
    t0 = time.perf_counter()
    label = la_case.label
    path = tmp_path / "la_000.nii.gz"
    write_volume(path, la_case.image, spacing=la_case.spacing)
    vol = read_volume(path)
    assert np.array_equal(vol.array, la_case.image)
    zs = np.flatnonzero(label.any((0, 1)))
    first, last = int(zs[0]), int(zs[-1])

    srv = Server(tmp_path / "srv", steps=STEPS)
    try:
        tab = tab_factory(srv)
        page = tab.page
        tab.open()
        tab.connect()
        page.set_input_files("#file", str(path))
        wait_js(page, "window.dilsegPage.cs && !window.dilsegPage.busy", 60, "la_000 open")
        assert page.evaluate("[window.dilsegPage.cs.axis, window.dilsegPage.cs.shape]") == [2, list(label.shape)]
        go(page, first)
        page.keyboard.press("[")
        go(page, last)
        page.keyboard.press("]")
        wait_js(page, "window.dilsegPage.cs.proposals.length === 3 && !window.dilsegPage.busy", 30)
        slices = page.evaluate("window.dilsegPage.cs.proposals")
        painter = Painter(page)
        page.locator("#gl").hover()
        t_draw = time.perf_counter()
        drawn = {}
        for z in slices:
            go(page, z)
            drawn[z] = painter.draw(z, label[:, :, z])
            assert drawn[z]["equal"], drawn[z]
        t_draw = time.perf_counter() - t_draw
        assert page.evaluate("Number(document.getElementById('steps').value)") == STEPS  # the server's default
        send_and_wait(page, timeout=180)
        sid = page.evaluate("window.dilsegPage.cs.sid")
        on_page = np.asarray(page.evaluate("Array.from(window.dilsegPage.cs.result)"), np.uint8).reshape(label.shape)
        _, on_server = srv.frame(f"/v1/sessions/{sid}/result")
        assert np.array_equal(on_page, on_server)
        page.click(f"button.proposal[data-z='{page.evaluate('window.dilsegPage.cs.proposals[0]')}']")
        shot(page, "la-result")
    finally:
        srv.stop()

    # the same three masks through the API in process: same config (device, steps, default seed)
    eng = engine.Engine(engine.Config(device="cpu", steps=STEPS))
    s = eng.open(np.ascontiguousarray(vol.array, dtype=np.float32), spacing=list(vol.spacing), axis=2)
    s.set_extent(first, last)
    assert s.propose(3) == slices
    for z in sorted(slices):
        s.annotate(z, label[:, :, z])
    s.propagate()
    s.learn(STEPS)
    via_api = s.result()
    s.close()
    eng.close()

    d_page, d_api = dice(on_page, label), dice(via_api, label)
    same = int((on_page == via_api).sum())
    moves = sum(d["contour_moves"] + d["brush_clicks"] + d["eraser_clicks"] for d in drawn.values())
    print(
        f"\nLA la_000, slices {slices}: Dice on the page {d_page:.4f}, through Session {d_api:.4f}; "
        f"{same}/{on_page.size} voxels equal; drawing {moves} mouse strokes/clicks in {t_draw:.1f} s; "
        f"test {time.perf_counter() - t0:.1f} s"
    )
    assert round(d_page, 3) == round(d_api, 3)
    assert d_page > 0.7
