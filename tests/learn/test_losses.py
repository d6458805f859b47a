"""Training targets (extent, confidence, smoothing) and the weighted loss, by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.errors import DTypeError, InputError, NonFiniteError, ShapeError
from engine.learn import build_targets, extent_mask, weighted_bce_dice


def _case():
    q = torch.zeros(4, 2, 2)
    q[1:3] = 1.0
    q[1, 0, 0] = 0.5
    c = torch.full((4, 2, 2), 0.5)
    c[1] = 1.0
    p0 = torch.full((4, 2, 2), 0.8)
    return q, c, p0


def test_extent_mask_along_each_axis():
    m = extent_mask((4, 3, 5), (1, 2), axis=0)
    assert m[:, 0, 0].tolist() == [False, True, True, False]
    m = extent_mask((4, 3, 5), (2, 4), axis=2)
    assert m[0, 0].tolist() == [False, False, True, True, True]
    assert bool(extent_mask((2, 2, 2), None, axis=1).all())


def test_targets_plain_q_with_confidence_and_background_outside():
    q, c, _ = _case()
    t, w = build_targets(q, c, extent=(1, 2), axis=0)
    # inside the extent: T = Q, W = C
    torch.testing.assert_close(t[1:3], q[1:3])
    torch.testing.assert_close(w[1:3], c[1:3])
    # outside: known background with confidence 1
    assert bool((t[[0, 3]] == 0).all()) and bool((w[[0, 3]] == 1).all())


def test_targets_self_smoothing_only_inside_extent():
    q, c, p0 = _case()
    t, w = build_targets(q, c, extent=(1, 2), axis=0, p0=p0, smoothing="self")
    # slice 1 has C = 1: T = Q; voxel (1,0,0): 1*0.5 + 0*0.8 = 0.5
    assert float(t[1, 0, 0]) == 0.5 and float(t[1, 1, 1]) == 1.0
    # slice 2 has C = 0.5, Q = 1: T = 0.5*1 + 0.5*0.8 = 0.9
    torch.testing.assert_close(t[2], torch.full((2, 2), 0.9))
    # outside: P0 = 0.8 must NOT leak in
    assert bool((t[0] == 0).all()) and bool((t[3] == 0).all())
    torch.testing.assert_close(w[2], torch.full((2, 2), 0.5))
    _, w1 = build_targets(q, c, (1, 2), 0, p0, "self", weight_mode="ones")
    assert bool((w1 == 1).all())


def test_targets_eps_smoothing_only_inside_extent():
    q, c, _ = _case()
    t, _ = build_targets(q, c, extent=(1, 2), axis=0, eps=0.1)
    torch.testing.assert_close(t[2], torch.full((2, 2), 0.95))  # 1*(0.9)+0.05
    assert float(t[1, 0, 0]) == pytest.approx(0.5)  # 0.5*0.9+0.05
    assert bool((t[0] == 0).all())


def test_targets_accept_numpy_and_axis_2():
    q = np.zeros((2, 2, 5), dtype=np.float32)
    q[..., 2] = 1
    t, w = build_targets(q, np.ones_like(q), extent=(1, 3), axis=2)
    assert t.shape == (2, 2, 5) and float(t[0, 0, 2]) == 1.0 and float(w[0, 0, 0]) == 1.0


@pytest.mark.parametrize(
    "kwargs, err",
    [
        (dict(extent=(3, 1)), InputError),
        (dict(extent=(0, 9)), InputError),
        (dict(extent=(0,)), InputError),
        (dict(axis=3), InputError),
        (dict(smoothing="self"), InputError),  # needs p0
        (dict(smoothing="paper"), InputError),
        (dict(eps=1.5), InputError),
    ],
)
def test_targets_invalid_arguments(kwargs, err):
    q, c, _ = _case()
    args = dict(extent=(1, 2), axis=0)
    args.update(kwargs)
    with pytest.raises(err):
        build_targets(q, c, **args)


def test_targets_invalid_volumes():
    q, c, p0 = _case()
    with pytest.raises(ShapeError):
        build_targets(q, c[:2], extent=None)
    with pytest.raises(InputError):
        build_targets(q * 2, c, extent=None)
    with pytest.raises(NonFiniteError):
        build_targets(q, c.masked_fill(c > 0.9, float("nan")), extent=None)
    with pytest.raises(DTypeError):
        build_targets(np.zeros((2, 2, 2), dtype=object), np.zeros((2, 2, 2)), extent=None)
    with pytest.raises(ShapeError):
        build_targets(q[0], c[0], extent=None)


def _bce(x, t):
    p = 1 / (1 + math.exp(-x))
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


def test_weighted_bce_dice_hand_computed():
    logits = torch.tensor([0.0, 2.0, -1.0, 1.0]).view(1, 1, 1, 2, 2)
    target = torch.tensor([1.0, 1.0, 0.0, 0.5]).view_as(logits)
    weight = torch.tensor([1.0, 0.5, 2.0, 0.0]).view_as(logits)
    xs, ts, ws = [0.0, 2.0, -1.0, 1.0], [1.0, 1.0, 0.0, 0.5], [1.0, 0.5, 2.0, 0.0]
    bce = sum(w * _bce(x, t) for x, t, w in zip(xs, ts, ws)) / sum(ws)
    ps = [1 / (1 + math.exp(-x)) for x in xs]
    inter = sum(w * p * t for p, t, w in zip(ps, ts, ws))
    den = sum(w * p for p, w in zip(ps, ws)) + sum(w * t for t, w in zip(ts, ws))
    dice = 1 - (2 * inter + 1.0) / (den + 1.0)
    got = weighted_bce_dice(logits, target, weight)
    assert got.dtype == torch.float32 and got.dim() == 0
    assert float(got) == pytest.approx(bce + dice, rel=1e-6)
    only_bce = weighted_bce_dice(logits, target, weight, dice_weight=0.0)
    assert float(only_bce) == pytest.approx(bce, rel=1e-6)
    only_dice = weighted_bce_dice(logits, target, weight, bce_weight=0.0, smooth=1.0)
    assert float(only_dice) == pytest.approx(dice, rel=1e-6)


def test_weighted_loss_ignores_zero_weight_voxels_and_bf16_input():
    logits = torch.randn(2, 1, 3, 3, 3)
    target = (torch.rand_like(logits) > 0.5).float()
    weight = torch.ones_like(logits)
    weight[1] = 0
    a = weighted_bce_dice(logits, target, weight)
    b = weighted_bce_dice(logits[:1], target[:1], weight[:1])
    torch.testing.assert_close(a, b)
    c = weighted_bce_dice(logits.bfloat16(), target, weight)
    assert c.dtype == torch.float32
    with pytest.raises(ShapeError):
        weighted_bce_dice(logits, target[:1], weight)
