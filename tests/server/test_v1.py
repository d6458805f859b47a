"""The native /v1 API in process: the loop, error mapping, crops and ETags, files
with geometry, limits, leases, auth."""

from __future__ import annotations

import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

import engine
from engine.server import KeyStore, Limits, create_app
from engine.server import codecs as C

from .conftest import tiny_case, tiny_config


def _open(c, image, axis=0, headers=None):
    r = c.post(
        "/v1/sessions",
        params={"shape": ",".join(map(str, image.shape)), "dtype": "float32", "axis": axis},
        content=image.tobytes(),
        headers=headers or {},
    )
    assert r.status_code == 201, r.text
    return r.json()["session_id"]


def _slices(c, sid, label, zs, headers=None):
    return c.post(
        f"/v1/sessions/{sid}/slices",
        params={"indices": ",".join(map(str, zs))},
        content=C.encode_masks([label[z] for z in zs]),
        headers=headers or {},
    )


@pytest.fixture
def client():
    eng = engine.Engine(tiny_config())
    with TestClient(
        create_app(
            eng,
            limits=Limits(
                max_sessions=4,
                max_voxels=20_000,
                max_body_bytes=200_000,
                max_slices_per_request=8,
                max_steps_per_call=20,
            ),
        )
    ) as c:
        yield c
    eng.close()


def test_health_and_info(client):
    assert client.get("/v1/health").json()["status"] == "ok"
    info = client.get("/v1/info").json()
    assert info["device"] == "cpu" and info["counters"]["cases"] == 0
    assert "cells" in info["proposal_rules"] and info["limits"]["max_sessions"] == 4
    assert "reference" in info["backends"]


def test_full_loop_crops_etags_and_commit(client):
    image, label = tiny_case(0)
    sid = _open(client, image)
    zs = np.nonzero(label.any((1, 2)))[0]
    assert client.put(f"/v1/sessions/{sid}/extent", json={"first": int(zs[0]), "last": int(zs[-1])}).status_code == 200
    picks = client.get(f"/v1/sessions/{sid}/proposals", params={"k": 3}).json()["slices"]
    assert _slices(client, sid, label, picks).status_code == 200
    r = client.post(f"/v1/sessions/{sid}/round", params={"steps": 2, "k": 2})
    meta, payload = C.unframe(r.content)
    assert meta["bbox"] == [[0, n] for n in image.shape] and meta["base"] is None  # first version: whole volume
    assert len(meta["proposals"]) == 2 and not set(meta["proposals"]) & set(picks)
    full = np.frombuffer(payload, np.uint8).reshape(image.shape)
    # unchanged: 304 with If-None-Match, an empty crop with since=
    assert client.get(f"/v1/sessions/{sid}/result", headers={"If-None-Match": f'"{meta["etag"]}"'}).status_code == 304
    m2, p2 = C.unframe(client.get(f"/v1/sessions/{sid}/result", params={"since": meta["etag"]}).content)
    assert m2["bbox"] is None and p2 == b"" and m2["etag"] == meta["etag"]
    # a change: the crop covers it, pasted onto the old version it equals the new mask
    z = meta["proposals"][0]
    assert _slices(client, sid, label, [z]).status_code == 200
    r3 = client.get(f"/v1/sessions/{sid}/result", params={"since": meta["etag"]}, headers={"Accept-Encoding": "gzip"})
    m3, p3 = C.unframe(r3.content)
    assert m3["base"] == meta["etag"]
    new = full.copy()
    if m3["bbox"] is not None:
        new[tuple(slice(lo, hi) for lo, hi in m3["bbox"])] = np.frombuffer(p3, np.uint8).reshape(m3["shape"])
    m4, p4 = C.unframe(client.get(f"/v1/sessions/{sid}/result").content)
    assert np.array_equal(new, np.frombuffer(p4, np.uint8).reshape(image.shape))
    # learning job: 202, then 409 while it runs, then done
    j = client.post(f"/v1/sessions/{sid}/learn", params={"steps": 2})
    assert j.status_code == 202
    st = client.get(f"/v1/sessions/{sid}/jobs/{j.json()['job_id']}", params={"wait": 30}).json()
    assert st["state"] == "done" and "learn" in st["timings"]
    r = client.post(f"/v1/sessions/{sid}/commit", content=C.encode_masks([label]))
    assert r.status_code == 200 and r.json()["counters"]["cases"] == 1
    gone = client.get(f"/v1/sessions/{sid}/result")
    assert gone.status_code == 410 and gone.json()["error"] == "SessionClosedError"


def test_gzip_frames_when_accepted(client):
    image, label = tiny_case(1)
    sid = _open(client, image)
    r = client.get(f"/v1/sessions/{sid}/prediction", headers={"Accept-Encoding": "gzip"})
    assert r.headers.get("content-encoding") == "gzip" and r.headers["etag"].strip('"')
    meta, payload = C.unframe(r.content)  # httpx decodes gzip
    assert meta["dtype"] == "float32" and len(payload) == image.size * 4


