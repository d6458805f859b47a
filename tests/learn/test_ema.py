"""Serving weights as an average of the training weights (``LearnConfig.ema``)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import engine
from engine.errors import InputError
from engine.io import phantom_case
from engine.learn import LearnConfig, Trainer, checkpoint


def _batch(config, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (2, 1, *config.patch)
    return torch.randn(shape, generator=g), (torch.rand(shape, generator=g) > 0.5).float(), torch.ones(shape)


def _learned_session(seed, steps):
    """An engine with the average on (tiny net) and an open session that learned ``steps``."""
    learn = LearnConfig(base_width=4, depth=2, precision="fp32", channels_last=False, patch=(8, 16, 16), ema=0.9)
    eng = engine.Engine(engine.Config(device="cpu", learn=learn, steps=3, replay_capacity=8, replay_patches_per_case=2))
    case = phantom_case(seed, shape=(20, 32, 28))
    s = eng.open(case.image, spacing=case.spacing)
    for z in (5, 10, 15):
        s.annotate(z, case.label[z])
    s.learn(steps)
    return eng, case, s, learn


def test_the_average_follows_its_recurrence_and_is_what_serves(tiny_config):
    cfg = dataclasses.replace(tiny_config, ema=0.9, precision="fp32")
    tr = Trainer(cfg)
    ref = [p.detach().clone().double() for p in tr.model.parameters()]
    for i in range(14):
        tr.step(_batch(cfg, i))
        d = min(0.9, (1.0 + i) / (10.0 + i))
        ref = [d * r + (1 - d) * p.detach().double() for r, p in zip(ref, tr.model.parameters())]
    assert tr.average.updates == 14
    for e, r in zip(tr.average.params, ref):
        torch.testing.assert_close(e.double(), r, rtol=1e-5, atol=1e-6)
    served = tr.serving_state()
    names = dict(tr.model.named_parameters())
    assert any(not torch.equal(served[n], p) for n, p in names.items())  # the average, not the weights
    assert all(served[n] is e for (n, _), e in zip(tr.model.named_parameters(), tr.average.params))


def test_without_an_average_the_training_weights_serve(tiny_config):
    tr = Trainer(dataclasses.replace(tiny_config, ema=0.0))
    tr.step(_batch(tiny_config))
    assert tr.average is None
    served = tr.serving_state()
    assert all(torch.equal(served[n], p) for n, p in tr.model.named_parameters())


def test_a_bad_decay_is_typed(tiny_config):
    for bad in (-0.1, 1.0, float("nan"), "0.9"):
        with pytest.raises(InputError, match="LearnConfig.ema"):
            dataclasses.replace(tiny_config, ema=bad).validate()


def test_the_average_resumes_bit_identical_and_old_checkpoints_start_one(tiny_config, blob_case, tmp_path):
    cfg = dataclasses.replace(tiny_config, ema=0.95)
    image, target, weight = blob_case
    a = Trainer(cfg)
    a.train_case(image, target, weight, 3)
    path = checkpoint.save(tmp_path / "s.ckpt", a, None)
    a.train_case(image, target, weight, 4)
    b = Trainer(dataclasses.replace(cfg, seed=9))
    checkpoint.load(path, b, None)
    b.train_case(image, target, weight, 4)
    assert b.average.updates == a.average.updates == 7
    assert all(torch.equal(x, y) for x, y in zip(a.average.params, b.average.params))
    plain = Trainer(dataclasses.replace(tiny_config, ema=0.0))  # saved without an average
    plain.train_case(image, target, weight, 2)
    old = checkpoint.save(tmp_path / "plain.ckpt", plain, None)
    c = Trainer(cfg)
    checkpoint.load(old, c, None)
    assert c.average.updates == 0 and all(torch.equal(e, p) for e, p in zip(c.average.params, c.model.parameters()))


def test_a_restored_call_restores_the_average(tiny_config, blob_case, monkeypatch):
    cfg = dataclasses.replace(tiny_config, ema=0.9)
    image, target, weight = blob_case
    tr = Trainer(cfg)
    tr.train_case(image, target, weight, 2)
    before = [e.clone() for e in tr.average.params], tr.average.updates
    monkeypatch.setattr(Trainer, "_end_of_call", lambda self: False)  # as if the weights ended non-finite
    tr.train_case(image, target, weight, 3)
    assert tr.calls_restored == 1 and tr.average.updates == before[1]
    assert all(torch.equal(e, b) for e, b in zip(tr.average.params, before[0]))


def test_engine_predicts_from_the_average_and_saves_it(tmp_path):
    eng, case, s, learn = _learned_session(13, 4)
    served = eng._serving.state_dict()
    for (n, _), e in zip(eng.trainer.model.named_parameters(), eng.trainer.average.params):
        assert torch.equal(served[n], e)
    s.commit()
    back = engine.Engine.load(eng.save(tmp_path / "e"))
    assert all(torch.equal(x, y) for x, y in zip(back.trainer.average.params, eng.trainer.average.params))
    p = eng.predict(case.image, spacing=case.spacing)
    assert np.array_equal(p, back.predict(case.image, spacing=case.spacing))


def test_the_default_keeps_an_average():
    assert LearnConfig().ema == 0.99


def test_a_session_that_learned_predicts_from_the_adapted_weights(monkeypatch):
    eng, case, s, learn = _learned_session(14, 6)
    adapted = eng._adapted.state_dict()
    assert eng._adapted is not eng._serving
    assert all(torch.equal(adapted[n], p) for n, p in eng.trainer.model.named_parameters())
    calls = []
    real = engine.Engine._predict_crop

    def spy(self, *a, **kw):
        calls.append(kw.get("adapted", a[4] if len(a) > 4 else False))
        return real(self, *a, **kw)

    monkeypatch.setattr(engine.Engine, "_predict_crop", spy)
    s.predict()
    fresh = eng.open(case.image, spacing=case.spacing)  # a new case: the general model
    fresh.annotate(10, case.label[10])
    fresh.predict()
    eng.predict(case.image, spacing=case.spacing)
    monkeypatch.setattr(engine.Engine, "_predict_crop", real)
    assert calls == [True, False, False]
    plain = engine.Engine(engine.Config(device="cpu", learn=dataclasses.replace(learn, ema=0.0), steps=2))
    t = plain.open(case.image, spacing=case.spacing)
    t.annotate(10, case.label[10])
    t.learn(1)
    assert plain._adapted is plain._serving  # one model without an average
