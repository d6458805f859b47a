"""Done criterion on a real left-atrium case: three slices drawn in the widget give the
same result as three ``annotate`` calls through the API (same engine config and seed),
Dice equal to 3 decimals. The default learner (planned from the data), 10 steps."""

from __future__ import annotations

import time

import numpy as np
import pytest
from qtpy.QtCore import Qt

from .conftest import dice, mark_extent, paint, wait_idle

STEPS = 10


@pytest.fixture(scope="module")
def la_case():
    from engine.io.dataset import la_folder

    try:
        return la_folder()["la_000"]
    except Exception as exc:  # noqa: BLE001 - the data lives beside the repository, not in it
        pytest.skip(f"shared LA data not available: {exc}")


def _config():
    import engine

    return engine.Config(device="cpu", steps=STEPS)


def _through_api(case, axis, extent, slices):
    import engine

    eng = engine.Engine(_config())
    try:
        s = eng.open(case.image, spacing=case.spacing, axis=axis)
        s.set_extent(*extent)
        for z in sorted(slices):
            s.annotate(z, np.take(case.label, z, axis=axis))
        s.propagate()
        s.learn(STEPS)
        return s.result()
    finally:
        eng.close()


@pytest.mark.la
def test_three_la_slices_match_the_api(dock, qtbot, la_case, artifacts):
    viewer, _, w = dock
    axis = 2  # the LA data's annotation axis: the view slices it
    image = viewer.add_image(la_case.image, name="la_000", scale=la_case.spacing, colormap="gray")
    viewer.dims.order = (axis, 0, 1)

    w.engine_config = _config()
    qtbot.mouseClick(w.connect_btn, Qt.LeftButton)
    wait_idle(qtbot, w)
    viewer.layers.selection.active = image
    qtbot.mouseClick(w.open_btn, Qt.LeftButton)
    wait_idle(qtbot, w)
    assert w.axis == axis and tuple(w.session.spacing) == tuple(la_case.spacing)

    first, last = mark_extent(qtbot, w, la_case.label, axis, 3)
    drawn = []
    for _ in range(3):
        qtbot.mouseClick(w.next_btn, Qt.LeftButton)
        z = w._here()
        paint(w.drawing_layer, axis, z, la_case.label[:, :, z])
        drawn.append(z)
    assert sorted(drawn) == sorted(w.proposals)
    w.steps_spin.setValue(STEPS)
    t0 = time.perf_counter()
    qtbot.mouseClick(w.send_btn, Qt.LeftButton)
    wait_idle(qtbot, w, timeout_s=300)
    t_widget = time.perf_counter() - t0
    got = np.asarray(w.result_layer.data)

    t0 = time.perf_counter()
    want = _through_api(la_case, axis, (first, last), drawn)
    t_api = time.perf_counter() - t0
    d_widget, d_api = dice(got, la_case.label), dice(want, la_case.label)
    differ = int((got.astype(bool) != want.astype(bool)).sum())
    print(
        f"LA la_000 slices {sorted(drawn)} of {first}-{last}: Dice widget {d_widget:.4f}, API {d_api:.4f}, "
        f"{differ} voxels differ; round {t_widget:.1f} s in the widget, {t_api:.1f} s through the API "
        f"(engine, open and round); widget stages {w.last_round.timings}"
    )
    assert round(d_widget, 3) == round(d_api, 3)
    assert d_widget > 0.75  # three slices: the proxy alone reaches ~0.84 on LA (README)
    w.go_to((sorted(drawn)[0] + sorted(drawn)[1]) // 2)  # a slice nobody drew
    qtbot.wait(200)
    viewer.screenshot(path=str(artifacts / "napari-dilseg-la.png"), canvas_only=False, flash=False)
