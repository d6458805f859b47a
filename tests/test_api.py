"""The Session API: a full case, typed errors that leave state unchanged, async
learning, concurrent sessions, array types, persistence."""

import re
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import engine
import engine.learn
from engine import errors as E

ROOT = Path(__file__).resolve().parents[1]


def _tiny_config(**kw):
    learn = engine.learn.LearnConfig(
        patch=(8, 16, 16), base_width=4, depth=2, batch_size=2, precision="fp32", channels_last=False
    )
    return engine.Config(device="cpu", learn=learn, steps=2, replay_capacity=16, replay_patches_per_case=4, **kw)


def _case(seed=0, shape=(12, 20, 18)):
    g = np.random.default_rng(seed)
    d, h, w = shape
    zz, yy, xx = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    r = 1 + (zz - d / 2) ** 2 / (d / 3) ** 2 + (yy - h / 2) ** 2 / (h / 4) ** 2 + (xx - w / 2) ** 2 / (w / 4) ** 2
    label = (r < 2.0).astype(np.uint8)
    image = (label * 2.0 + g.normal(0, 0.3, shape)).astype(np.float32)
    return image, label


@pytest.fixture(scope="module")
def eng():
    return engine.Engine(_tiny_config())


def _snapshot(s):
    return (
        dict((k, v.clone()) for k, v in s._store.masks.items()),
        s.extent,
        s._store.history_length,
        s._store.stamp,
        s.closed,
    )


def _same(a, b):
    ann_a, *rest_a = a
    ann_b, *rest_b = b
    return rest_a == rest_b and ann_a.keys() == ann_b.keys() and all(torch.equal(ann_a[k], ann_b[k]) for k in ann_a)


def test_full_case_numpy_in_numpy_out(eng):
    image, label = _case()
    s = eng.open(image, spacing=(1, 1, 1), axis=0)
    zs = np.nonzero(label.any((1, 2)))[0]
    s.set_extent(int(zs[0]), int(zs[-1]))
    picks = s.propose(3, rule="even")  # even: both ends of the extent included
    assert picks == sorted(picks) and picks[0] == zs[0] and picks[-1] == zs[-1]
    for z in picks:
        s.annotate(z, label[z])
    q, c = s.propagate()
    assert isinstance(q, np.ndarray) and q.shape == image.shape and c.shape == image.shape
    assert q.min() >= 0 and q.max() <= 1
    assert np.allclose(c[picks], 1.0)
    assert np.all(q[: zs[0]] == 0)
    t = s.learn(2, return_timings=True)
    assert {"learn", "total"} <= set(t)
    nxt = s.propose(2, rule="residual")  # model-guided once trained
    assert len(nxt) == 2 and not set(nxt) & set(picks)
    assert len(s.propose(2)) == 2  # the default rule (cells)
    f = s.result()
    assert f.dtype == np.uint8 and f.shape == image.shape
    inter = (f & label).sum()
    assert 2 * inter / (f.sum() + label.sum()) > 0.7
    cases = eng.counters["cases"]
    s.commit()
    assert eng.counters["cases"] == cases + 1 and len(eng.replay) > 0
    with pytest.raises(E.SessionClosedError):
        s.annotate(picks[0], label[picks[0]])


def test_other_axis_and_torch_types(eng):
    image, label = _case(1)
    t_img = torch.from_numpy(image).permute(1, 2, 0)  # annotation axis 2 in the caller's layout
    t_lab = torch.from_numpy(label).permute(1, 2, 0)
    s = eng.open(t_img, axis=2)
    for z in (3, 6, 8):
        s.annotate(z, t_lab[:, :, z])
    s.annotate(9, t_lab[9], axis=0)  # an orthogonal slice
    q, c = s.propagate()
    assert isinstance(q, torch.Tensor) and q.shape == t_img.shape
    assert torch.equal(q[9], t_lab[9].float())
    assert torch.all(c[9] == 1.0)
    assert s.annotated == {0: [9], 2: [3, 6, 8]}
    s.close()


