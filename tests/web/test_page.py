"""The whole loop on the page with a phantom from the server's stream: open the next
stream case, mark the extent and move through slices by keyboard, draw the proposed
slices by mouse (fill, brush, eraser), send, see the proxy then the result, compare the
overlay's pixels with the server's result, jump to a proposed slice, a second round,
undo (a stroke, then a sent slice), commit, and the stream moves on."""

from __future__ import annotations

import time

import numpy as np
import pytest

from engine.io.phantoms import phantom_case
from engine.io.volumes import write_volume

from .conftest import Server, shot, wait_js
from .drawing import Painter
from .pixels import is_proxy_colour, is_result_colour, sample

pytestmark = pytest.mark.timeout(240)

IDLE = "window.dilsegPage.cs && !window.dilsegPage.busy"


def go(page, z: int) -> None:
    """Slice z by the keyboard (ArrowUp / ArrowDown)."""
    cur = page.evaluate("window.dilsegPage.cs.slice")
    key = "ArrowUp" if z > cur else "ArrowDown"
    for _ in range(abs(z - cur)):
        page.keyboard.press(key)
    assert page.evaluate("window.dilsegPage.cs.slice") == z
    assert page.locator("#slice-label").inner_text().startswith(f"slice {z} /")


def send_and_wait(page, timeout: float = 120) -> dict:
    n = page.evaluate("window.dilsegPage.events.length")
    page.keyboard.press("Enter")
    wait_js(
        page,
        f"window.dilsegPage.events.filter(e => e.what === 'result').length > 0 && "
        f"window.dilsegPage.events.length > {n} && "
        f"window.dilsegPage.events[window.dilsegPage.events.length - 1].what === 'result' && "
        f"!window.dilsegPage.busy",
        timeout,
        "the round's result on the page",
    )
    return page.evaluate(f"window.dilsegPage.events.slice({n})")


