"""Self-configuration (DESIGN §5a): the plan follows the data, overrides win, the
engine plans at its first learning, saves the plan, and refuses mid-stream changes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import engine
from engine import errors as E
from engine.io import phantom_case, thick_slices
from engine.learn import LearnConfig
from engine.learn.plan import Fingerprint, grid_size, make_plan
from engine.learn.resample import resample

CPU = torch.device("cpu")


def _fingerprint(case, axis=0, drawn=3):
    img = torch.from_numpy(np.moveaxis(case.image, axis, 0).copy())
    lab = torch.from_numpy(np.moveaxis(case.label, axis, 0).copy()).float()
    others = [a for a in range(3) if a != axis]
    sp = (case.spacing[axis], case.spacing[others[0]], case.spacing[others[1]])
    fp = Fingerprint()
    fp.observe_image(img, sp)
    zs = torch.nonzero(lab.sum((1, 2))).reshape(-1)
    lo, hi = int(zs[0]), int(zs[-1])
    picks = np.linspace(lo, hi, drawn + 2)[1:-1].round().astype(int)
    fp.observe_object(img, {int(z): lab[z] for z in picks}, sp, (lo, hi))
    return fp


@pytest.fixture(scope="module")
def phantom():
    return phantom_case(3, shape=(40, 64, 56))


def test_isotropic_data_keeps_the_native_grid_and_an_isotropic_net(phantom):
    plan = make_plan(_fingerprint(phantom), LearnConfig(), CPU)
    lc = plan.learn
    assert lc.target_spacing == (1.25, 1.25, 1.25)
    assert lc.strides == ((2, 2, 2),) * 3 and lc.kernels == ((3, 3, 3),) * 4
    assert lc.normalize == "robust_zscore" and lc.batch_size == 2
    assert np.prod(lc.patch) <= 32 * 48 * 48 and all(p <= n for p, n in zip(lc.patch, (40, 64, 56)))
    assert any("target spacing" in r for r in plan.reasons) and "segmenter plan" in plan.describe()


def test_thick_slices_get_no_pooling_and_1x3x3_kernels_across_them(phantom):
    thick = thick_slices(phantom, 4, 0)  # 10 slices of 5 mm
    lc = make_plan(_fingerprint(thick), LearnConfig(), CPU).learn
    assert lc.target_spacing[0] == 5.0  # the thick axis is never resampled
    assert lc.kernels[0] == (1, 3, 3) and lc.strides[0] == (1, 2, 2)
    assert lc.patch[0] == 10  # every slice: they are few
    very = thick_slices(phantom_case(4, shape=(64, 64, 56)), 16, 0)  # 4 slices of 20 mm: 2D-like
    plan = make_plan(_fingerprint(very, drawn=2), LearnConfig(), CPU)
    assert all(k[0] == 1 for k in plan.learn.kernels) and all(s[0] == 1 for s in plan.learn.strides)
    assert any("2D-like" in r for r in plan.reasons)


def test_a_finely_resolved_object_is_resampled_coarser():
    case = phantom_case(5, shape=(40, 64, 56))
    fine = engine.io.Case(case.name, case.image, case.label, (0.5, 0.5, 0.5), 0)  # same voxels, 0.5 mm
    big = engine.io.Case(
        case.name,
        np.repeat(np.repeat(np.repeat(case.image, 4, 0), 4, 1), 4, 2),
        np.repeat(np.repeat(np.repeat(case.label, 4, 0), 4, 1), 4, 2),
        (0.3125,) * 3,
        0,
    )
    assert make_plan(_fingerprint(fine), LearnConfig(), CPU).learn.target_spacing == (0.5, 0.5, 0.5)
    plan = make_plan(_fingerprint(big), LearnConfig(), CPU)
    lc = plan.learn
    k = lc.target_spacing[0] / 0.3125
    assert (
        k >= 2 and k == 2 ** round(np.log2(k)) and lc.target_spacing[0] == lc.target_spacing[1] == lc.target_spacing[2]
    )
    assert any("coarser" in r for r in plan.reasons)
    assert grid_size((160, 256, 224), (0.3125,) * 3, lc.target_spacing) == tuple(
        int(round(n / k)) for n in (160, 256, 224)
    )


def test_ct_like_intensities_get_a_fixed_foreground_window(phantom):
    hu = engine.io.Case(phantom.name, np.round(phantom.image * 300.0 - 100.0), phantom.label, phantom.spacing, 0)
    lc = make_plan(_fingerprint(hu), LearnConfig(), CPU).learn
    assert lc.normalize == "ct" and lc.ct_window[0] < lc.ct_window[1] and lc.ct_window[3] > 0
    from engine.learn.models import normalize_intensity

    x = normalize_intensity(torch.tensor([-5000.0, 0.0, 5000.0]), "ct", window=lc.ct_window)
    assert float(x[0]) == pytest.approx((lc.ct_window[0] - lc.ct_window[2]) / lc.ct_window[3], rel=1e-5)


def test_every_field_set_in_learnconfig_wins(phantom):
    given = LearnConfig(
        patch=(8, 16, 16),
        batch_size=3,
        normalize="zscore",
        target_spacing=(2.0, 2.0, 2.0),
        strides=((1, 2, 2),) * 3,
        kernels=((1, 3, 3),) * 4,
    )
    lc = make_plan(_fingerprint(phantom), given, CPU).learn
    assert (lc.patch, lc.batch_size, lc.normalize, lc.target_spacing) == ((8, 16, 16), 3, "zscore", (2.0, 2.0, 2.0))
    assert lc.strides == ((1, 2, 2),) * 3 and lc.kernels == ((1, 3, 3),) * 4


def test_resample_round_trip_shapes():
    x = torch.rand(10, 20, 18)
    down = resample(x, (5, 10, 9))
    assert down.shape == (5, 10, 9) and float(down.mean()) == pytest.approx(float(x.mean()), rel=1e-5)
    assert resample(down, (10, 20, 18)).shape == (10, 20, 18)
    assert resample(x, (10, 20, 18)) is x


def _tiny(**kw):
    learn = LearnConfig(base_width=4, depth=2, precision="fp32", channels_last=False, patch_voxels=4 * 16 * 16, **kw)
    return engine.Config(device="cpu", learn=learn, steps=2, replay_capacity=16, replay_patches_per_case=4)


def _session_round(eng, case, axis=0, steps=2):
    s = eng.open(case.image, spacing=case.spacing, axis=axis)
    lab = np.moveaxis(case.label, axis, 0)
    zs = np.nonzero(lab.any((1, 2)))[0]
    s.set_extent(int(zs[0]), int(zs[-1]))
    for z in s.propose(3):
        s.annotate(z, np.take(case.label, z, axis=axis))
    s.propagate()
    s.learn(steps)
    return s


def test_engine_plans_at_the_first_learning_saves_the_plan_and_refuses_changes(tmp_path):
    thick = thick_slices(phantom_case(6, shape=(40, 48, 40)), 4, 0)
    eng = engine.Engine(_tiny())
    assert not eng.planned
    s = eng.open(thick.image, spacing=thick.spacing, axis=0)
    assert float(np.abs(s.predict()).max()) == 0.0  # nothing learned yet: background
    s.close()
    s = _session_round(eng, thick)
    assert eng.planned and eng.plan.learn.kernels[0] == (1, 3, 3)
    assert eng.trainer.config.patch == eng.plan.learn.patch
    s.commit()
    eng.save(tmp_path / "e")
    back = engine.Engine.load(tmp_path / "e")
    assert back.plan.to_dict() == eng.plan.to_dict()
    assert back.fingerprint.to_dict() == eng.fingerprint.to_dict()
    np.testing.assert_array_equal(
        back.predict(thick.image, spacing=thick.spacing), eng.predict(thick.image, spacing=thick.spacing)
    )
    with pytest.raises(E.InputError, match="cannot change on a running engine"):
        eng.reconfigure(learn=LearnConfig(patch=(4, 8, 8)))


def test_an_unplanned_engine_saves_and_loads(tmp_path):
    eng = engine.Engine(_tiny())
    case = phantom_case(7, shape=(24, 32, 32))
    eng.open(case.image, spacing=case.spacing).close()
    eng.save(tmp_path / "u")
    back = engine.Engine.load(tmp_path / "u")
    assert not back.planned and back.fingerprint.images == 1 and back.counters == eng.counters


def test_a_finer_case_is_learned_on_the_planned_grid():
    case = phantom_case(8, shape=(24, 32, 28))
    fine = engine.io.Case(
        case.name,
        np.repeat(np.repeat(np.repeat(case.image, 4, 0), 4, 1), 4, 2),
        np.repeat(np.repeat(np.repeat(case.label, 4, 0), 4, 1), 4, 2),
        (0.2,) * 3,
        0,
    )
    eng = engine.Engine(_tiny(target_spacing=(0.8, 0.8, 0.8)))  # 4x coarser than the case
    s = _session_round(eng, fine)
    assert eng.grid(s.image.shape, (0.2,) * 3) == (24, 32, 28)
    assert eng.replay.patch == eng.trainer.patch and len(eng.replay) == 0
    p = s.predict()
    assert p.shape == fine.image.shape and np.isfinite(p).all()
    r = s.result()
    assert r.shape == fine.image.shape and set(np.unique(r)) <= {0, 1}
    s.commit()
    assert len(eng.replay) == 4  # patches of the coarse grid
