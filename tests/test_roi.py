"""The region of interest a session predicts and learns in (engine/api/roi.py)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import engine
import engine.learn
from engine.api.roi import ROI_MARGIN_MM, ModelView


def _view(shape=(60, 100, 90), spacing=(2.0, 1.0, 1.0), patch=(8, 16, 16)):
    lc = engine.learn.LearnConfig(patch=patch, target_spacing=(2.0, 1.0, 1.0))
    eng = SimpleNamespace(plan=SimpleNamespace(learn=lc))
    return ModelView(eng, torch.rand(shape), spacing)


def test_margins_are_millimetres_or_half_a_patch():
    v = _view()
    assert v.margins() == [8, 16, 16]  # 16 mm at 2 / 1 / 1 mm
    big = _view(patch=(8, 48, 48))
    assert big.margins() == [8, 24, 24]  # half of a 48-voxel patch at 1 mm beats 16 mm
    assert ROI_MARGIN_MM == 16.0


@pytest.mark.parametrize(
    "predicted, rows, cols",
    [
        (None, (24, 67), (19, 63)),  # the drawn box grown by 16 voxels
        ((90, 99, 80, 89), (24, 67), (19, 63)),  # far from the drawings: ignored
        ((0, 99, 0, 89), (8, 83), (3, 79)),  # everywhere: clipped to one margin, then grown
        ((36, 55, 30, 50), (20, 72), (14, 67)),  # a little wider than drawn: followed
    ],
)
def test_the_prediction_widens_the_region_only_near_the_drawings(predicted, rows, cols):
    v = _view()
    z, y, x = v.region((20, 30), [(40, 50, 35, 45), (42, 48, 37, 46)], predicted)
    assert (z.start, z.stop) == (12, 39)
    assert (y.start, y.stop) == rows
    assert (x.start, x.stop) == cols


def test_no_drawings_no_extent_is_the_whole_volume():
    v = _view()
    assert v.region(None, []) == (slice(0, 60), slice(0, 100), slice(0, 90))


def test_session_result_is_background_outside_its_region_and_covers_the_drawings():
    learn = engine.learn.LearnConfig(
        patch=(8, 16, 16), base_width=4, depth=2, batch_size=2, precision="fp32", channels_last=False
    )
    eng = engine.Engine(engine.Config(device="cpu", learn=learn, steps=2, replay_capacity=8, replay_patches_per_case=2))
    g = np.random.default_rng(3)
    shape = (24, 100, 100)
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    label = (((zz - 12) / 6.0) ** 2 + ((yy - 30) / 8.0) ** 2 + ((xx - 34) / 8.0) ** 2 < 1).astype(np.uint8)
    # the same bright blob far away: a model may fire there; the session must not follow it
    decoy = ((zz - 12) / 6.0) ** 2 + ((yy - 86) / 6.0) ** 2 + ((xx - 86) / 6.0) ** 2 < 1
    image = (2.0 * (label | decoy) + g.normal(0, 0.3, shape)).astype(np.float32)
    zs = np.nonzero(label.any((1, 2)))[0]
    for _ in range(2):  # the second case sees a trained model
        s = eng.open(image, spacing=(1, 1, 1), axis=0)
        s.set_extent(int(zs[0]), int(zs[-1]))
        for z in (int(zs[1]), 12, int(zs[-2])):
            s.annotate(z, label[z])
        s.propagate()
        s.learn(3)
        f = s.result(soft=True)
        (z0, z1), (y0, y1), (x0, x1) = s.region
        keep = np.zeros(shape, bool)
        keep[z0:z1, y0:y1, x0:x1] = True
        assert np.all(f[~keep] == 0.0)
        ys, xs = np.nonzero(label.any(0))
        assert y0 <= ys.min() and ys.max() < y1 and x0 <= xs.min() and xs.max() < x1
        assert not keep[12, 86, 86]  # the decoy lies outside the region
        s.commit()
    eng.close()


def test_learning_reuses_the_last_prediction_and_its_crop_follows_new_drawings(monkeypatch):
    """Round 2's learning takes its steering residual from round 1's prediction (no
    sliding window before the steps), and its crop grows to a drawing that reaches
    past round 1's region; the prediction after it covers the drawing too."""
    learn = engine.learn.LearnConfig(
        patch=(8, 16, 16), base_width=4, depth=2, batch_size=2, precision="fp32", channels_last=False
    )
    eng = engine.Engine(engine.Config(device="cpu", learn=learn, steps=2, replay_capacity=8, replay_patches_per_case=2))
    shape = (24, 100, 100)
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    # an object whose lower slices lie far to the right of its upper ones
    centre = 20 + 4.0 * zz
    label = ((((yy - 40) / 9.0) ** 2 + ((xx - centre) / 9.0) ** 2 < 1) & (zz >= 3) & (zz <= 20)).astype(np.uint8)
    image = (2.0 * label + np.random.default_rng(5).normal(0, 0.3, shape)).astype(np.float32)
    s = eng.open(image, spacing=(1, 1, 1), axis=0)
    s.set_extent(3, 20)
    for z in (4, 6):
        s.annotate(z, label[z])
    s.propagate()
    s.learn(2)
    s.result()
    (_, _), (_, _), (_, x1) = s.region
    assert x1 < 80  # round 1's region stays near the first drawings
    calls = []
    real = s._view.predict
    monkeypatch.setattr(s._view, "predict", lambda *a, **k: calls.append(a) or real(*a, **k))
    crops = []
    real_training = s._view.training
    monkeypatch.setattr(s._view, "training", lambda *v: crops.append(s._view.train_box) or real_training(*v))
    s.annotate(19, label[19])
    s.propagate()
    s.learn(2)
    assert calls == []  # no sliding window before learning
    assert crops and crops[0][2].stop >= 96  # learning's crop reaches the new drawing (x up to ~95)
    s.result()
    assert len(calls) == 1 and s.region[2][1] >= 96
    eng.close()