def test_annotate_a_phantom_case(tab_factory, tmp_path):
    t_start = time.perf_counter()
    srv = Server(tmp_path / "srv", steps=2)
    try:
        case = phantom_case(3, shape=(40, 48, 28), axis=2)
        label = case.label
        f = tmp_path / "phantom_3.nii.gz"
        write_volume(f, case.image, spacing=case.spacing)
        srv.upload("phantom_3", f)

        tab = tab_factory(srv)
        page = tab.page
        tab.open()
        tab.connect()
        assert page.locator("#conn").inner_text().startswith("connected")
        page.click("#next-stream")  # /activelearning: the stream's next image without a final label
        wait_js(page, IDLE + " && window.dilsegPage.cs.imageId === 'phantom_3'", 60, "the stream case open")
        sid = page.evaluate("window.dilsegPage.cs.sid")
        assert page.evaluate("window.dilsegPage.cs.shape") == list(label.shape)

        # a stroke on a fresh case, undone: nothing left to send
        painter = Painter(page)
        page.locator("#gl").hover()
        z0 = page.evaluate("window.dilsegPage.cs.slice")
        painter.tool("brush", 3)
        painter.stroke(z0, [(5, 5), (5, 12), (9, 12)])
        assert page.evaluate("[...window.dilsegPage.cs.pending]") == [z0]
        page.keyboard.press("Control+z")
        assert page.evaluate("window.dilsegPage.cs.pending.size") == 0
        assert not painter.page_mask(z0, label.shape[:2]).any()

        # the object's first and last slice, by keyboard
        zs = np.flatnonzero(label.any((0, 1)))
        first, last = int(zs[0]), int(zs[-1])
        go(page, first)
        page.keyboard.press("[")
        go(page, last)
        page.keyboard.press("]")
        wait_js(page, IDLE + " && window.dilsegPage.cs.proposals.length === 3", 30, "cold-start proposals")
        assert srv.get(f"/v1/sessions/{sid}/extent").json()["extent"] == [first, last]
        proposals = page.evaluate("window.dilsegPage.cs.proposals")
        shot(page, "phantom-1-open")

        # draw the proposed slices by mouse
        for z in proposals:
            go(page, z)
            info = painter.draw(z, label[:, :, z])
            assert info["equal"], info
        assert sorted(page.evaluate("[...window.dilsegPage.cs.pending]")) == sorted(proposals)
        shot(page, "phantom-2-drawn")

        # send: the proxy first, then the result
        events = send_and_wait(page)
        kinds = [e["what"] for e in events]
        assert kinds.index("proxy") < kinds.index("result"), kinds
        meta, result = srv.frame(f"/v1/sessions/{sid}/result")
        page_result = np.asarray(page.evaluate("Array.from(window.dilsegPage.cs.result)"), np.uint8).reshape(
            label.shape
        )
        assert np.array_equal(page_result, result)
        _, proxy = srv.frame(f"/v1/sessions/{sid}/proxy")
        page_proxy = np.asarray(page.evaluate("Array.from(window.dilsegPage.cs.proxy)"), np.uint8).reshape(label.shape)
        assert np.array_equal(page_proxy, proxy)
        drawn = srv.get(f"/v1/sessions/{sid}").json()["annotated"]["2"]
        assert drawn == sorted(proposals)

        # jump to a proposed slice (its button) and compare what is on screen with the server's result
        nxt = page.evaluate("window.dilsegPage.cs.proposals")
        assert len(nxt) == 3 and not set(nxt) & set(proposals)
        z = nxt[0]
        page.click(f"button.proposal[data-z='{z}']")
        assert page.evaluate("window.dilsegPage.cs.slice") == z
        want = result[:, :, z]
        assert want.any(), "pick a case whose result holds the object on the proposed slice"
        overlay = np.asarray(page.evaluate(f"window.dilsegPage.sliceOfOverlay({z})"), np.uint8).reshape(want.shape)
        assert np.array_equal(overlay, want)  # NiiVue's own overlay volume
        seen = is_result_colour(sample(page, z))
        assert np.array_equal(seen, want), f"{int((seen != want).sum())} of {want.size} pixels differ"
        shot(page, "phantom-3-result")

        # the proxy layer, shown instead of the result, is the server's proxy
        page.check("#show-proxy")
        page.uncheck("#show-result")
        seen = is_proxy_colour(sample(page, z))
        assert np.array_equal(seen, proxy[:, :, z]), f"{int((seen != proxy[:, :, z]).sum())} proxy pixels differ"
        page.uncheck("#show-proxy")
        page.check("#show-result")
        page.locator("#gl").hover()

        # second round on the proposed slice; a stray stroke undone with Ctrl+Z first
        assert painter.draw(z, label[:, :, z])["equal"]
        stray = np.argwhere(label[:, :, z] == 0)[0]
        painter.tool("brush", 1)
        painter.click(z, [stray])
        assert painter.page_mask(z, want.shape)[tuple(stray)] == 1
        page.keyboard.press("Control+z")
        wait_js(page, IDLE, 10)
        assert np.array_equal(painter.page_mask(z, want.shape), label[:, :, z]), "Ctrl+Z undid the stroke"
        send_and_wait(page)
        rows = page.locator("#rounds tbody tr")
        assert rows.count() == 2
        agree = rows.first.locator("td").nth(4).inner_text()
        assert agree != "–" and 0.0 <= float(agree) <= 1.0  # how well the engine had this slice before it was drawn
        assert srv.get(f"/v1/sessions/{sid}").json()["annotated"]["2"] == sorted(proposals + [z])

        # Ctrl+Z with no stroke left undoes the last sent slice on the server; its drawing stays, unsent
        page.keyboard.press("Control+z")
        wait_js(page, IDLE + f" && window.dilsegPage.cs.pending.has({z})", 30, "server undo")
        assert srv.get(f"/v1/sessions/{sid}").json()["annotated"]["2"] == sorted(proposals)
        send_and_wait(page)
        assert srv.get(f"/v1/sessions/{sid}").json()["annotated"]["2"] == sorted(proposals + [z])
        final = np.asarray(page.evaluate("Array.from(window.dilsegPage.cs.result)"), np.uint8).reshape(label.shape)
        dice = 2 * (final & label).sum() / (final.sum() + label.sum())
        assert dice > 0.8, dice

        # counters on the page follow the engine
        info = srv.get("/v1/info").json()
        assert page.locator("#engine dd[data-k='rounds']").inner_text() == str(info["counters"]["rounds"])

        # commit: the engine learns the case, the stream moves on
        page.click("#commit")
        wait_js(page, "window.dilsegPage.cs === null && !window.dilsegPage.busy", 60, "committed")
        assert srv.get("/v1/info").json()["counters"]["cases"] == 1
        wait_js(page, "document.querySelector(\"#engine dd[data-k='cases']\").textContent === '1'", 10)
        listing = srv.get("/datastore/", params={"output": "all"}).json()
        assert "final" in listing["objects"]["phantom_3"]["labels"]
        page.click("#next-stream")
        wait_js(page, "document.getElementById('status').textContent.includes('final label')", 20)
        shot(page, "phantom-4-committed")
        assert not tab.page_errors, tab.page_errors
        print(f"\nweb phantom loop: Dice {dice:.3f}, {time.perf_counter() - t_start:.1f} s")
    finally:
        srv.stop()
