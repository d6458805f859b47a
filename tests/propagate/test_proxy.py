"""ProxyBuilder: registration cache, propagation, fusion, extent, axes and typed errors."""

import numpy as np
import pytest
import torch

from engine.errors import InputError, MaskError, NonFiniteError, ShapeError, SliceIndexError
from engine.propagate import NativeParams, ProxyBuilder, build_proxy, window_to_unit

from ._util import dice, disc, moving_disc_volume, smooth_texture

FAST = NativeParams(iterations=(20, 15, 10))


def test_identity_volume_copies_masks():
    D, H, W = 9, 32, 28
    img = np.broadcast_to(smooth_texture(H, W, seed=2), (D, H, W)).copy()
    lab = np.zeros((D, H, W), np.uint8)
    lab[1] = disc(H, W, 15, 13, 6)
    lab[7] = disc(H, W, 15, 13, 6)
    for fusion in ("linear", "nearest"):
        res = ProxyBuilder(img, axis=0, params=FAST).propagate(lab, fusion=fusion)
        q = res.proxy.numpy()
        for z in range(1, 8):
            np.testing.assert_allclose(q[z], lab[1], atol=1e-4)
        # no extent: chains run on to the volume's ends
        np.testing.assert_allclose(q[0], lab[1], atol=1e-4)
        np.testing.assert_allclose(q[8], lab[1], atol=1e-4)
    conf = res.confidence.numpy()
    np.testing.assert_allclose(conf[:, 0, 0], [0.5, 1, 0.5, 1 / 3, 0.25, 1 / 3, 0.5, 1, 0.5])


def test_moving_object_high_dice_and_beats_copy():
    img, lab = moving_disc_volume()
    ann = [0, 5, 11]
    drawn = np.zeros_like(lab)
    drawn[ann] = lab[ann]
    res = ProxyBuilder(img, axis=0).propagate(drawn)
    assert dice(res.proxy.numpy(), lab) > 0.95
    from engine.propagate.baselines import nearest_slice_copy

    assert dice(res.proxy.numpy(), lab) > dice(nearest_slice_copy(drawn, ann), lab) + 0.02


def test_phantom_proxy_dice():
    from engine.io.phantoms import phantom_case

    case = phantom_case(7, shape=(32, 56, 48))
    zs = np.nonzero(case.label.reshape(32, -1).any(1))[0]
    lo, hi = int(zs[0]), int(zs[-1])
    ann = sorted({int(round(lo + i * (hi - lo) / 4)) for i in range(5)})
    drawn = np.zeros_like(case.label)
    drawn[ann] = case.label[ann]
    pb = ProxyBuilder(case.image, axis=0, extent=(lo, hi))
    lin = pb.propagate(drawn, ann)
    near = pb.propagate(drawn, ann, fusion="nearest")
    assert dice(lin.proxy.numpy(), case.label) > 0.9
    assert dice(near.proxy.numpy(), case.label) > 0.88


def test_registration_is_cached_and_only_propagation_reruns():
    img, lab = moving_disc_volume(D=8)
    pb = ProxyBuilder(img, params=FAST)
    assert not pb.registered
    first = pb.propagate(lab, [0, 7])
    reg = pb.registration
    assert first.seconds["register"] > 0
    second = pb.propagate(lab, [0, 3, 7], fusion="nearest")
    assert pb.registration is reg
    assert second.seconds["register"] == 0.0 and second.seconds["normalize"] == 0.0
    assert second.annotated == (0, 3, 7)
    assert set(first.seconds) == {"normalize", "register", "propagate", "total"}
    assert reg.fwd.shape == (7, 2, 48, 40) and reg.bwd.shape == (7, 2, 48, 40)


def test_axis_handling_matches_axis_first():
    img, lab = moving_disc_volume(D=8)
    ann = [0, 4, 7]
    drawn = np.zeros_like(lab)
    drawn[ann] = lab[ann]
    ref = build_proxy(img, drawn, ann, axis=0, params=FAST)
    moved = build_proxy(np.moveaxis(img, 0, 2), np.moveaxis(drawn, 0, 2), ann, axis=2, params=FAST)
    assert moved.proxy.shape == (48, 40, 8)
    torch.testing.assert_close(moved.proxy.movedim(2, 0), ref.proxy, atol=1e-5, rtol=0)
    torch.testing.assert_close(moved.confidence.movedim(2, 0), ref.confidence)
    neg = build_proxy(np.moveaxis(img, 0, 2), np.moveaxis(drawn, 0, 2), ann, axis=-1, params=FAST)
    torch.testing.assert_close(neg.proxy, moved.proxy)


