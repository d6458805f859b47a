"""The MONAI Label subset driven by the unchanged ``monailabel`` 0.8.5 client,
replaying the calls the 3D Slicer plugin makes: auth, info, upload, scribbles
infer, save label, next sample, sessions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import engine
from engine.io.volumes import read_volume, write_volume
from engine.server import KeyStore, Limits, create_app

from .conftest import live_server, tiny_case, tiny_config

monailabel_client = pytest.importorskip("monailabel.client")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the client imports cgi

DIRECTION = np.array([[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]])  # RAS-like, as Slicer writes
# what Slicer's ExportSegmentsToLabelmapNode numbers them: segment index + 1
LABEL_INFO = [
    {"name": "foreground", "id": 1},
    {"name": "background_scribbles", "id": 2},
    {"name": "foreground_scribbles", "id": 3},
]


def dice(a, b):
    a, b = a > 0, b > 0
    return 2.0 * (a & b).sum() / max(1, a.sum() + b.sum())


def scribbles(label: np.ndarray, drawn, empty, axis=2) -> np.ndarray:
    """A scribbles label volume: foreground_scribbles (3) fills the object on the drawn
    slices, background_scribbles (2) marks declared-empty slices and the background of
    drawn ones (as a person paints both)."""
    out = np.zeros(label.shape, np.uint8)
    for z in drawn:
        sl = [slice(None)] * 3
        sl[axis] = z
        out[tuple(sl)] = np.where(label[tuple(sl)] > 0, 3, 0)
        # a few background strokes on the drawn slice, away from the object
        bg = np.zeros_like(label[tuple(sl)])
        bg[:2, :] = 1
        out[tuple(sl)] = np.where((bg > 0) & (label[tuple(sl)] == 0), 2, out[tuple(sl)])
    for z in empty:
        sl = [slice(None)] * 3
        sl[axis] = z
        out[tuple(sl)][:3, :3] = 2
    return out


def replay_slicer(
    url: str,
    key: str,
    tmp: Path,
    image: np.ndarray,
    label: np.ndarray,
    spacing,
    drawn,
    empty,
    steps: int,
    image_id: str = "case_0",
):
    """The Slicer plugin's calls for one case; returns (result volume, infer params)."""
    from monailabel.client import MONAILabelClient

    first = MONAILabelClient(url, tmpdir=str(tmp), client_id="user-xyz")
    assert first.auth_enabled()
    token = first.auth_token("ann", key)
    client = Fresh(url, str(tmp), token)
    assert client.auth_valid_token()
    info = client.info()
    assert "config" not in info  # the plugin refuses servers that send it
    types = {k: v["type"] for k, v in info["models"].items()}
    assert types == {"dilseg": "scribbles", "dilseg_predict": "segmentation"}
    img_path = tmp / f"{image_id}.nrrd"
    write_volume(img_path, image, spacing=spacing, origin=(12.5, -3.0, 40.0), direction=DIRECTION)
    assert client.upload_image(str(img_path), image_id)["image"] == image_id
    assert image_id in client.datastore()["objects"]
    scr_path = tmp / "scribbles.nrrd"
    write_volume(
        scr_path, scribbles(label, drawn, empty), spacing=spacing, origin=(12.5, -3.0, 40.0), direction=DIRECTION
    )
    params = {
        "label_info": LABEL_INFO,
        "selected_label_name": "foreground",
        "roi": [],
        "steps": steps,
        "result_extension": ".nrrd",
        "result_dtype": "uint8",
    }
    result_file, out_params = client.infer("dilseg", image_id, params, label_in=str(scr_path))
    assert result_file and result_file.endswith(".nrrd")
    result = read_volume(result_file)
    return client, result, out_params, img_path


class Fresh:
    """A new MONAILabelClient for every call, as the Slicer plugin's logic makes one per
    call (the client mutates its own headers during multipart calls)."""

    def __init__(self, url, tmpdir, token):
        self.url, self.tmpdir, self.token = url, tmpdir, token

    def __getattr__(self, name):
        from monailabel.client import MONAILabelClient

        c = MONAILabelClient(self.url, tmpdir=self.tmpdir, client_id="user-xyz")
        if self.token:
            c.update_auth(self.token)
        return getattr(c, name)


@pytest.fixture
def keyed(tmp_path):
    keys = KeyStore.load(tmp_path / "keys.json")
    return keys, keys.add("ann", "annotator")


def test_monailabel_client_drives_the_loop(tmp_path, keyed):
    keys, key = keyed
    image, label = tiny_case(0, shape=(20, 18, 12))  # annotation axis 2 (12 slices), as Slicer's z
    spacing = (0.8, 0.9, 2.0)
    drawn, empty = [3, 6, 8], [0]
    app = create_app(tmp_path / "state", keys=keys, config=tiny_config(), limits=Limits(max_sessions=4))
    with live_server(app) as url:
        client, result, out, img_path = replay_slicer(url, key, tmp_path, image, label, spacing, drawn, empty, 2)
        src = read_volume(img_path)
        assert result.shape == image.shape and result.array.dtype == np.uint8
        assert np.allclose(result.spacing, src.spacing) and np.allclose(result.origin, src.origin)
        assert np.allclose(result.direction, src.direction)
        assert out["drawn"] == sorted(drawn + empty) and out["label_names"] == {"foreground": 1}
        # the same drawn slices through engine.Session give the same mask
        eng = engine.Engine(tiny_config())
        s = eng.open(src.array.astype(np.float32), spacing=src.spacing, axis=2)
        for z in sorted(drawn + empty):
            s.annotate(z, label[:, :, z] if z in drawn else np.zeros_like(label[:, :, z]))
        s.propagate()
        s.learn(2)
        want = s.result()
        assert abs(dice(result.array, label) - dice(want, label)) <= 0.01
        s.close()
        eng.close()
        # a second upload is the next sample until case_0 has its final label
        second = tmp_path / "case_1.nrrd"
        write_volume(second, image, spacing=spacing)
        client.upload_image(str(second), "case_1")
        assert client.next_sample("first", {})["id"] == "case_0"
        final = tmp_path / "final.nrrd"
        write_volume(final, label, spacing=spacing, origin=(12.5, -3.0, 40.0), direction=DIRECTION)
        saved = client.save_label("case_0", str(final), params={"label_info": [{"name": "foreground", "idx": 1}]})
        assert saved["counters"]["cases"] == 1
        assert client.next_sample("first", {})["id"] == "case_1"
        back = read_volume(client.download_label("case_0", "final"))
        assert np.array_equal(back.array, label)
        # the segmentation model: the back end alone
        res, _ = client.infer("dilseg_predict", "case_1", {"result_extension": ".nrrd"})
        assert read_volume(res).shape == image.shape
        # MONAI Label sessions: an image kept under an id, inferred on
        sess = client.create_session(str(second))["session_id"]
        assert client.get_session(sess)["session_id"] == sess
        res, _ = client.infer(
            "dilseg",
            "",
            {"label_info": LABEL_INFO, "steps": 1},
            label_in=str(tmp_path / "scribbles.nrrd"),
            session_id=sess,
        )
        assert read_volume(res).shape == image.shape
        client.remove_session(sess)
        from monailabel.client.client import MONAILabelClientException

        with pytest.raises(MONAILabelClientException):
            client.get_session(sess)
        # without a key: 401 for everything but the auth routes
        bare = Fresh(url, str(tmp_path), None)
        with pytest.raises(MONAILabelClientException) as info:
            bare.info()
        assert "401" in info.value.msg
    # the final label's commit was saved in the state folder
    assert engine.server.StateDir(tmp_path / "state").load().counters["cases"] == 1
