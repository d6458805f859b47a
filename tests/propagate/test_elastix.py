"""elastix backend on a tiny pair (skipped without itk-elastix)."""

import numpy as np
import pytest
import torch

from engine.errors import InputError
from engine.ops import warp2d

from ._util import smooth_field, smooth_texture

elastix = pytest.importorskip("engine.propagate.elastix")
if not elastix.available():
    pytest.skip("itk-elastix is not installed", allow_module_level=True)

QUICK = elastix.ElastixParams(iterations=60, resolutions=2, samples=1024)


def test_elastix_recovers_deformation_in_our_convention():
    h, w = 48, 40
    moving = smooth_texture(h, w, seed=11, sigma=2.5)
    u_true = smooth_field(h, w, 2.0)
    fixed = warp2d(torch.from_numpy(moving)[None, None], u_true, "bilinear", "border")[0, 0].numpy()
    u = elastix.register_pair(fixed, moving, QUICK)
    assert u.shape == (2, h, w) and u.dtype == np.float32
    inner = (slice(None), slice(6, -6), slice(6, -6))
    err = np.linalg.norm((u - u_true[0].numpy())[inner], axis=0).mean()
    assert err < 0.3 * np.linalg.norm(u_true[0].numpy()[inner], axis=0).mean(), err


def test_elastix_stack_shapes_and_proxy_backend():
    from engine.propagate import ElastixParams, ProxyBuilder

    img = np.stack([np.roll(smooth_texture(32, 28, seed=5, sigma=2.5), s, axis=1) for s in (0, 1, 2)])
    fwd, bwd = elastix.register_stack(img, QUICK)
    assert fwd.shape == bwd.shape == (2, 2, 32, 28)
    # slice z+1 is slice z shifted right by 1 px: pulling back from z reads 1 px to the left
    assert abs(np.median(fwd[:, 1, 6:-6, 6:-6]) + 1.0) < 0.2
    assert abs(np.median(bwd[:, 1, 6:-6, 6:-6]) - 1.0) < 0.2
    lab = np.zeros(img.shape, np.uint8)
    lab[0, 10:20, 8:16] = 1
    res = ProxyBuilder(img, backend="elastix", params=QUICK).propagate(lab, [0])
    assert res.proxy.shape == img.shape and res.seconds["register"] > 0
    with pytest.raises(InputError):
        ElastixParams(direction="up")


def test_registration_leaves_no_files_behind(tmp_path, monkeypatch):
    pytest.importorskip("itk")
    from engine.propagate.elastix import register_pair

    monkeypatch.chdir(tmp_path)
    g = np.random.default_rng(0)
    a = g.random((24, 20)).astype(np.float32)
    register_pair(a, np.roll(a, 1, 0))
    assert list(tmp_path.iterdir()) == []
