"""GPU-only checks: no host syncs in sampling / replay / captured steps, fp16 scaling,
CUDA-graph steps matching eager ones, checkpoints of CUDA state."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch

from engine.learn import PatchSampler, Trainer, checkpoint, random_flip

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@contextlib.contextmanager
def sync_is_error():
    """Any host synchronisation inside the block raises."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _cuda_case(blob_case):
    return tuple(t.cuda() for t in blob_case)


def test_sampler_and_replay_do_not_sync(tiny_config, blob_case):
    trainer = Trainer(tiny_config, device="cuda")
    replay = trainer.make_replay(16)
    image, target, weight = _cuda_case(blob_case)
    sampler = PatchSampler(image, target, weight, (16, 16, 16), residual=target, generator=trainer.generator)
    replay.add_case(image, target, weight, 4)
    with sync_is_error():
        patches = sampler.sample(2)
        replay.add(*patches)
        batch = replay.sample(2)
        random_flip(batch, trainer.generator)


def test_cuda_graph_step_matches_eager_and_does_not_sync(tiny_config, blob_case):
    config = dataclasses.replace(tiny_config, precision="fp32", channels_last=False)
    eager = Trainer(config, device="cuda")
    graphed = Trainer(dataclasses.replace(config, cuda_graph=True), device="cuda")
    image, target, weight = _cuda_case(blob_case)
    sampler = PatchSampler(image, target, weight, config.patch, generator=torch.Generator("cuda").manual_seed(0))
    batches = [sampler.sample(2) for _ in range(5)]
    graphed.step(batches[0])  # captures (may sync)
    eager.step(batches[0])
    with sync_is_error():
        for b in batches[1:]:
            graphed.step(b)
    for b in batches[1:]:
        eager.step(b)
    for p, q in zip(eager.model.parameters(), graphed.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4)


def test_bf16_graph_train_case(tiny_config, blob_case):
    trainer = Trainer(dataclasses.replace(tiny_config, cuda_graph=True), device="cuda")
    replay = trainer.make_replay(8)
    image, target, weight = _cuda_case(blob_case)
    replay.add_case(image, target, weight, 4)
    losses = trainer.train_case(image, target, weight, 20, replay=replay)
    assert bool(torch.isfinite(losses).all()) and float(losses[-5:].mean()) < float(losses[:5].mean())


def test_fp16_grad_scaler_trains(tiny_config, blob_case):
    trainer = Trainer(dataclasses.replace(tiny_config, precision="fp16", lr=3e-3), device="cuda")
    losses = trainer.train_case(*_cuda_case(blob_case), steps=30)
    assert bool(torch.isfinite(losses).all()) and float(losses[-5:].mean()) < float(losses[:5].mean())
    assert trainer.predict(blob_case[0].cuda()).dtype == torch.float32


def test_cuda_checkpoint_resume(tiny_config, blob_case, tmp_path):
    image, target, weight = _cuda_case(blob_case)
    a = Trainer(tiny_config, device="cuda")
    a.train_case(image, target, weight, 3)
    path = checkpoint.save(tmp_path / "gpu.ckpt", a, counters={"n": 3})
    b = Trainer(dataclasses.replace(tiny_config, seed=9), device="cuda")
    assert checkpoint.load(path, b) == {"n": 3}
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)
    assert torch.equal(a.generator.get_state(), b.generator.get_state())
