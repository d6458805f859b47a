"""The page says what went wrong, in words, instead of going blank: a wrong key, a file
that is not a volume (by its name, or by its bytes: the server's 422), and a server that
went away while a case was open."""

from __future__ import annotations

import numpy as np
import pytest

from engine.io.phantoms import phantom_case
from engine.io.volumes import write_volume

from .conftest import Server, shot, wait_js
from .drawing import Painter
from .pixels import canvas_rgb

pytestmark = pytest.mark.timeout(180)


def last_error(page) -> dict:
    assert page.locator("#error").is_visible(), "no error shown"
    return {"title": page.locator("#error-title").inner_text(), "text": page.locator("#error-text").inner_text()}


def n_errors(page) -> int:
    return page.evaluate("window.dilsegPage.errors.length")


def drop_file(page, name: str, data: bytes) -> None:
    """A file dropped on the viewer (drag and drop, as from a file manager)."""
    dt = page.evaluate_handle(
        "([name, bytes]) => { const dt = new DataTransfer(); "
        "dt.items.add(new File([new Uint8Array(bytes)], name)); return dt }",
        [name, list(data)],
    )
    page.dispatch_event("#viewer", "dragover", {"dataTransfer": dt})
    page.dispatch_event("#viewer", "drop", {"dataTransfer": dt})


def test_wrong_key_bad_files_and_a_server_gone(tab_factory, tmp_path):
    srv = Server(tmp_path / "srv", steps=1)
    try:
        tab = tab_factory(srv)
        page = tab.page
        tab.open()
        assert "needs a key" in page.locator("#status").inner_text()

        # a wrong key
        tab.connect("dsk_this-is-not-a-key")
        err = last_error(page)
        assert err["title"] == "Key refused" and "refused the key (401)" in err["text"], err
        assert page.locator("#conn").inner_text() == "key refused"
        assert page.evaluate("sessionStorage.getItem('dilseg.key')") is None
        shot(page, "error-wrong-key")

        # the right key clears it
        tab.connect()
        assert not page.locator("#error").is_visible()
        assert page.evaluate("sessionStorage.getItem('dilseg.key')") == srv.key  # not in a URL, not in localStorage
        assert srv.key not in page.url

        # a file that is not a volume by its name: refused before anything is sent
        n = n_errors(page)
        page.set_input_files(
            "#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"a shopping list"}]
        )
        wait_js(page, f"window.dilsegPage.errors.length > {n}", 10)
        err = last_error(page)
        assert "notes.txt" in err["text"] and "not a volume" in err["text"], err

        # bytes that are not a volume under a volume's name, dropped on the viewer: the server's 422, in words
        n = n_errors(page)
        drop_file(page, "scan.nii.gz", bytes([7]) * 4096)
        wait_js(page, f"window.dilsegPage.errors.length > {n}", 30)
        err = last_error(page)
        assert "scan.nii.gz" in err["text"] and "could not be read as a NIfTI volume" in err["text"], err
        shot(page, "error-not-a-volume")
        assert page.evaluate("window.dilsegPage.cs") is None

        # drop a real volume, then the server goes away
        case = phantom_case(1, shape=(24, 32, 20), axis=2)
        f = tmp_path / "small.nrrd"
        write_volume(f, case.image, spacing=case.spacing)
        drop_file(page, "small.nrrd", f.read_bytes())
        wait_js(page, "window.dilsegPage.cs && !window.dilsegPage.busy", 60, "the dropped NRRD file open")
        assert page.evaluate("window.dilsegPage.cs.name") == "small.nrrd"
        assert not page.locator("#error").is_visible()
        z = page.evaluate("window.dilsegPage.cs.slice")
        page.locator("#gl").hover()
        Painter(page).draw(z, case.label[:, :, z] if case.label[:, :, z].any() else np.eye(24, 32, dtype=np.uint8))
        srv.stop()
        n = n_errors(page)
        page.keyboard.press("Enter")
        wait_js(page, f"window.dilsegPage.errors.length > {n} && !window.dilsegPage.busy", 60)
        err = last_error(page)
        assert err["title"] == "Server gone" and "does not answer" in err["text"], err
        assert page.locator("#conn").inner_text() == "server gone"
        rgb = canvas_rgb(page)
        assert (rgb.max(axis=2) > 40).mean() > 0.2, "the viewer still shows the case"
        assert page.evaluate("window.dilsegPage.cs.pending.size") == 1, "the unsent drawing is kept"
        shot(page, "error-server-gone")
        assert not tab.page_errors, tab.page_errors
    finally:
        srv.stop()
