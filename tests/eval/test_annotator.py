"""The simulated annotator: exact drawing, jitter bounds, islands, determinism, counts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from engine.errors import InputError, MaskError, ShapeError, SliceIndexError
from engine.eval.annotator import SimulatedAnnotator
from engine.eval.metrics import annotation_effort, boundary_counts
from engine.io.phantoms import phantom_case

CROSS = ndimage.generate_binary_structure(2, 1)


@pytest.fixture(scope="module")
def label() -> np.ndarray:
    return phantom_case(11).label  # (40, 72, 64), annotation axis 0


def _band(gt2d: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width`` (city-block) of the boundary of ``gt2d``."""
    gt = gt2d.astype(bool)
    grown = ndimage.binary_dilation(gt, CROSS, iterations=width)
    shrunk = ndimage.binary_erosion(gt, CROSS, iterations=width, border_value=0)
    return grown & ~shrunk


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_exact_drawing_and_extent(label: np.ndarray, axis: int) -> None:
    ann = SimulatedAnnotator(label, axis=axis)
    other = tuple(a for a in range(3) if a != axis)
    holding = np.flatnonzero(label.any(axis=other))
    assert ann.extent() == (holding[0], holding[-1])
    assert ann.n_slices == label.shape[axis]
    for z in (holding[0], holding[len(holding) // 2], holding[-1], 0):
        mask = ann.draw(z)
        assert mask.dtype == np.uint8
        np.testing.assert_array_equal(mask, np.take(label, z, axis=axis))


@pytest.mark.parametrize("width", [1, 2])
def test_jitter_stays_near_the_boundary(label: np.ndarray, width: int) -> None:
    ann = SimulatedAnnotator(label, axis=0, jitter=width, seed=3)
    first, last = ann.extent()
    changed = 0
    for z in range(first, last + 1):
        gt = label[z].astype(bool)
        drawn = ann.draw(z).astype(bool)
        diff = drawn ^ gt
        assert not np.any(diff & ~_band(gt, width)), f"slice {z} moved beyond {width} px"
        assert drawn.any()  # an object slice never comes back empty
        changed += int(diff.sum())
    assert changed > 0.05 * label.sum() / 40  # the outlines did move


def test_determinism_and_order_independence(label: np.ndarray) -> None:
    a = SimulatedAnnotator(label, jitter=1, miss_islands=0.5, seed=9)
    b = SimulatedAnnotator(label, jitter=1, miss_islands=0.5, seed=9)
    c = SimulatedAnnotator(label, jitter=1, miss_islands=0.5, seed=10)
    first, last = a.extent()
    zs = list(range(first, last + 1))
    forward = [a.draw(z) for z in zs]
    backward = [b.draw(z) for z in reversed(zs)][::-1]
    for fa, fb in zip(forward, backward):
        np.testing.assert_array_equal(fa, fb)
    np.testing.assert_array_equal(a.draw(zs[3]), forward[3])  # redrawing gives the same mask
    assert any(not np.array_equal(f, c.draw(z)) for f, z in zip(forward, zs))


def test_missing_small_islands() -> None:
    vol = np.zeros((3, 30, 30), np.uint8)
    vol[1, 2:20, 2:20] = 1  # main object, 324 px
    vol[1, 25:27, 25:27] = 1  # island, 4 px
    vol[1, 2:4, 25:28] = 1  # island, 6 px
    vol[1, 22:29, 2:9] = 1  # large second component, 49 px: kept
    vol[2, 5:7, 5:7] = 1  # a slice whose only component is small: kept (largest)
    always = SimulatedAnnotator(vol, miss_islands=1.0, island_size=20)
    drawn = always.draw(1)
    expected = vol[1].copy()
    expected[25:27, 25:27] = 0
    expected[2:4, 25:28] = 0
    np.testing.assert_array_equal(drawn, expected)
    np.testing.assert_array_equal(always.draw(2), vol[2])
    never = SimulatedAnnotator(vol, miss_islands=0.0)
    np.testing.assert_array_equal(never.draw(1), vol[1])
    # with p = 0.5, over many seeds both outcomes occur for an island
    kept = {int(SimulatedAnnotator(vol, miss_islands=0.5, seed=s).draw(1)[25, 25]) for s in range(20)}
    assert kept == {0, 1}


def test_counts_and_effort(label: np.ndarray) -> None:
    ann = SimulatedAnnotator(label, axis=0)
    first, last = ann.extent()
    picks = [first, (first + last) // 2, last, (first + last) // 2]
    stack = ann.draw_many(picks)
    assert stack.shape == (4, 72, 64)
    assert ann.drawn == sorted(set(picks)) and ann.slices_drawn == 3
    assert ann.boundary_drawn == int(boundary_counts(label, 0)[sorted(set(picks))].sum())
    assert ann.effort() == annotation_effort(label, picks, axis=0)
    jit = SimulatedAnnotator(label, axis=0, jitter=1, seed=1)
    jit.draw_many(picks)
    own = jit.effort()
    assert own.n_drawn == 3 and own.boundary_total == ann.effort().boundary_total
    assert abs(own.labor - ann.effort().labor) < 0.05  # jittered outlines, similar length
    ann.reset()
    assert ann.slices_drawn == 0 and ann.boundary_drawn == 0


def test_errors(label: np.ndarray) -> None:
    ann = SimulatedAnnotator(label)
    for bad in (-1, 40, 2.0, True):
        with pytest.raises(SliceIndexError):
            ann.draw(bad)
    with pytest.raises(MaskError):
        SimulatedAnnotator(label * 2)
    with pytest.raises(ShapeError):
        SimulatedAnnotator(label[0])
    for kwargs in (
        {"axis": 3},
        {"jitter": -1},
        {"jitter": 0.5},
        {"miss_islands": 1.5},
        {"seed": -2},
        {"island_size": 0},
    ):
        with pytest.raises(InputError):
            SimulatedAnnotator(label, **kwargs)
    empty = SimulatedAnnotator(np.zeros((4, 5, 6), np.uint8))
    assert not empty.draw(2).any()
    with pytest.raises(MaskError):
        empty.extent()
    with pytest.raises(MaskError):
        empty.effort()
