"""Trainer: configuration, steps, replay mixing, prediction, typed errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from engine.errors import InputError, NonFiniteError, ShapeError
from engine.learn import LearnConfig, ReplayBuffer, Trainer


def _snapshot(trainer: Trainer):
    return (
        [p.detach().clone() for p in trainer.model.parameters()],
        {k: v.clone() for s in trainer.optimizer.state.values() for k, v in s.items() if isinstance(v, torch.Tensor)},
        trainer.generator.get_state(),
        trainer.steps_done,
    )


def _assert_same(a, b):
    for x, y in zip(a[0], b[0]):
        assert torch.equal(x, y)
    assert a[1].keys() == b[1].keys() and all(torch.equal(a[1][k], b[1][k]) for k in a[1])
    assert torch.equal(a[2], b[2]) and a[3] == b[3]


def test_no_host_read_guard_is_effective(no_host_reads):
    with no_host_reads(), pytest.raises(AssertionError):
        bool(torch.ones(1))


def test_config_validation():
    for bad in [
        dict(arch="vnet"),
        dict(norm="batch"),
        dict(patch=(16, 16)),
        dict(batch_size=0),
        dict(lr=0.0),
        dict(precision="fp8"),
        dict(optimizer="lion"),
        dict(replay_ratio=1.5),
        dict(flip_axes=(0, 3)),
        dict(sw_overlap=1.0),
        dict(momentum=1.0),
    ]:
        with pytest.raises(InputError):
            Trainer(LearnConfig(**bad))
    with pytest.raises(InputError):
        Trainer("unet")  # type: ignore[arg-type]


def test_config_dict_roundtrip(tiny_config):
    d = tiny_config.to_dict()
    assert LearnConfig.from_dict(d) == tiny_config
    with pytest.raises(InputError):
        LearnConfig.from_dict({**d, "colour": 1})


def test_gpu_only_options_on_cpu(tiny_config):
    with pytest.raises(InputError, match="GPU"):
        Trainer(dataclasses.replace(tiny_config, precision="fp16"))
    with pytest.warns(UserWarning, match="ignored on CPU"):
        trainer = Trainer(dataclasses.replace(tiny_config, cuda_graph=True))
    assert not trainer.use_graph


def test_same_seed_same_init_and_global_rng_untouched(tiny_config):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, b = Trainer(tiny_config), Trainer(tiny_config)
    assert torch.equal(state, torch.get_rng_state())
    for x, y in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(x, y)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(),
        dict(precision="fp32", channels_last=False, arch="resunet"),
        dict(optimizer="sgd", momentum=0.9, lr=1e-2, grad_clip=1.0, norm="group", flip_axes=(1, 2)),
    ],
)
def test_train_case_reduces_loss(tiny_config, blob_case, overrides):
    trainer = Trainer(dataclasses.replace(tiny_config, **{"lr": 3e-3, **overrides}))
    image, target, weight = blob_case
    losses = trainer.train_case(image, target, weight, steps=40)
    assert losses.shape == (40,) and losses.dtype == torch.float32
    assert bool(torch.isfinite(losses).all())
    assert float(losses[-10:].mean()) < float(losses[:10].mean())
    assert trainer.steps_done == 40


def test_train_case_accepts_numpy_and_zero_steps(tiny_config, blob_case):
    trainer = Trainer(tiny_config)
    image, target, weight = (t.numpy() for t in blob_case)
    assert trainer.train_case(image, target, weight, steps=0).shape == (0,)
    assert trainer.steps_done == 0
    trainer.train_case(image.astype(np.float64), target, weight, steps=2)
    assert trainer.steps_done == 2


def test_replay_mixing_schedule(tiny_config):
    trainer = Trainer(dataclasses.replace(tiny_config, batch_size=4))
    shares = [trainer.replay_share(t, 0.3) for t in range(100)]
    assert sum(shares) == 120 and set(shares) <= {1, 2}
    assert [trainer.replay_share(t, 0.5) for t in range(4)] == [2, 2, 2, 2]
    assert sum(trainer.replay_share(t, 1.0) for t in range(10)) == 40
    assert sum(trainer.replay_share(t, 0.0) for t in range(10)) == 0


def test_train_case_draws_replay_patches(tiny_config, blob_case):
    trainer = Trainer(tiny_config)
    replay = trainer.make_replay(16)
    image, target, weight = blob_case
    replay.add_case(image, target, weight, n_patches=4)
    calls = []
    original = replay.sample

    def counting(n):
        calls.append(n)
        return original(n)

    replay.sample = counting  # type: ignore[method-assign]
    trainer.train_case(image, target, weight, steps=6, replay=replay, replay_ratio=0.5)
    assert calls == [1] * 6
    calls.clear()
    trainer.train_case(image, target, weight, steps=3, replay=replay, replay_ratio=0.0)
    assert calls == []
    empty = trainer.make_replay(4)
    trainer.train_case(image, target, weight, steps=2, replay=empty)  # empty: no replay


def test_train_case_invalid_inputs_leave_state_unchanged(tiny_config, blob_case):
    trainer = Trainer(tiny_config)
    image, target, weight = blob_case
    trainer.train_case(image, target, weight, steps=2)
    before = _snapshot(trainer)
    other_patch = ReplayBuffer(4, (8, 8, 8))
    bad = [
        (ShapeError, (image, target[:-1], weight), {}),
        (ShapeError, (image[0], target[0], weight[0]), {}),
        (NonFiniteError, (image.masked_fill(target > 0, float("inf")), target, weight), {}),
        (InputError, (image, target * 2, weight), {}),
        (InputError, (image, target, weight - 2), {}),
        (InputError, (image, target, weight), {"steps": -1}),
        (InputError, (image, target, weight), {"steps": 2.5}),
        (InputError, (image, target, weight), {"replay_ratio": 2.0}),
        (ShapeError, (image, target, weight), {"replay": other_patch}),
        (InputError, (image, target, weight), {"replay": "buffer"}),
        (ShapeError, (image, target, weight), {"residual": torch.ones(3, 3, 3)}),
        (InputError, (image, target, weight), {"residual": -torch.ones_like(image)}),
        (InputError, ("image", target, weight), {}),
    ]
    for err, args, kwargs in bad:
        kwargs = {"steps": 3, **kwargs}
        with pytest.raises(err):
            trainer.train_case(*args, **kwargs)
        _assert_same(before, _snapshot(trainer))


def test_step_validates_batch(tiny_config):
    trainer = Trainer(tiny_config)
    good = torch.zeros(2, 1, 16, 16, 16)
    with pytest.raises(ShapeError):
        trainer.step((good[:, 0], good[:, 0], good[:, 0]))
    with pytest.raises(ShapeError):
        trainer.step((good, good[:1], good))
    with pytest.raises(InputError):
        trainer.step((good, good))
    with pytest.raises(InputError):
        trainer.step((good, good.long(), good))
    assert trainer.steps_done == 0
    loss = trainer.step((torch.randn_like(good), good, torch.ones_like(good)))
    assert loss.dim() == 0 and not loss.requires_grad and trainer.steps_done == 1


def test_predict_shape_dtype_and_no_rng_use(tiny_config, blob_case):
    trainer = Trainer(tiny_config)
    image, target, weight = blob_case
    trainer.train_case(image, target, weight, steps=3)
    gen = trainer.generator.get_state()
    probs = trainer.predict(image)
    assert probs.shape == image.shape and probs.dtype == torch.float32
    assert bool(((probs >= 0) & (probs <= 1)).all())
    assert torch.equal(gen, trainer.generator.get_state())
    assert torch.equal(probs, trainer.predict(image.numpy()))
    with pytest.raises(NonFiniteError):
        trainer.predict(image.masked_fill(target > 0, float("nan")))
    with pytest.raises(ShapeError):
        trainer.predict(image[None])


def test_small_volume_trains_and_predicts(tiny_config):
    trainer = Trainer(tiny_config)
    image = torch.randn(6, 9, 30)
    target = (image > 1).float()
    trainer.train_case(image, target, torch.ones_like(image), steps=2)
    assert trainer.predict(image).shape == (6, 9, 30)


def test_warmup_changes_no_state(tiny_config, blob_case):
    trainer = Trainer(tiny_config)
    trainer.train_case(*blob_case, steps=2)
    before = _snapshot(trainer)
    rng = torch.get_rng_state()
    trainer.warmup()
    _assert_same(before, _snapshot(trainer))
    assert torch.equal(rng, torch.get_rng_state())
    assert all(p.grad is None for p in trainer.model.parameters())