def test_extent_background_and_confidence():
    img, lab = moving_disc_volume(D=12)
    drawn = np.zeros_like(lab)
    drawn[[3, 8]] = lab[[3, 8]]
    pb = ProxyBuilder(img, extent=(3, 8), params=FAST)
    res = pb.propagate(drawn)
    q, c = res.proxy.numpy(), res.confidence.numpy()
    assert q[:3].max() == 0 and q[9:].max() == 0
    assert (c[:3] == 1).all() and (c[9:] == 1).all()
    np.testing.assert_allclose(c[3:9, 0, 0], [1, 0.5, 1 / 3, 1 / 3, 0.5, 1])
    assert (q >= 0).all() and (q <= 1).all()
    no_ext = pb.propagate(drawn, extent=None)
    assert no_ext.proxy[:3].max() > 0.5
    # a drawn empty slice is declared through annotated=
    emp = pb.propagate(drawn, [3, 5, 8], extent=None)
    assert emp.proxy[5].max() == 0 and emp.confidence[5].min() == 1


def test_mapping_input_and_soft_outputs():
    img, lab = moving_disc_volume(D=6)
    res = ProxyBuilder(img, params=FAST).propagate({0: lab[0], 5: lab[5].astype(bool)})
    assert res.annotated == (0, 5)
    np.testing.assert_array_equal(res.proxy.numpy()[[0, 5]], lab[[0, 5]].astype(np.float32))
    assert res.proxy.dtype == torch.float32 and res.confidence.dtype == torch.float32
    p, c = res.numpy()
    assert isinstance(p, np.ndarray) and p.shape == lab.shape


def test_window_to_unit():
    x = torch.arange(1000, dtype=torch.float32).reshape(10, 10, 10)
    n = window_to_unit(x)
    assert float(n.min()) == 0.0 and float(n.max()) == 1.0
    assert float(n.reshape(-1)[500]) == pytest.approx(0.5, abs=0.01)
    sub = window_to_unit(x, extent=(2, 3))  # percentiles over slices 2..3 only
    assert float(sub[:2].max()) == 0.0 and float(sub[4:].min()) == 1.0
    assert float(window_to_unit(torch.ones(3, 4, 4)).abs().max()) == 0.0


def test_typed_errors():
    img, lab = moving_disc_volume(D=6)
    with pytest.raises(ShapeError):
        ProxyBuilder(img[0])
    with pytest.raises(NonFiniteError):
        bad = img.copy()
        bad[1, 2, 3] = np.nan
        ProxyBuilder(bad)
    with pytest.raises(InputError):
        ProxyBuilder(img, axis=3)
    with pytest.raises(InputError):
        ProxyBuilder(img, backend="ants")
    with pytest.raises(InputError):
        ProxyBuilder(img, params="fast")
    with pytest.raises(SliceIndexError):
        ProxyBuilder(img, extent=(2, 9))
    pb = ProxyBuilder(img, params=FAST)
    with pytest.raises(ShapeError):
        pb.propagate(lab[:, :-1])
    with pytest.raises(MaskError):
        pb.propagate(lab * 2)
    with pytest.raises(MaskError):
        pb.propagate(np.zeros_like(lab))
    with pytest.raises(SliceIndexError):
        pb.propagate(lab, [0, 6])
    with pytest.raises(SliceIndexError):
        pb.propagate({-1: lab[0]})
    with pytest.raises(ShapeError):
        pb.propagate({0: lab[0, :-1]})
    with pytest.raises(InputError):
        pb.propagate(lab, fusion="max")
    with pytest.raises(SliceIndexError):  # drawn foreground outside the extent
        pb.propagate(lab, [0, 5], extent=(1, 4))
    assert not pb.registered  # every failure happened before registering


@pytest.mark.gpu
def test_cuda_proxy_matches_cpu():
    img, lab = moving_disc_volume(D=10)
    ann = [0, 5, 9]
    cpu = build_proxy(img, lab, ann)
    gpu = build_proxy(img, lab, ann, device="cuda")
    assert gpu.proxy.is_cuda
    assert dice(gpu.proxy.cpu().numpy(), cpu.proxy.numpy()) > 0.995
