"""Done criterion on a real left-atrium case: the unchanged monailabel client drives
upload -> scribbles infer -> save label, gets back a NRRD with the image's geometry,
and its Dice is within 0.01 of the same drawn slices through engine.Session."""

from __future__ import annotations

import numpy as np
import pytest

import engine
from engine.io.dataset import la_folder
from engine.io.volumes import read_volume
from engine.server import KeyStore, create_app

from .conftest import live_server
from .test_monai import dice, replay_slicer

pytest.importorskip("monailabel.client")


@pytest.fixture(scope="module")
def la_case():
    try:
        return la_folder()["la_000"]
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"shared LA data not available: {exc}")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_monailabel_on_a_real_la_case(la_case, tmp_path):
    cfg = engine.Config(device="cpu", steps=10)
    image, label = la_case.image, la_case.label
    zs = np.nonzero(label.any((0, 1)))[0]
    drawn = [int(round(v)) for v in np.linspace(zs[0], zs[-1], 5)]
    empty = [max(0, int(zs[0]) - 2)]
    keys = KeyStore.load(tmp_path / "keys.json")
    key = keys.add("ann", "annotator")
    with live_server(create_app(tmp_path / "state", keys=keys, config=cfg)) as url:
        client, result, out, img_path = replay_slicer(
            url, key, tmp_path, image, label, la_case.spacing, drawn, empty, cfg.steps, image_id="la_000"
        )
        src = read_volume(img_path)
        assert result.shape == image.shape
        assert np.allclose(result.spacing, src.spacing) and np.allclose(result.origin, src.origin)
        assert np.allclose(result.direction, src.direction)
        final = tmp_path / "final.nrrd"
        from engine.io.volumes import write_volume

        write_volume(final, label, like=src)
        assert client.save_label("la_000", str(final), params={})["counters"]["cases"] == 1
    eng = engine.Engine(cfg)
    s = eng.open(src.array.astype(np.float32), spacing=src.spacing, axis=2)
    for z in sorted(drawn + empty):
        s.annotate(z, label[:, :, z] if z in drawn else np.zeros_like(label[:, :, z]))
    s.propagate()
    s.learn(cfg.steps)
    want = s.result()
    d_http, d_session = dice(result.array, label), dice(want, label)
    print(f"LA la_000: Dice through monailabel {d_http:.4f}, through Session {d_session:.4f}")
    assert d_http > 0.8 and abs(d_http - d_session) <= 0.01
    s.close()
    eng.close()
