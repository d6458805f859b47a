"""Dice, boundary counting (numba == numpy), effort measures and Hausdorff-95."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import InputError, MaskError, ShapeError, SliceIndexError
from engine.eval import metrics as M


def _cube(shape=(6, 8, 8), lo=(1, 2, 2), hi=(5, 6, 6)) -> np.ndarray:
    m = np.zeros(shape, dtype=np.uint8)
    m[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = 1
    return m


def test_dice_known_cases() -> None:
    a = np.zeros((4, 4, 4), bool)
    assert M.dice(a, a) == 1.0  # empty / empty
    b = a.copy()
    b[0, 0, 0] = True
    assert M.dice(a, b) == 0.0 and M.dice(b, a) == 0.0
    assert M.dice(b, b) == 1.0
    p = np.zeros((10,), np.uint8)
    t = np.zeros((10,), np.uint8)
    p[:4], t[2:8] = 1, 1  # |P|=4, |T|=6, overlap 2 -> 4/10
    assert M.dice(p, t) == pytest.approx(0.4)
    assert M.dice(p.astype(np.float32), t) == pytest.approx(0.4)


def test_dice_accepts_tensors() -> None:
    torch = pytest.importorskip("torch")
    m = _cube()
    assert M.dice(torch.from_numpy(m), m) == 1.0


def test_dice_rejects_bad_masks() -> None:
    with pytest.raises(MaskError, match="not binary"):
        M.dice(np.full((3, 3), 0.7), np.zeros((3, 3)))
    with pytest.raises(MaskError):
        M.dice(np.array([0.0, np.nan]), np.zeros(2))
    with pytest.raises(ShapeError):
        M.dice(np.zeros((3, 3)), np.zeros((3, 4)))


def test_per_slice_dice() -> None:
    gt = _cube()
    pred = gt.copy()
    pred[2] = 0  # slice 2 missed entirely
    pred[3, 2:4] = 0  # slice 3: half of 16 pixels -> 2*8/(8+16)
    d = M.per_slice_dice(pred, gt, axis=0)
    assert d.shape == (6,)
    np.testing.assert_allclose(d, [1.0, 1.0, 0.0, 2 * 8 / 24, 1.0, 1.0])
    assert np.isnan(M.per_slice_dice(pred, gt, axis=0, empty=np.nan)[0])
    d2 = M.per_slice_dice(np.moveaxis(pred, 0, 2), np.moveaxis(gt, 0, 2), axis=2)
    np.testing.assert_allclose(d2, d)
    with pytest.raises(InputError):
        M.per_slice_dice(pred, gt, axis=3)


def test_boundary_of_hand_built_slices() -> None:
    sq = np.zeros((5, 5), np.uint8)
    sq[1:4, 1:4] = 1  # 3x3 square: 8 boundary pixels, 1 interior
    assert M.slice_boundary(sq).sum() == 8
    full = np.ones((4, 5), np.uint8)  # the image edge counts as background
    assert M.slice_boundary(full).sum() == 4 * 5 - 2 * 3
    line = np.zeros((5, 5), np.uint8)
    line[2, :] = 1
    assert M.slice_boundary(line).sum() == 5
    plus = np.zeros((5, 5), np.uint8)
    plus[2, 1:4] = plus[1:4, 2] = 1  # the centre has all 4 neighbours
    assert M.slice_boundary(plus).sum() == 4
    stack = np.stack([sq, np.ones((5, 5), np.uint8), line])
    for backend in ("numba", "numpy", "auto"):
        np.testing.assert_array_equal(M.boundary_counts(stack, 0, backend), [8, 16, 5])
    assert M.boundary_counts(sq)[0] == 8  # 2D input


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_numba_equals_numpy_on_random_masks(axis: int) -> None:
    rng = np.random.default_rng(axis)
    for density in (0.1, 0.5, 0.9):
        m = rng.random((9, 13, 11)) < density
        np.testing.assert_array_equal(M.boundary_counts(m, axis, "numba"), M.boundary_counts(m, axis, "numpy"))
    with pytest.raises(InputError):
        M.boundary_counts(m, axis, "cuda")


def test_effort_on_hand_built_masks() -> None:
    gt = _cube()  # slices 1..4 hold a 4x4 square: 12 boundary pixels each
    assert list(M.object_slices(gt, 0)) == [1, 2, 3, 4]
    e = M.annotation_effort(gt, [1, 3, 3], axis=0)  # repeats count once
    assert (e.n_drawn, e.n_object_slices, e.boundary_drawn, e.boundary_total) == (2, 4, 24, 48)
    assert e.slices == 0.5 and e.labor == 0.5
    assert M.slice_effort(gt, [0, 1], 0) == 0.5  # an empty drawn slice still counts
    assert M.labor(gt, [0, 1], 0) == 0.25
    assert M.labor(gt, range(6), 0) == 1.0
    # along axis 1 the slices are 4x4 (axes 0, 2) as well: rows 2..5
    assert M.labor(gt, [2], axis=1) == 0.25
    # a slice with a hole: the hole's rim is boundary too
    ring = np.zeros((1, 5, 5), np.uint8)
    ring[0, :, :] = 1
    ring[0, 2, 2] = 0
    assert M.boundary_counts(ring)[0] == 16 + 4
    with pytest.raises(SliceIndexError):
        M.labor(gt, [6], 0)
    with pytest.raises(SliceIndexError):
        M.labor(gt, [-1], 0)
    with pytest.raises(MaskError, match="empty"):
        M.slice_effort(np.zeros_like(gt), [0], 0)


def test_hausdorff95() -> None:
    a = _cube((10, 10, 10), (2, 2, 2), (6, 6, 6))
    assert M.hausdorff95(a, a) == 0.0
    b = np.roll(a, 2, axis=0)
    assert M.hausdorff95(a, b) == pytest.approx(2.0)
    assert M.hausdorff95(a, b, spacing=(0.5, 1.0, 1.0)) == pytest.approx(1.0)
    z = np.zeros_like(a)
    assert M.hausdorff95(z, z) == 0.0 and M.hausdorff95(a, z) == float("inf")
    with pytest.raises(InputError):
        M.hausdorff95(a, b, spacing=(1.0, 1.0))
