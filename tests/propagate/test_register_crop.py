"""A session registers only the region around what was drawn (engine/api/proxycache.py,
engine.propagate.registration.crop_box): the same proxy at a fraction of the cost."""

import numpy as np
import torch

import engine
import engine.api.proxycache as proxycache
from engine.io.phantoms import phantom_in_volume
from engine.propagate import NativeParams
from engine.propagate.params import REGISTER_CROP_MM
from engine.propagate.registration import crop_box


def test_crop_box_grows_the_drawn_boxes_by_the_margin_in_mm_and_aligns_its_start():
    # 1.25 mm grid, three levels: starts are multiples of 4 pixels; 0.625 mm: of 8
    box = crop_box([(100, 120, 90, 110), (104, 130, 95, 105)], (400, 300), (2.0, 1.0, 1.0))
    assert box == (68 - 68 % 4, 131 + 32, 58 - 58 % 4, 111 + 32)
    fine = crop_box([(200, 240, 180, 220)], (800, 600), (2.0, 0.625, 0.625))
    m = int(np.ceil(REGISTER_CROP_MM / 0.625))
    assert fine[0] % 8 == 0 and fine[2] % 8 == 0
    assert fine[0] <= 200 - m and fine[1] == 241 + m and fine[2] <= 180 - m and fine[3] == 221 + m
    two_levels = crop_box([(50, 60, 50, 60)], (400, 400), None, params=NativeParams(iterations=(10, 5)))
    assert two_levels[0] % 2 == 0 and two_levels[0] >= 50 - 32 - 1


def test_crop_box_is_none_without_drawings_or_when_it_would_cover_most_of_the_plane():
    assert crop_box([], (200, 200), (1.0, 1.0, 1.0)) is None
    assert crop_box([(20, 80, 20, 80)], (100, 100), (1.0, 1.0, 1.0)) is None  # the whole plane
    assert crop_box([(40, 60, 40, 60)], (100, 100), (1.0, 1.0, 1.0), share=1.0) == (8, 93, 8, 93)


def _small_object_case():
    c = phantom_in_volume((9, 1), shape=(150, 150, 40), inner=(48, 48, 32), axis=2, spacing=1.0)
    image = np.ascontiguousarray(np.moveaxis(c.image, 2, 0))
    label = np.ascontiguousarray(np.moveaxis(c.label, 2, 0))
    zs = np.nonzero(label.any((1, 2)))[0]
    return image, label, (int(zs[0]), int(zs[-1]))


def _proxy(eng, image, label, extent, picks):
    s = eng.open(image, axis=0, spacing=(1.0, 1.0, 1.0))
    s.set_extent(*extent)
    for z in picks:
        s.annotate(z, label[z])
    q, c = s.propagate()
    return s, np.asarray(q), np.asarray(c)


def _dice(a, b):
    a, b = a >= 0.5, b.astype(bool)
    return 2.0 * (a & b).sum() / max(1, a.sum() + b.sum())


def test_session_proxy_from_a_crop_matches_whole_slices(monkeypatch):
    image, label, (lo, hi) = _small_object_case()
    picks = [lo, (lo + hi) // 2, hi]
    eng = engine.Engine(engine.Config(device="cpu"))
    s, q_crop, c_crop = _proxy(eng, image, label, (lo, hi), picks)
    reg = s._proxies.registration
    assert reg.box is not None
    r0, r1, c0, c1 = reg.box
    assert reg.fwd.shape[-2:] == (r1 - r0, c1 - c0)
    assert (r1 - r0) * (c1 - c0) < 0.5 * 150 * 150  # the object's region, not the plane
    assert not q_crop[:, :r0].any() and not q_crop[:, r1:].any()
    assert not q_crop[:, :, :c0].any() and not q_crop[:, :, c1:].any()
    monkeypatch.setattr(proxycache, "crop_box", lambda *a, **k: None)
    s2, q_whole, c_whole = _proxy(eng, image, label, (lo, hi), picks)
    assert s2._proxies.registration.box is None
    np.testing.assert_array_equal(c_crop, c_whole)  # confidence depends on the slices only
    agree = _dice(q_crop, q_whole >= 0.5)
    assert agree > 0.99, agree
    assert abs(_dice(q_crop, label) - _dice(q_whole, label)) < 0.01


def test_drawings_near_the_edge_of_the_registered_box_register_again():
    image, label, (lo, hi) = _small_object_case()
    eng = engine.Engine(engine.Config(device="cpu"))
    mid = (lo + hi) // 2
    s, _, _ = _proxy(eng, image, label, (lo, hi), [mid])
    first = s._proxies.registration
    s.annotate(mid + 1, label[mid + 1])  # next to the first: inside the box
    s.propagate()
    assert s._proxies.registration is first
    far = np.zeros_like(label[lo])
    r1, c1 = first.box[1], first.box[3]
    far[r1 - 4 : r1, c1 - 4 : c1] = 1  # within half a margin of the box's corner
    s.annotate(lo, far)
    q, _ = s.propagate()
    again = s._proxies.registration
    assert again is not first
    grown = (r1 - 4 - 16, min(150, r1 + 16), c1 - 4 - 16, min(150, c1 + 16))
    assert again.contains(grown)  # the new box has room around the new drawing
    assert np.asarray(q)[lo, r1 - 4 : r1, c1 - 4 : c1].all()  # the drawn slice is in the proxy


def test_box_cache_survives_undo_and_redraw():
    """The box cache keys masks by id and holds them: a mask drawn after an undo never
    inherits the box of the one it replaced."""
    image, label, (lo, hi) = _small_object_case()
    eng = engine.Engine(engine.Config(device="cpu"))
    s = eng.open(image, axis=0, spacing=(1.0, 1.0, 1.0))
    s.set_extent(lo, hi)
    a = np.zeros_like(label[lo])
    a[10:14, 10:14] = 1
    s.annotate(lo, a)
    s.propagate()
    s.undo()
    b = np.zeros_like(label[lo])
    b[120:130, 120:130] = 1
    for _ in range(20):  # allocations that could reuse the freed mask's address
        s.annotate(lo, b)
        q, _ = s.propagate()
        assert np.asarray(q)[lo, 120:130, 120:130].all()
        s.undo()


def test_cropped_registration_is_reused_across_rounds():
    image, label, (lo, hi) = _small_object_case()
    eng = engine.Engine(engine.Config(device="cpu"))
    s, _, _ = _proxy(eng, image, label, (lo, hi), [lo, (lo + hi) // 2, hi])
    reg = s._proxies.registration
    for z in (lo + 3, hi - 3):
        s.annotate(z, label[z])
    q, _ = s.propagate()
    assert s._proxies.registration is reg
    assert _dice(np.asarray(q), label) > 0.8


def test_window_of_a_box_is_the_box_of_the_window():
    from engine.propagate import window_to_unit

    g = torch.Generator().manual_seed(5)
    vol = torch.randn(9, 37, 41, generator=g) * 100 + 20
    box = (5, 30, 3, 22)
    whole = window_to_unit(vol, (2, 6))
    part = window_to_unit(vol, (2, 6), box=box)
    assert part.is_contiguous()
    torch.testing.assert_close(part, whole[:, 5:30, 3:22], rtol=0, atol=0)
