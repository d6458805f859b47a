"""Replay buffer: FIFO / reservoir semantics, capacity, sampling, state, validation."""

from __future__ import annotations

import pytest
import torch

from engine.errors import CheckpointError, InputError, NonFiniteError, ShapeError, StateError
from engine.learn import ReplayBuffer

P = (2, 2, 2)


def _patches(values):
    """Patches filled with the given values, ``(n, 2, 2, 2)``."""
    v = torch.as_tensor(values, dtype=torch.float32)
    return v.view(-1, 1, 1, 1).expand(-1, *P).clone()


def _add(buf, values):
    x = _patches(values)
    buf.add(x, x / 100.0, torch.ones_like(x))


def _held(buf):
    return sorted(buf.images[: buf.size, 0, 0, 0].tolist())


def test_preallocated_on_device_with_capacity():
    buf = ReplayBuffer(7, P)
    assert buf.images.shape == (8, *P) and buf.images.device.type == "cpu"
    assert len(buf) == 0 and buf.capacity == 7


def test_fifo_keeps_newest():
    buf = ReplayBuffer(5, P, policy="fifo")
    _add(buf, [0, 1, 2])
    assert _held(buf) == [0, 1, 2] and len(buf) == 3
    _add(buf, [3, 4, 5, 6])
    assert _held(buf) == [2, 3, 4, 5, 6] and len(buf) == 5
    _add(buf, list(range(10, 22)))  # more than the capacity in one call
    assert _held(buf) == [17, 18, 19, 20, 21]
    assert buf.seen == 19
    # targets and weights move with their images
    idx = buf.images[:5, 0, 0, 0]
    torch.testing.assert_close(buf.targets[:5, 0, 0, 0], idx / 100.0)


def test_reservoir_fills_then_keeps_capacity():
    buf = ReplayBuffer(5, P, policy="reservoir", seed=1)
    _add(buf, [0, 1, 2])
    assert _held(buf) == [0, 1, 2]
    _add(buf, [3, 4])
    assert _held(buf) == [0, 1, 2, 3, 4]
    for v in range(5, 40):
        _add(buf, [v])
    assert len(buf) == 5 and buf.seen == 40
    held = _held(buf)
    assert len(set(held)) == 5 and all(0 <= h < 40 for h in held)
    torch.testing.assert_close(buf.targets[:5, 0, 0, 0], buf.images[:5, 0, 0, 0] / 100.0)


@pytest.mark.parametrize("one_call", [False, True])
def test_reservoir_is_uniform(one_call):
    """After 20 offers into capacity 5 every item is held with probability 1/4."""
    counts = torch.zeros(20)
    trials = 300
    for seed in range(trials):
        buf = ReplayBuffer(5, (1, 1, 1), policy="reservoir", seed=seed)
        if one_call:
            x = torch.arange(20.0).view(20, 1, 1, 1)
            buf.add(x, x, x)
        else:
            for v in range(20):
                x = torch.full((1, 1, 1, 1), float(v))
                buf.add(x, x, x)
        assert len(buf) == 5 and len(set(buf.images[:5].flatten().tolist())) == 5
        counts[buf.images[:5].flatten().long()] += 1
    freq = counts / trials
    assert float(freq.mean()) == pytest.approx(0.25)
    # binomial std per item: sqrt(.25*.75/300) = 0.025; allow ~4.5 sigma
    assert float((freq - 0.25).abs().max()) < 0.11
    assert float(freq[:10].mean()) == pytest.approx(0.25, abs=0.045)  # no bias to early items


def test_sample_draws_held_patches_without_host_reads(no_host_reads):
    buf = ReplayBuffer(6, P, seed=3)
    _add(buf, [1, 2, 3, 4])
    with no_host_reads():
        img, tgt, wgt = buf.sample(64)
        _add(buf, [7, 8, 9])  # insertion decisions stay on the device too
    assert img.shape == (64, 1, *P) and img.dtype == torch.float32
    assert set(img[:, 0, 0, 0, 0].tolist()) == {1.0, 2.0, 3.0, 4.0}
    torch.testing.assert_close(tgt, img / 100.0)
    assert bool((wgt == 1).all())