@pytest.mark.parametrize(
    "zs,body,status,err",
    [
        ([99], None, 422, "SliceIndexError"),
        ([2, 3], "short", 422, "ShapeError"),
        ([2], "nonbinary", 422, "MaskError"),
    ],
)
def test_bad_slices_are_typed_and_leave_the_session(client, zs, body, status, err):
    image, label = tiny_case(2)
    sid = _open(client, image)
    assert _slices(client, sid, label, [4]).status_code == 200
    if body == "short":
        content = b"\x00" * 3
    elif body == "nonbinary":
        content = (label[6] * 3).tobytes()
    else:
        content = C.encode_masks([label[0]] * len(zs))
    params = {"indices": ",".join(map(str, zs)), "encoding": "u8" if body == "nonbinary" else "bits"}
    r = client.post(f"/v1/sessions/{sid}/slices", params=params, content=content)
    assert r.status_code == status and r.json()["error"] == err, r.text
    assert client.get(f"/v1/sessions/{sid}").json()["annotated"] == {"0": [4]}


def test_all_or_none_annotate(client):
    image, label = tiny_case(3)
    sid = _open(client, image)
    masks = [label[5], label[6] * 2]  # the second is not binary
    r = client.post(
        f"/v1/sessions/{sid}/slices",
        params={"indices": "5,6", "encoding": "u8"},
        content=b"".join(m.astype(np.uint8).tobytes() for m in masks),
    )
    assert r.status_code == 422
    assert client.get(f"/v1/sessions/{sid}").json()["annotated"] == {}


def test_state_errors_map_to_409_and_unknown_to_404(client):
    image, _ = tiny_case(4)
    sid = _open(client, image)
    r = client.post(f"/v1/sessions/{sid}/propagate")
    assert r.status_code == 409 and r.json()["error"] == "StateError"
    assert client.post(f"/v1/sessions/{sid}/undo").status_code == 409
    assert client.get("/v1/sessions/s_nope").status_code == 404
    assert client.delete(f"/v1/sessions/{sid}").status_code == 200
    assert client.post(f"/v1/sessions/{sid}/undo").status_code == 410


def test_open_with_json_metadata(client):
    import json

    image, _ = tiny_case(11)
    meta = {"shape": list(image.shape), "dtype": "float64", "spacing": [1.0, 0.5, 0.5], "axis": 1}
    r = client.post("/v1/sessions", params={"meta": json.dumps(meta)}, content=image.astype(np.float64).tobytes())
    assert r.status_code == 201 and r.json()["axis"] == 1 and r.json()["spacing"] == [1.0, 0.5, 0.5]
    r = client.post("/v1/sessions", params={"meta": '{"shape": "x"}'}, content=b"")
    assert r.status_code == 422


def test_bad_images_are_typed(client):
    r = client.post(
        "/v1/sessions",
        params={"shape": "4,5,6", "dtype": "float32"},
        content=np.full((4, 5, 6), np.nan, np.float32).tobytes(),
    )
    assert r.status_code == 422 and r.json()["error"] == "NonFiniteError"
    r = client.post("/v1/sessions", params={"shape": "4,5", "dtype": "float32"}, content=b"")
    assert r.status_code == 422 and r.json()["error"] == "ShapeError"
    r = client.post("/v1/sessions", params={"shape": "4,5,6", "dtype": "complex64"}, content=b"")
    assert r.status_code == 422


def test_limits_413_before_reading(client):
    # a declared body over max_body_bytes is refused before any byte is read
    def never():
        raise AssertionError("the body was read")
        yield b""  # pragma: no cover

    r = client.post("/v1/sessions", params={"shape": "10,10,10"}, content=never(), headers={"Content-Length": "300000"})
    assert r.status_code == 413 and r.json()["error"] == "TooLargeError"
    # voxels over max_voxels: 413 from the query alone
    r = client.post("/v1/sessions", params={"shape": "100,100,100"}, content=b"")
    assert r.status_code == 413
    image, label = tiny_case(5)
    sid = _open(client, image)
    r = client.post(f"/v1/sessions/{sid}/slices", params={"indices": ",".join(["1"] * 9)}, content=b"")
    assert r.status_code == 413  # slices per request
    assert client.post(f"/v1/sessions/{sid}/learn", params={"steps": 21}).status_code == 413
    # a chunked body (no Content-Length) is cut off once it passes the limit
    r = client.post("/v1/sessions/file", params={"format": "nifti"}, content=iter([b"x" * 100_000] * 3))
    assert r.status_code == 413


