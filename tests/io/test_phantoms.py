"""Determinism and property ranges of the generated phantom stream."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from engine.errors import InputError
from engine.io.phantoms import PHANTOM_SPACING, phantom_case, phantom_stream


def _extent_fraction(label: np.ndarray, axis: int) -> float:
    other = tuple(a for a in range(3) if a != axis)
    return float(label.any(axis=other).mean())


def test_deterministic_per_seed() -> None:
    a, b, c = phantom_case(3), phantom_case(3), phantom_case(4)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    assert not np.array_equal(a.label, c.label)
    assert a.name == "phantom_3"


@pytest.mark.parametrize("seed", range(12))
def test_property_ranges(seed: int) -> None:
    case = phantom_case(seed)
    img, lab = case.image, case.label
    assert img.shape == lab.shape == (40, 72, 64)
    assert img.dtype == np.float32 and lab.dtype == np.uint8
    assert set(np.unique(lab)) == {0, 1}
    assert case.spacing == (PHANTOM_SPACING,) * 3 and case.axis == 0
    assert 0.05 <= lab.mean() <= 0.20
    assert 0.60 <= _extent_fraction(lab, 0) <= 0.85
    assert abs(float(img.mean())) < 1e-4 and abs(float(img.std()) - 1.0) < 1e-3  # z-score
    assert np.all(np.isfinite(img))
    inside, outside = img[lab == 1], img[lab == 0]
    assert inside.mean() - outside.mean() > 1.5  # object brighter than background
    sizes = np.bincount(ndimage.label(lab)[0].ravel())[1:]
    assert sizes.max() >= 0.95 * lab.sum()  # one connected object


def test_texture_has_distractors_noise_and_bias() -> None:
    case = phantom_case(0)
    img, lab = case.image, case.label.astype(bool)
    near = ndimage.binary_dilation(lab, iterations=12) & ~ndimage.binary_dilation(lab, iterations=2)
    far = ~ndimage.binary_dilation(lab, iterations=12)
    background, obj = np.median(img[far]), np.median(img[lab])
    # distractors: voxels near the object, brighter than background, dimmer than the object
    between = (img[near] > background + 0.35 * (obj - background)) & (img[near] < obj)
    assert between.mean() > 0.02
    assert img[far].std() > 0.05  # noise and bias: the background is not flat


@pytest.mark.parametrize("shape,axis", [((72, 64, 40), 2), ((48, 36, 56), 1)])
def test_other_axes_and_shapes(shape, axis) -> None:
    case = phantom_case(7, shape=shape, axis=axis)
    assert case.image.shape == shape and case.axis == axis
    assert 0.60 <= _extent_fraction(case.label, axis) <= 0.85
    assert 0.05 <= case.label.mean() <= 0.20


def test_stream() -> None:
    cases = list(phantom_stream(3, seed=5))
    assert [c.name for c in cases] == ["phantom_5_0", "phantom_5_1", "phantom_5_2"]
    np.testing.assert_array_equal(cases[1].image, phantom_case((5, 1)).image)
    other = next(phantom_stream(1, seed=6))
    assert not np.array_equal(other.label, cases[0].label)
    assert list(phantom_stream(0)) == []


def test_bad_arguments() -> None:
    with pytest.raises(InputError):
        phantom_case(0, shape=(8, 64, 64))
    with pytest.raises(InputError):
        phantom_case(0, shape=(40, 72))
    with pytest.raises(InputError):
        phantom_case(0, axis=3)
    for seed in (-1, 1.5, "3", (), (1, -2), True):
        with pytest.raises(InputError):
            phantom_case(seed)
    with pytest.raises(InputError):
        list(phantom_stream(-1))