def test_sample_empty_raises():
    with pytest.raises(StateError):
        ReplayBuffer(3, P).sample(2)


def test_low_precision_storage_returns_float32():
    buf = ReplayBuffer(4, P, storage_dtype=torch.bfloat16)
    _add(buf, [1, 2])
    assert buf.images.dtype == torch.bfloat16
    assert buf.sample(3)[0].dtype == torch.float32


def test_add_case_normalises_and_draws_patches():
    g = torch.Generator().manual_seed(0)
    image = 50 + 10 * torch.randn((12, 12, 12), generator=g)
    target = torch.zeros(12, 12, 12)
    target[4:8, 4:8, 4:8] = 1
    buf = ReplayBuffer(32, (4, 4, 4), normalize="robust_zscore", fg_fraction=1.0)
    buf.add_case(image, target, torch.ones_like(target), n_patches=10)
    assert len(buf) == 10
    assert float(buf.images[:10].abs().mean()) < 3.0  # normalised, not raw ~50
    assert bool((buf.targets[:10].sum(dim=(1, 2, 3)) > 0).all())  # centred on foreground


def test_add_case_invalid_inputs_leave_buffer_unchanged():
    buf = ReplayBuffer(8, (4, 4, 4))
    img = torch.randn(8, 8, 8)
    buf.add_case(img, torch.zeros(8, 8, 8), torch.ones(8, 8, 8), 3)
    before = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in buf.state_dict().items()}
    bad_calls = [
        (ShapeError, (img, torch.zeros(8, 8, 7), torch.ones(8, 8, 8), 3)),
        (NonFiniteError, (img.masked_fill(img > 1, float("nan")), torch.zeros(8, 8, 8), torch.ones(8, 8, 8), 3)),
        (InputError, (img, torch.full((8, 8, 8), 2.0), torch.ones(8, 8, 8), 3)),
        (InputError, (img, torch.zeros(8, 8, 8), -torch.ones(8, 8, 8), 3)),
        (InputError, (img, torch.zeros(8, 8, 8), torch.ones(8, 8, 8), 0)),
        (ShapeError, (img[0], torch.zeros(8, 8), torch.ones(8, 8), 3)),
    ]
    for err, args in bad_calls:
        with pytest.raises(err):
            buf.add_case(*args)
    with pytest.raises(ShapeError):
        buf.add(torch.zeros(2, 4, 4, 5), torch.zeros(2, 4, 4, 5), torch.zeros(2, 4, 4, 5))
    after = buf.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]) if isinstance(v, torch.Tensor) else v == after[k], k


def test_state_dict_roundtrip_continues_identically():
    a = ReplayBuffer(5, P, seed=4)
    _add(a, list(range(9)))
    b = ReplayBuffer(5, P, seed=99)
    b.load_state_dict(a.state_dict())
    assert (b.size, b.seen) == (a.size, a.seen)
    for _ in range(3):
        _add(a, [50, 51])
        _add(b, [50, 51])
        assert torch.equal(a.sample(8)[0], b.sample(8)[0])
    assert torch.equal(a.images, b.images)


def test_load_state_dict_mismatch_raises_and_keeps_state():
    a = ReplayBuffer(5, P)
    _add(a, [1, 2])
    b = ReplayBuffer(6, P)
    _add(b, [3])
    with pytest.raises(CheckpointError):
        b.load_state_dict(a.state_dict())
    assert _held(b) == [3] and b.seen == 1
    c = ReplayBuffer(5, P, policy="fifo")
    with pytest.raises(CheckpointError):
        c.load_state_dict(a.state_dict())
    broken = a.state_dict()
    del broken["images"]
    with pytest.raises(CheckpointError):
        ReplayBuffer(5, P).load_state_dict(broken)


def test_constructor_validation():
    with pytest.raises(InputError):
        ReplayBuffer(0, P)
    with pytest.raises(InputError):
        ReplayBuffer(4, P, policy="lru")
    with pytest.raises(InputError):
        ReplayBuffer(4, (2, 2))
    with pytest.raises(InputError):
        ReplayBuffer(4, P, storage_dtype=torch.int8)
    with pytest.raises(InputError):
        ReplayBuffer(4, P, normalize="whiten")