def test_capacity_503_with_retry_after(client):
    image, _ = tiny_case(6)
    sids = [_open(client, image) for _ in range(4)]
    r = client.post("/v1/sessions", params={"shape": ",".join(map(str, image.shape))}, content=image.tobytes())
    assert r.status_code == 503 and r.json()["error"] == "CapacityError" and int(r.headers["retry-after"]) >= 1
    client.delete(f"/v1/sessions/{sids[0]}")
    assert (
        client.post(
            "/v1/sessions", params={"shape": ",".join(map(str, image.shape))}, content=image.tobytes()
        ).status_code
        == 201
    )


def test_lease_expires_without_heartbeats_and_lives_with_them():
    eng = engine.Engine(tiny_config())
    lim = Limits(lease_timeout_s=1.5, idle_timeout_s=30)
    with TestClient(create_app(eng, limits=lim, reap_interval_s=0.1)) as c:
        image, _ = tiny_case(7)
        a, b = _open(c, image), _open(c, image)
        for _ in range(12):
            time.sleep(0.3)
            assert c.post(f"/v1/sessions/{b}/heartbeat").status_code == 200
        assert c.get(f"/v1/sessions/{a}").status_code == 410
        assert c.get(f"/v1/sessions/{b}").status_code == 200
    eng.close()


def test_files_keep_their_geometry(client, tmp_path):
    from engine.io.volumes import read_volume, write_volume

    image, label = tiny_case(8)
    direction = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
    for fmt, ext in (("nifti", ".nii.gz"), ("nrrd", ".nrrd")):
        p = tmp_path / f"img{ext}"
        write_volume(p, image, spacing=(0.7, 0.8, 2.5), origin=(10.0, -5.0, 3.0), direction=direction)
        r = client.post("/v1/sessions/file", params={"format": fmt, "axis": 0}, content=p.read_bytes())
        assert r.status_code == 201, r.text
        sid = r.json()["session_id"]
        assert np.allclose(r.json()["spacing"], (0.7, 0.8, 2.5), atol=1e-5)
        assert _slices(client, sid, label, [3, 6, 9]).status_code == 200
        out = client.get(f"/v1/sessions/{sid}/result", params={"format": fmt})
        q = tmp_path / f"out{ext}"
        q.write_bytes(out.content)
        back = read_volume(q)
        assert back.shape == image.shape and np.allclose(back.spacing, (0.7, 0.8, 2.5), atol=1e-5)
        assert np.allclose(back.origin, (10.0, -5.0, 3.0), atol=1e-4)
        assert np.allclose(back.direction, direction, atol=1e-5)
        client.delete(f"/v1/sessions/{sid}")
    r = client.post("/v1/sessions/file", params={"format": "nrrd"}, content=b"not a file")
    assert r.status_code == 422 and r.json()["error"] == "DataError"


def test_commit_with_bad_final_mask_keeps_the_session(client):
    image, label = tiny_case(9)
    sid = _open(client, image)
    r = client.post(f"/v1/sessions/{sid}/commit", params={"format": "u8"}, content=(label * 2).tobytes())
    assert r.status_code == 422 and r.json()["error"] == "MaskError"
    assert client.get(f"/v1/sessions/{sid}").status_code == 200
    assert (
        client.post(f"/v1/sessions/{sid}/commit", params={"format": "u8"}, content=label.tobytes()).status_code == 200
    )


def test_auth_401_403_and_admin(tmp_path):
    keys = KeyStore.load(tmp_path / "keys.json")
    ann, other, admin = keys.add("ann", "annotator"), keys.add("bob", "annotator"), keys.add("root", "admin")
    text = (tmp_path / "keys.json").read_text()
    assert ann not in text and other not in text and "sha256" in text  # hashes only
    eng = engine.Engine(tiny_config())
    with TestClient(create_app(eng, keys=KeyStore.load(tmp_path / "keys.json"))) as c:
        assert c.get("/v1/health").status_code == 200  # no key needed
        for h in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {ann}"}):
            r = c.get("/v1/info", headers=h)
            assert r.status_code == 401 and r.json()["error"] == "AuthError" and r.headers["www-authenticate"]
        assert c.get("/info/").status_code == 401
        image, _ = tiny_case(10)
        sid = _open(c, image, headers={"Authorization": f"Bearer {ann}"})
        assert c.get(f"/v1/sessions/{sid}", headers={"Authorization": f"Bearer {ann}"}).status_code == 200
        r = c.get(f"/v1/sessions/{sid}", headers={"Authorization": f"Bearer {other}"})
        assert r.status_code == 403 and r.json()["error"] == "ForbiddenError"
        assert c.post("/v1/admin/save", headers={"Authorization": f"Bearer {ann}"}).status_code == 403
        assert c.post("/v1/admin/save", headers={"Authorization": f"Bearer {admin}"}).json()["saved"] is False
    eng.close()
