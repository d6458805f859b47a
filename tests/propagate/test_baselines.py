"""Proxy baselines on hand-made shapes."""

import numpy as np
import pytest

from engine.errors import MaskError, ShapeError, SliceIndexError
from engine.propagate.baselines import (
    BASELINES,
    morphological_contour_interpolation,
    nearest_slice_copy,
    signed_distance_2d,
    signed_distance_interpolation,
)

from ._util import dice, disc


def _two_discs(D=9, H=40, W=40, r0=6, r1=14):
    lab = np.zeros((D, H, W), np.uint8)
    lab[1] = disc(H, W, 20, 20, r0)
    lab[D - 2] = disc(H, W, 20, 20, r1)
    return lab


def test_nearest_slice_copy():
    lab = _two_discs()
    out = nearest_slice_copy(lab, [1, 7])
    np.testing.assert_array_equal(out[2], lab[1])
    np.testing.assert_array_equal(out[4], lab[1])  # tie (distance 3 both): the lower slice
    np.testing.assert_array_equal(out[5], lab[7])
    np.testing.assert_array_equal(out[0], lab[1])  # no extent: copies to the ends
    ext = nearest_slice_copy(lab, [1, 7], extent=(1, 7))
    assert ext[0].max() == 0 and ext[8].max() == 0
    assert out.dtype == np.float32


def test_signed_distance_grows_radius_linearly():
    lab = _two_discs()
    out = signed_distance_interpolation(lab, [1, 7])
    areas = [(out[z] >= 0.5).sum() for z in range(1, 8)]
    assert all(a < b for a, b in zip(areas, areas[1:]))
    np.testing.assert_array_equal(out[1], lab[1])
    r_mid = np.sqrt((out[4] >= 0.5).sum() / np.pi)
    assert abs(r_mid - 10) < 0.7  # halfway between radii 6 and 14
    assert out[0].max() == 0 and out[8].max() == 0  # no extrapolation
    assert ((out >= 0) & (out <= 1)).all()


def test_signed_distance_towards_empty_slice_shrinks():
    lab = np.zeros((5, 30, 30), np.uint8)
    lab[0] = disc(30, 30, 15, 15, 8)
    out = signed_distance_interpolation(lab, [0, 4])
    areas = [(out[z] >= 0.5).sum() for z in range(5)]
    assert areas[0] > areas[1] > areas[2] >= areas[3] and areas[4] == 0
    d = signed_distance_2d(lab[0])
    assert d[15, 15] < 0 and d[0, 0] > 0
    assert (signed_distance_2d(np.zeros((4, 4))) == 8).all()


def test_morphological_contour_interpolation_between_slices():
    lab = _two_discs()
    for axis in (0, 1, 2):
        moved = np.moveaxis(lab, 0, axis)
        out = morphological_contour_interpolation(moved, [1, 7], axis=axis)
        assert out.shape == moved.shape
        out0 = np.moveaxis(out, axis, 0)
        areas = [(out0[z] >= 0.5).sum() for z in range(1, 8)]
        assert areas[0] < areas[3] < areas[6]
        np.testing.assert_array_equal(out0[1], lab[1])
        assert out0[0].max() == 0 and out0[8].max() == 0
        assert dice(out0[4], disc(40, 40, 20, 20, 10)) > 0.85


def test_baselines_agree_on_identical_slices():
    lab = np.zeros((6, 24, 24), np.uint8)
    lab[0] = lab[5] = disc(24, 24, 12, 12, 5)
    for name, fn in BASELINES.items():
        out = fn(lab, [0, 5])
        for z in range(6):
            assert dice(out[z], lab[0]) > 0.97, (name, z)


def test_baseline_errors():
    lab = _two_discs()
    for fn in BASELINES.values():
        with pytest.raises(MaskError):
            fn(lab, [])
        with pytest.raises(SliceIndexError):
            fn(lab, [1, 9])
        with pytest.raises(MaskError):
            fn(lab * 3, [1, 7])
        with pytest.raises(ShapeError):
            fn(lab[0], [1])
        with pytest.raises(SliceIndexError):
            fn(lab, [1, 7], extent=(5, 2))