BAD_CALLS = [
    ("annotate", lambda s, lab: s.annotate(99, lab[0]), E.SliceIndexError),
    ("annotate", lambda s, lab: s.annotate(-1, lab[0]), E.SliceIndexError),
    ("annotate", lambda s, lab: s.annotate(2, lab[0][:5]), E.ShapeError),
    ("annotate", lambda s, lab: s.annotate(2, lab[6] * 3), E.MaskError),
    ("annotate", lambda s, lab: s.annotate(2, np.full(lab[0].shape, np.nan)), E.NonFiniteError),
    ("annotate", lambda s, lab: s.annotate(2, lab[0], axis=5), E.InputError),
    ("annotate", lambda s, lab: s.annotate(2.5, lab[0]), E.SliceIndexError),
    ("set_extent", lambda s, lab: s.set_extent(5, 2), E.SliceIndexError),
    ("set_extent", lambda s, lab: s.set_extent(0, 40), E.SliceIndexError),
    ("erase", lambda s, lab: s.erase(7), E.StateError),
    ("propose", lambda s, lab: s.propose(0), E.InputError),
    ("propose", lambda s, lab: s.propose(2, rule="magic"), E.InputError),
    ("learn", lambda s, lab: s.learn(-3), E.InputError),
]


@pytest.mark.parametrize("name,call,err", BAD_CALLS, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(BAD_CALLS)])
def test_bad_input_is_typed_and_leaves_state(eng, name, call, err):
    image, label = _case(2)
    s = eng.open(image)
    s.set_extent(2, 9)
    s.annotate(4, label[4])
    before = _snapshot(s)
    with pytest.raises(err):
        call(s, label)
    assert _same(before, _snapshot(s))
    s.close()


def test_propagate_with_nothing_drawn_is_a_state_error(eng):
    image, _ = _case(3)
    s = eng.open(image)
    with pytest.raises(E.StateError):
        s.propagate()
    s.close()


@pytest.mark.parametrize(
    "image,err",
    [
        (np.zeros((4, 4)), E.ShapeError),
        (np.full((4, 5, 6), np.nan, dtype=np.float32), E.NonFiniteError),
        (np.zeros((4, 5, 6), dtype=np.complex64), E.DTypeError),
        ("not an array", E.InputError),
    ],
)
def test_bad_image_is_typed(eng, image, err):
    with pytest.raises(err):
        eng.open(image)


def test_undo_and_erase(eng):
    image, label = _case(4)
    s = eng.open(image)
    s.annotate(3, label[3])
    s.annotate(3, np.zeros_like(label[3]))
    s.undo()
    assert torch.equal(s._store[(0, 3)], torch.from_numpy(label[3]))
    s.erase(3)
    assert not len(s._store)
    s.undo()
    assert (0, 3) in s._store
    s.set_extent(1, 8)
    s.undo()
    assert s.extent is None
    s.close()


def test_learn_async_predict_answers_from_finished_weights(eng):
    image, label = _case(5)
    s = eng.open(image)
    for z in (3, 6, 9):
        s.annotate(z, label[z])
    p_before = s.predict().copy()
    version = eng.counters["weights_version"]
    gate = threading.Event()
    original = eng.trainer.train_case

    def slow_train(*a, **k):
        gate.wait(10)
        return original(*a, **k)

    eng.trainer.train_case = slow_train
    try:
        fut = s.learn_async(2)
        with pytest.raises(E.BusyError):
            s.learn_async(2)
        # while learning: still the old weights, and the prediction is unchanged
        assert eng.counters["weights_version"] == version
        assert np.array_equal(s.predict(), p_before)
        gate.set()
        fut.result(timeout=60)
    finally:
        eng.trainer.train_case = original
    assert eng.counters["weights_version"] == version + 1
    assert not np.array_equal(s.predict(), p_before)
    s.close()


def test_concurrent_sessions_share_one_engine():
    eng = engine.Engine(_tiny_config())
    errors = []

    def worker(seed):
        try:
            image, label = _case(seed)
            s = eng.open(image)
            for z in (2, 5, 8):
                s.annotate(z, label[z])
            s.propagate()
            s.learn(2)
            s.result()
            s.commit()
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert eng.counters["cases"] == 3 and eng.counters["steps"] == 6


