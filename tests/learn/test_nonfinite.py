"""Training never dies: a non-finite loss or gradient skips the step (weights and
optimiser state unchanged), is counted and reported, and never reaches the
residual, the proposal or the fused result; non-finite predictions become
background and are counted too."""

from __future__ import annotations

import numpy as np
import torch

import engine
from engine.io import phantom_case
from engine.learn import LearnConfig, Trainer
from engine.learn import sampler as sampler_mod


def _state(tr: Trainer):
    params = [p.detach().clone() for p in tr.model.parameters()]
    opt = {
        id(p): {k: (v.clone() if torch.is_tensor(v) else v) for k, v in s.items()}
        for p, s in tr.optimizer.state.items()
    }
    return params, opt


def _same_state(a, b) -> bool:
    (pa, oa), (pb, ob) = a, b
    if not all(torch.equal(x, y) for x, y in zip(pa, pb)) or oa.keys() != ob.keys():
        return False
    return all(
        all(torch.equal(oa[k][n], ob[k][n]) if torch.is_tensor(oa[k][n]) else oa[k][n] == ob[k][n] for n in oa[k])
        for k in oa
    )


def test_a_nan_batch_skips_the_step_and_changes_nothing(tiny_config):
    tr = Trainer(tiny_config)
    g = torch.Generator().manual_seed(0)
    shape = (2, 1, *tiny_config.patch)
    good = (torch.randn(shape, generator=g), (torch.rand(shape, generator=g) > 0.5).float(), torch.ones(shape))
    tr.step(good)  # optimiser state exists now
    before = _state(tr)
    bad_image = good[0].clone()
    bad_image[0, 0, 1, 2, 3] = float("nan")
    loss = tr.step((bad_image, good[1], good[2]))
    assert not torch.isfinite(loss)
    assert tr.steps_skipped == 1 and tr.steps_done == 2
    assert _same_state(before, _state(tr))
    tr.step(good)  # and training goes on
    assert tr.steps_skipped == 1 and all(torch.isfinite(p).all() for p in tr.model.parameters())


def test_inf_gradients_are_skipped_too(tiny_config):
    tr = Trainer(tiny_config)
    shape = (2, 1, *tiny_config.patch)
    img = torch.randn(shape)
    tgt = (torch.rand(shape) > 0.5).float()
    before = _state(tr)
    huge = torch.full(shape, 3e38)  # weights that overflow the loss
    tr.step((img, tgt, huge))
    assert tr.steps_skipped == 1 and _same_state(before, _state(tr))


def _config():
    learn = LearnConfig(base_width=4, depth=2, precision="fp32", channels_last=False, patch=(8, 16, 16), batch_size=2)
    return engine.Config(device="cpu", learn=learn, steps=3, replay_capacity=16, replay_patches_per_case=4)


def test_nan_inside_session_learning_is_counted_and_never_reaches_the_results(monkeypatch, tmp_path):
    case = phantom_case(11, shape=(20, 32, 28))
    eng = engine.Engine(_config())
    s = eng.open(case.image, spacing=case.spacing)
    zs = np.nonzero(case.label.any((1, 2)))[0]
    s.set_extent(int(zs[0]), int(zs[-1]))
    for z in s.propose(3):
        s.annotate(z, case.label[z])
    s.propagate()
    real = sampler_mod.PatchSampler.sample
    calls = {"n": 0}

    def poisoned(self, n):
        img, tgt, wgt = real(self, n)
        calls["n"] += 1
        if calls["n"] == 2:  # the second batch of the round carries a NaN
            img = img.clone()
            img.view(-1)[5] = float("nan")
        return img, tgt, wgt

    monkeypatch.setattr(sampler_mod.PatchSampler, "sample", poisoned)
    s.learn(3)
    monkeypatch.setattr(sampler_mod.PatchSampler, "sample", real)
    assert eng.counters["skipped_steps"] == 1 and eng.counters["steps"] == 3
    assert all(torch.isfinite(p).all() for p in eng.trainer.model.parameters())
    p = s.predict()
    assert np.isfinite(p).all()
    picks = s.propose(2, rule="residual")
    assert len(picks) == 2 and all(isinstance(z, int) for z in picks)
    r = s.result(soft=True)
    assert np.isfinite(r).all()
    s.commit()
    back = engine.Engine.load(eng.save(tmp_path / "e"))
    assert back.counters["skipped_steps"] == 1


def test_nonfinite_predictions_become_background_and_are_counted(monkeypatch):
    case = phantom_case(12, shape=(20, 32, 28))
    eng = engine.Engine(_config())
    s = eng.open(case.image, spacing=case.spacing)
    for z in (5, 10, 15):
        s.annotate(z, case.label[z])
    s.learn(1)
    real = type(eng._serving).forward

    def broken(self, x):
        return real(self, x) * float("nan")

    monkeypatch.setattr(type(eng._serving), "forward", broken)
    eng.counters["weights_version"] += 1  # a new prediction is due
    p = s.predict()
    assert np.isfinite(p).all() and float(p.max()) == 0.0
    f = s.result(soft=True)
    assert np.isfinite(f).all()
    monkeypatch.setattr(type(eng._serving), "forward", real)
    s.commit()
    assert eng.counters["nonfinite_predictions"] >= 1