@pytest.mark.parametrize("smoothing", ["none", "self"])
def test_round_one_runs_no_sliding_window_only_to_steer(monkeypatch, smoothing):
    """A case nobody asked a prediction of learns round 1 unsteered (no sliding window
    before the steps, residual None) in the drawings' region; the paper's
    self-smoothing needs P0 and still predicts; a prediction asked before drawing steers."""
    learn = engine.learn.LearnConfig(
        patch=(8, 16, 16), base_width=4, depth=2, batch_size=2, precision="fp32", channels_last=False
    )
    cfg = engine.Config(
        device="cpu", learn=learn, steps=2, replay_capacity=8, replay_patches_per_case=2, smoothing=smoothing
    )
    eng = engine.Engine(cfg)
    shape = (24, 100, 100)
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    label = (((zz - 12) / 7.0) ** 2 + ((yy - 30) / 8.0) ** 2 + ((xx - 34) / 8.0) ** 2 < 1).astype(np.uint8)
    image = (2.0 * label + np.random.default_rng(7).normal(0, 0.3, shape)).astype(np.float32)
    seen = []

    def case(ask_first: bool):
        s = eng.open(image, spacing=(1, 1, 1), axis=0)
        s.set_extent(6, 18)
        if ask_first:
            s.predict()
        calls = []
        real = s._view.predict
        monkeypatch.setattr(s._view, "predict", lambda *a, **k: calls.append(a) or real(*a, **k))
        for z in (7, 12, 17):
            s.annotate(z, label[z])
        s.propagate()
        s.learn(2)
        box = s._view.train_box
        s.commit()
        return calls, box

    case(False)  # plans the engine and trains it
    assert eng.planned
    real_train = eng.trainer.train_case
    monkeypatch.setattr(
        eng.trainer, "train_case", lambda *a, **k: seen.append(k.get("residual")) or real_train(*a, **k)
    )
    calls, box = case(False)
    if smoothing == "none":
        assert calls == [] and seen[-1] is None
        assert box[1].stop - box[1].start < 100 and box[2].stop - box[2].start < 100  # the drawings' region
    else:
        assert len(calls) == 1 and seen[-1] is not None
    calls, _ = case(True)
    assert calls == [] and seen[-1] is not None  # the prediction asked before drawing steers
    eng.close()