def test_save_load_round_trip(tmp_path):
    eng = engine.Engine(_tiny_config())
    image, label = _case(6)
    s = eng.open(image)
    for z in (2, 5, 8):
        s.annotate(z, label[z])
    s.learn(2)
    s.commit()
    eng.save(tmp_path / "e")
    back = engine.Engine.load(tmp_path / "e")
    assert back.counters == eng.counters
    assert len(back.replay) == len(eng.replay)
    for a, b in zip(eng.trainer.model.state_dict().values(), back.trainer.model.state_dict().values()):
        assert torch.equal(a, b)
    assert np.array_equal(back.predict(image), eng.predict(image))
    # a corrupted checkpoint raises a typed error
    ck = tmp_path / "e" / "engine.ckpt"
    data = bytearray(ck.read_bytes())
    data[-10] ^= 0xFF
    ck.write_bytes(bytes(data))
    with pytest.raises(E.CheckpointError):
        engine.Engine.load(tmp_path / "e")


def test_docs_example_runs(capsys):
    text = (ROOT / "docs" / "api.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert len(code.strip().splitlines()) <= 40
    exec(compile(code, "docs/api.md", "exec"), {})
    out = capsys.readouterr().out
    assert "case 1:" in out


# --- fusion gate -----------------------------------------------------------------------
def test_fit_fusion_weight_picks_fewest_errors_ties_to_proxy():
    from engine.api import FUSION_WEIGHTS, fit_fusion_weight

    assert fit_fusion_weight([]) == 0.0
    assert len(FUSION_WEIGHTS) == 5  # each row: 5 error counts, then the truth's area
    assert fit_fusion_weight([[5, 4, 3, 2, 1, 9]]) == FUSION_WEIGHTS[-1]
    assert fit_fusion_weight([[3, 1, 1, 2, 4, 9]]) == FUSION_WEIGHTS[1]  # tie -> smaller lam
    # rows add up: two rows that disagree are decided by their sum (30, 25, 15, 17, 29)
    assert fit_fusion_weight([[0, 5, 5, 5, 9, 20], [30, 20, 10, 12, 20, 40]]) == FUSION_WEIGHTS[2]


def test_fusion_errors_match_numpy_on_random_slices():
    from engine.api import FUSION_WEIGHTS, fusion_errors

    g = torch.Generator().manual_seed(3)
    q, c, p = (torch.rand(13, 17, generator=g) for _ in range(3))
    truth = torch.rand(13, 17, generator=g) > 0.5
    row = fusion_errors(q, c, p, truth.to(torch.uint8))
    qn, cn, pn, tn = q.numpy().astype(np.float64), c.numpy(), p.numpy(), truth.numpy()
    want = [int(((qn + lam * (1 - cn) * (pn - qn) >= 0.5) != tn).sum()) for lam in FUSION_WEIGHTS]
    # float32 vs float64 may flip a pixel sitting exactly on 0.5; random data does not
    assert row[:-1] == want and row[-1] == int(tn.sum())
    assert len(set(row[:-1])) > 1  # the weights matter on this input


def _two_round_case(eng, image, label, first=(2, 6, 9), second=(4, 7)):
    s = eng.open(image)
    zs = np.nonzero(label.any((1, 2)))[0]
    s.set_extent(int(zs[0]), int(zs[-1]))
    for z in first:
        s.annotate(z, label[z])
    s.propagate()
    s.learn(2)
    s.result()  # a prediction of the whole volume now exists
    for z in second:
        s.annotate(z, label[z])
    s.propagate()
    return s


def test_gate_collects_evidence_only_from_newly_drawn_slices():
    eng = engine.Engine(_tiny_config())
    image, label = _case(7)
    s = eng.open(image)
    s.annotate(3, label[3])
    assert s.fusion_evidence == []  # no proxy and no trained model yet
    s.close()
    s = _two_round_case(eng, image, label)
    rows = s.fusion_evidence
    assert len(rows) == 2  # slices 4 and 7: drawn after proxy + trained prediction
    assert all(r[-1] == int(label[z].sum()) for r, z in zip(rows, (4, 7)))
    s.annotate(4, label[4])  # a redraw of slice 4 is not new evidence
    assert len(s.fusion_evidence) == 2
    s.erase(7)
    assert len(s.fusion_evidence) == 1  # an erased slice no longer counts
    s.undo()
    assert len(s.fusion_evidence) == 2
    lam = s.fusion_weight
    from engine.api import fit_fusion_weight

    assert lam == fit_fusion_weight(s.fusion_evidence)
    s.commit()
    assert eng.fusion_evidence == rows and eng.fusion_weight() == lam


def test_result_is_the_proxy_without_evidence_and_the_paper_fusion_with_gate_none():
    image, label = _case(8)
    for gate in ("evidence", "none"):
        eng = engine.Engine(_tiny_config(fusion_gate=gate))
        s = eng.open(image)
        for z in (2, 6, 9):
            s.annotate(z, label[z])
        q, c = s.propagate()
        s.learn(2)
        p = s.predict()
        f = s.result(soft=True)
        assert s.fusion_evidence == []
        if gate == "evidence":
            assert s.fusion_weight == 0.0
            np.testing.assert_allclose(f, q, atol=0)
        else:
            assert s.fusion_weight == 1.0
            want = c * q + (1 - c) * p
            np.testing.assert_allclose(f, want, atol=1e-6)
            assert not np.allclose(f, q)
        s.close()


def test_fusion_evidence_survives_save_load_and_window(tmp_path):
    eng = engine.Engine(_tiny_config(fusion_window=3))
    for seed in (9, 10):
        image, label = _case(seed)
        s = _two_round_case(eng, image, label)
        s.commit()
    assert len(eng.fusion_evidence) == 3  # 4 rows seen, the window keeps the newest 3
    eng.save(tmp_path / "e")
    back = engine.Engine.load(tmp_path / "e")
    assert back.fusion_evidence == eng.fusion_evidence
    assert back.fusion_weight() == eng.fusion_weight()
    assert back.counters == eng.counters


@pytest.mark.parametrize("field,value", [("fusion_gate", "sometimes"), ("fusion_window", 0), ("fusion_window", 2.5)])
def test_bad_fusion_config_is_typed(field, value):
    with pytest.raises(E.InputError):
        _tiny_config(**{field: value}).validate()


# --- commit with the person's final mask --------------------------------------------------
def test_commit_final_mask_is_the_replay_target_with_full_confidence():
    eng = engine.Engine(_tiny_config(replay_policy="fifo"))
    image, label = _case(11)
    t_img = np.ascontiguousarray(image.transpose(1, 2, 0))  # annotation axis 2 in the caller's layout
    t_lab = np.ascontiguousarray(label.transpose(1, 2, 0))
    s = eng.open(t_img, axis=2)
    s.annotate(5, t_lab[:, :, 5])  # one drawn slice: the proxy alone would be a poor target
    s.commit(final_mask=t_lab.astype(bool))
    assert eng.counters["cases"] == 1 and len(eng.replay) == eng.config.replay_patches_per_case
    n = len(eng.replay)
    assert torch.all(eng.replay.weights[:n] == 1.0)  # full confidence everywhere
    assert set(torch.unique(eng.replay.targets[:n]).tolist()) <= {0.0, 1.0}  # the binary final mask
    assert eng.replay.targets[:n].sum() > 0
    with pytest.raises(E.SessionClosedError):
        s.commit()


def test_commit_final_mask_without_annotations_still_fills_the_buffer():
    eng = engine.Engine(_tiny_config())
    image, label = _case(12)
    s = eng.open(image)
    s.commit(final_mask=torch.from_numpy(label))
    assert eng.counters["cases"] == 1 and len(eng.replay) > 0


@pytest.mark.parametrize(
    "bad,err",
    [
        (lambda lab: lab[:, :5], E.ShapeError),
        (lambda lab: lab[0], E.ShapeError),
        (lambda lab: lab * 3, E.MaskError),
        (lambda lab: np.where(lab > 0, np.nan, 0.0), E.NonFiniteError),
        (lambda lab: lab.astype(np.complex64), E.MaskError),
        (lambda lab: "not an array", E.InputError),
    ],
)
def test_commit_bad_final_mask_is_typed_and_leaves_state(eng, bad, err):
    image, label = _case(13)
    s = eng.open(image)
    s.annotate(4, label[4])
    before, cases, n = _snapshot(s), eng.counters["cases"], len(eng.replay)
    with pytest.raises(err):
        s.commit(final_mask=bad(label))
    assert _same(before, _snapshot(s)) and eng.counters["cases"] == cases and len(eng.replay) == n
    s.commit()  # still open: an ordinary commit works
    assert eng.counters["cases"] == cases + 1
