"""What ``dilseg serve --web`` adds to the app: the static page (public, same-origin only
by its Content-Security-Policy, a clear error when it is not built) and the three routes
the page needs: a session's image as the engine holds it, the proxy mask as changed-bbox
crops, and sessions on an image of the server's stream whose commit stores the final
label (so that /activelearning moves on)."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

import engine
from engine.io.volumes import read_volume, write_volume
from engine.server import KeyStore, create_app
from engine.server import codecs as C
from engine.server.web import WebBuildMissing

from .conftest import tiny_case, tiny_config


@pytest.fixture
def web_dir(tmp_path):
    d = tmp_path / "dist"
    d.mkdir()
    (d / "index.html").write_text("<!doctype html><title>dilseg</title><script type=module src=app.js></script>")
    (d / "app.js").write_text("console.log('dilseg')")
    return d


@pytest.fixture
def keyed(tmp_path, web_dir):
    keys = KeyStore.load(tmp_path / "keys.json")
    key = keys.add("ann", "annotator")
    eng = engine.Engine(tiny_config())
    with TestClient(create_app(eng, keys=keys, web=web_dir)) as c:
        yield c, {"Authorization": f"Bearer {key}"}
    eng.close()


def test_the_page_is_public_and_same_origin_only(keyed):
    c, _ = keyed
    r = c.get("/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/web/"
    r = c.get("/web/")
    assert r.status_code == 200 and "dilseg" in r.text  # no key needed for the page itself
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp and "script-src 'self'" in csp
    assert "http" not in csp  # no CDN allowed
    assert r.headers["x-content-type-options"] == "nosniff"
    assert c.get("/web/app.js").status_code == 200
    assert c.get("/web/missing.js").status_code == 404
    # everything else still needs the key
    assert c.get("/v1/info").status_code == 401
    assert c.get("/datastore/").status_code == 401
    assert c.get("/webx").status_code == 401


def test_without_web_there_is_no_page(tmp_path):
    eng = engine.Engine(tiny_config())
    with TestClient(create_app(eng)) as c:
        assert c.get("/web/").status_code == 404
        assert c.get("/").status_code == 404
    eng.close()


def test_a_missing_build_fails_before_an_engine_is_built(tmp_path):
    with pytest.raises(WebBuildMissing, match="make web"):
        create_app(tmp_path / "state", web=tmp_path / "nothing")
    assert not (tmp_path / "state").exists()


def test_serve_web_without_a_build_says_run_make_web(tmp_path, capsys):
    from engine.cli import main

    assert main(["serve", "--web", str(tmp_path / "nothing"), "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "make web" in err and "not built" in err


def test_session_image_is_the_engines_array(keyed):
    c, h = keyed
    image, _ = tiny_case(0)
    for axis in (0, 2):
        r = c.post(
            "/v1/sessions",
            params={"shape": ",".join(map(str, image.shape)), "axis": axis},
            content=image.tobytes(),
            headers=h,
        )
        sid = r.json()["session_id"]
        meta, payload = C.unframe(c.get(f"/v1/sessions/{sid}/image", headers=h).content)
        got = np.frombuffer(payload, np.float32).reshape(meta["shape"])
        assert meta["axis"] == axis and meta["shape"] == list(image.shape)
        np.testing.assert_array_equal(got, image)
        c.delete(f"/v1/sessions/{sid}", headers=h)


def test_proxy_crops_follow_the_annotations(keyed):
    c, h = keyed
    image, label = tiny_case(1)
    sid = c.post(
        "/v1/sessions", params={"shape": ",".join(map(str, image.shape))}, content=image.tobytes(), headers=h
    ).json()["session_id"]
    assert c.get(f"/v1/sessions/{sid}/proxy", headers=h).status_code == 409  # nothing drawn yet
    zs = np.flatnonzero(label.any((1, 2)))
    z = int(zs[len(zs) // 2])
    c.post(f"/v1/sessions/{sid}/slices", params={"indices": str(z)}, content=C.encode_masks([label[z]]), headers=h)
    meta, payload = C.unframe(c.get(f"/v1/sessions/{sid}/proxy", headers=h).content)
    assert meta["base"] is None and meta["dtype"] == "uint8"
    proxy = np.frombuffer(payload, np.uint8).reshape(meta["shape"])
    np.testing.assert_array_equal(proxy[z], label[z])  # a drawn slice is itself in the proxy
    assert c.get(f"/v1/sessions/{sid}/proxy", headers={**h, "If-None-Match": f'"{meta["etag"]}"'}).status_code == 304
    z2 = int(zs[0])
    c.post(f"/v1/sessions/{sid}/slices", params={"indices": str(z2)}, content=C.encode_masks([label[z2]]), headers=h)
    meta2, payload2 = C.unframe(c.get(f"/v1/sessions/{sid}/proxy", params={"since": meta["etag"]}, headers=h).content)
    assert meta2["base"] == meta["etag"]
    part = np.frombuffer(payload2, np.uint8).reshape(meta2["shape"])
    full = proxy.copy()
    full[tuple(slice(lo, hi) for lo, hi in meta2["bbox"])] = part
    _, raw = C.unframe(c.post(f"/v1/sessions/{sid}/propagate", params={"arrays": "true"}, headers=h).content)
    q = np.frombuffer(raw, np.float32).reshape((2, *image.shape))[0]
    np.testing.assert_array_equal(full, (q >= 0.5).astype(np.uint8))


def _upload(c, h, image_id, image, tmp_path, fmt="nifti"):
    f = tmp_path / (f"{image_id}.nii.gz" if fmt == "nifti" else f"{image_id}.nrrd")
    write_volume(f, image, spacing=(1.0, 1.5, 2.0), origin=(3.0, -4.0, 5.0))
    r = c.put(
        "/datastore/",
        params={"image": image_id},
        files={"file": (f.name, f.read_bytes())},
        data={"params": "{}"},
        headers=h,
    )
    assert r.status_code == 200, r.text
    return f


def test_stream_sessions_commit_their_label_and_the_stream_moves_on(keyed, tmp_path):
    c, h = keyed
    image, label = tiny_case(2)
    _upload(c, h, "a", image, tmp_path)
    _upload(c, h, "b", image[::-1].copy(), tmp_path, fmt="nrrd")
    assert c.post("/activelearning/first", json={}, headers=h).json()["id"] == "a"
    assert c.post("/v1/sessions/datastore", params={"image": "nope"}, headers=h).status_code == 404
    assert c.post("/v1/sessions/datastore", params={"image": "../x"}, headers=h).status_code == 422
    r = c.post("/v1/sessions/datastore", params={"image": "a", "axis": 0}, headers=h)
    assert r.status_code == 201, r.text
    info = r.json()
    sid = info["session_id"]
    assert info["image"] == "a" and info["geometry"]["spacing"] == [1.0, 1.5, 2.0]
    assert info["geometry"]["origin"] == [3.0, -4.0, 5.0]
    meta, payload = C.unframe(c.get(f"/v1/sessions/{sid}/image", headers=h).content)
    np.testing.assert_array_equal(np.frombuffer(payload, np.float32).reshape(image.shape), image)
    zs = np.flatnonzero(label.any((1, 2)))
    picks = [int(zs[1]), int(zs[-2])]
    c.post(
        f"/v1/sessions/{sid}/slices",
        params={"indices": ",".join(map(str, picks))},
        content=C.encode_masks([label[z] for z in picks]),
        headers=h,
    )
    meta, payload = C.unframe(c.post(f"/v1/sessions/{sid}/round", params={"steps": 1}, headers=h).content)
    result = np.frombuffer(payload, np.uint8).reshape(image.shape)
    out = c.post(f"/v1/sessions/{sid}/commit", headers=h).json()
    assert out["committed"] and out["image"] == "a" and out["counters"]["cases"] == 1
    listing = c.get("/datastore/", params={"output": "all"}, headers=h).json()
    assert "final" in listing["objects"]["a"]["labels"] and "final" not in listing["objects"]["b"]["labels"]
    lab = c.get("/datastore/label", params={"label": "a", "tag": "final"}, headers=h)
    f = tmp_path / "final.nii.gz"
    f.write_bytes(lab.content)
    vol = read_volume(f)
    np.testing.assert_array_equal(vol.array, result)  # what the person accepted, with the image's geometry
    assert vol.spacing == (1.0, 1.5, 2.0)
    assert c.post("/activelearning/first", json={}, headers=h).json()["id"] == "b"
    # a final mask given with the commit is the label instead
    sid = c.post("/v1/sessions/datastore", params={"image": "b", "axis": 0}, headers=h).json()["session_id"]
    final = label[::-1].copy()
    out = c.post(f"/v1/sessions/{sid}/commit", params={"format": "u8"}, content=final.tobytes(), headers=h).json()
    assert out["counters"]["cases"] == 2
    data = c.get("/datastore/label", params={"label": "b", "tag": "final"}, headers=h).content
    g = tmp_path / "final_b.nrrd"
    g.write_bytes(data)
    np.testing.assert_array_equal(read_volume(g).array, final)
    assert c.post("/activelearning/first", json={}, headers=h).json() == {}
