"""Patch sampling statistics, padding, flips, and the absence of host reads."""

from __future__ import annotations

import pytest
import torch

from engine.errors import InputError, ShapeError
from engine.learn import PatchSampler, extract_patches, random_flip


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_residual_draw_probabilities():
    shape = (20, 20, 20)
    residual = torch.zeros(shape)
    residual[:10] = 1.0  # half the volume carries all the residual
    s = PatchSampler(
        torch.randn(shape),
        torch.zeros(shape),
        torch.ones(shape),
        (1, 1, 1),
        residual=residual,
        fg_fraction=0.0,
        floor=0.2,
        generator=_gen(),
    )
    starts = s.sample_starts(20000)
    frac = float((starts[:, 0] < 10).float().mean())
    # (1 - floor) * 1 + floor * 1/2 = 0.9
    assert frac == pytest.approx(0.9, abs=0.01)


def test_residual_proportional_within_region():
    shape = (10, 10, 10)
    residual = torch.zeros(shape)
    residual[0, 0, 0] = 3.0
    residual[9, 9, 9] = 1.0
    s = PatchSampler(
        torch.randn(shape),
        torch.zeros(shape),
        torch.ones(shape),
        (1, 1, 1),
        residual=residual,
        fg_fraction=0.0,
        floor=0.01,
        generator=_gen(1),
    )
    starts = s.sample_starts(20000)
    a = float((starts == 0).all(dim=1).float().mean())
    b = float((starts == 9).all(dim=1).float().mean())
    assert a == pytest.approx(0.99 * 0.75, abs=0.015)
    assert b == pytest.approx(0.99 * 0.25, abs=0.015)


def test_foreground_balance():
    shape = (20, 20, 20)
    target = torch.zeros(shape)
    target[4:6, 4:6, 4:6] = 1.0
    s = PatchSampler(torch.randn(shape), target, torch.ones(shape), (1, 1, 1), fg_fraction=0.3, generator=_gen(2))
    assert s.has_foreground
    starts = s.sample_starts(20000)
    on_fg = target[starts[:, 0], starts[:, 1], starts[:, 2]]
    expected = 0.3 + 0.7 * 8 / 8000
    assert float(on_fg.mean()) == pytest.approx(expected, abs=0.012)


def test_no_foreground_falls_back_to_residual_draws():
    shape = (8, 8, 8)
    s = PatchSampler(torch.randn(shape), torch.zeros(shape), torch.ones(shape), (4, 4, 4), fg_fraction=1.0)
    assert not s.has_foreground
    img, tgt, wgt = s.sample(5)
    assert img.shape == (5, 1, 4, 4, 4) and float(tgt.sum()) == 0


def test_patches_match_slicing_and_stay_inside():
    g = _gen(3)
    image = torch.randn(12, 14, 16, generator=g)
    s = PatchSampler(image, torch.rand(12, 14, 16), torch.rand(12, 14, 16), (4, 6, 8), generator=_gen(4))
    starts = s.sample_starts(50)
    assert bool((starts >= 0).all()) and bool((starts <= torch.tensor([8, 8, 8])).all())
    (patches,) = extract_patches([image], starts, (4, 6, 8))
    for k in range(50):
        a, b, c = starts[k].tolist()
        assert torch.equal(patches[k], image[a : a + 4, b : b + 6, c : c + 8])


def test_volume_smaller_than_patch_is_padded():
    image = torch.randn(5, 6, 7)
    s = PatchSampler(image, torch.ones(5, 6, 7), torch.ones(5, 6, 7), (8, 8, 8), generator=_gen())
    img, tgt, wgt = s.sample(3)
    assert img.shape == tgt.shape == wgt.shape == (3, 1, 8, 8, 8)
    assert float(wgt.sum()) == 3 * 5 * 6 * 7  # padding has weight 0
    assert float(img.min()) == float(image.min())
    od, oh, ow = s.offset
    assert torch.equal(img[0, 0, od : od + 5, oh : oh + 6, ow : ow + 7], image)


def test_sampling_is_reproducible_with_seed():
    shape = (10, 12, 14)
    args = (torch.randn(shape), (torch.rand(shape) > 0.7).float(), torch.ones(shape), (4, 4, 4))
    a = PatchSampler(*args, generator=_gen(5)).sample_starts(10)
    b = PatchSampler(*args, generator=_gen(5)).sample_starts(10)
    assert torch.equal(a, b)


def test_sample_does_not_read_back(no_host_reads):
    shape = (10, 12, 14)
    residual = torch.rand(shape)
    s = PatchSampler(
        torch.randn(shape),
        (torch.rand(shape) > 0.7).float(),
        torch.ones(shape),
        (4, 4, 4),
        residual=residual,
        generator=_gen(),
    )
    with no_host_reads():
        img, tgt, wgt = s.sample(4)
        random_flip([img, tgt, wgt], _gen())
    assert img.shape == (4, 1, 4, 4, 4)


def test_random_flip_same_for_all_tensors():
    x = torch.arange(2 * 4 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4, 4)
    a, b = random_flip([x, x.clone() * 2], _gen(9))
    assert torch.equal(b, 2 * a)
    flips = 0
    g = _gen(11)
    for _ in range(200):
        (y,) = random_flip([x[:1]], g, axes=(0,))
        flips += int(not torch.equal(y, x[:1]))
        assert torch.equal(y, x[:1]) or torch.equal(y, x[:1].flip(2))
    assert 70 < flips < 130


def test_sampler_invalid_inputs():
    shape = (8, 8, 8)
    good = (torch.randn(shape), torch.zeros(shape), torch.ones(shape))
    with pytest.raises(ShapeError):
        PatchSampler(good[0], torch.zeros(8, 8, 7), good[2], (4, 4, 4))
    with pytest.raises(InputError):
        PatchSampler(*good, (4, 4))
    with pytest.raises(InputError):
        PatchSampler(*good, (4, 4, 4), fg_fraction=1.5)
    with pytest.raises(InputError):
        PatchSampler(*good, (4, 4, 4), floor=0.0)
    with pytest.raises(InputError):
        PatchSampler(*good, (4, 4, 4)).sample(0)
