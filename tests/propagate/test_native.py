"""Native demons registration: building blocks and recovery of known deformations."""

import numpy as np
import pytest
import torch

from engine.errors import InputError, ShapeError
from engine.ops import warp2d
from engine.propagate.native import (
    NativeParams,
    demons_register,
    gaussian_smooth,
    image_gradient,
    invert_field,
    register_stack,
)

from ._util import smooth_field, smooth_texture


def test_gaussian_smooth_matches_scipy():
    from scipy import ndimage

    x = torch.rand(2, 2, 30, 25, generator=torch.Generator().manual_seed(0))
    for sigma in (0.7, 1.0, 1.5):
        got = gaussian_smooth(x, sigma)
        r = int(np.ceil(2 * sigma))
        want = ndimage.gaussian_filter(x.numpy(), (0, 0, sigma, sigma), mode="nearest", truncate=r / sigma)
        np.testing.assert_allclose(got.numpy(), want, atol=1e-5)
    c = torch.full((1, 2, 9, 9), 3.0)
    torch.testing.assert_close(gaussian_smooth(c, 1.5), c)
    assert gaussian_smooth(x, 0.0) is x


def test_image_gradient_of_ramp():
    y, x = torch.meshgrid(torch.arange(6.0), torch.arange(7.0), indexing="ij")
    g = image_gradient((2 * y + 3 * x)[None, None])
    torch.testing.assert_close(g[0, 0], torch.full((6, 7), 2.0))
    torch.testing.assert_close(g[0, 1], torch.full((6, 7), 3.0))


@pytest.mark.parametrize("amplitude", [1.5, 3.0])
def test_demons_recovers_smooth_deformation(amplitude):
    h, w = 64, 56
    moving = torch.from_numpy(smooth_texture(h, w, seed=3))[None, None]
    u_true = smooth_field(h, w, amplitude)
    fixed = warp2d(moving, u_true, "bilinear", "border")
    u = demons_register(fixed, moving, NativeParams(iterations=(40, 40, 30)))
    inner = (slice(None), slice(None), slice(6, -6), slice(6, -6))  # away from the border
    err = (u - u_true)[inner].norm(dim=1)
    before = u_true[inner].norm(dim=1)
    assert err.mean() < 0.2 * before.mean(), (float(err.mean()), float(before.mean()))
    assert err.mean() < 0.35
    resid = (warp2d(moving, u, "bilinear", "border") - fixed).abs()[inner].mean()
    assert resid < 0.25 * (moving - fixed).abs()[inner].mean()


def test_batch_is_independent_pairs():
    h, w = 40, 36
    m1 = torch.from_numpy(smooth_texture(h, w, seed=4))[None, None]
    m2 = torch.from_numpy(smooth_texture(h, w, seed=5))[None, None]
    u1, u2 = smooth_field(h, w, 2.0, seed=6), smooth_field(h, w, 1.0, seed=7)
    f1 = warp2d(m1, u1, "bilinear", "border")
    f2 = warp2d(m2, u2, "bilinear", "border")
    free = NativeParams(pair_coupling=0.0)
    both = demons_register(torch.cat([f1, f2]), torch.cat([m1, m2]), free)
    torch.testing.assert_close(both[:1], demons_register(f1, m1, free), atol=1e-4, rtol=0)
    torch.testing.assert_close(both[1:], demons_register(f2, m2, free), atol=1e-4, rtol=0)
    # with coupling, groups keep runs apart: two groups of one pair each are uncoupled
    coupled = NativeParams(pair_coupling=0.1)
    grouped = demons_register(torch.cat([f1, f2]), torch.cat([m1, m2]), coupled, groups=2)
    torch.testing.assert_close(grouped[:1], demons_register(f1, m1, coupled), atol=1e-4, rtol=0)
    with pytest.raises(InputError):
        demons_register(torch.cat([f1, f2]), torch.cat([m1, m2]), coupled, groups=3)


def test_pair_coupling_averages_neighbours():
    from engine.propagate.native import _couple_pairs

    u = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 2, 3, 3).contiguous()
    out = _couple_pairs(u, 0.25, 1)
    # interior: 0.5 u[n] + 0.25 (u[n-1] + u[n+1]) = u[n] on a linear ramp; mirrored ends
    torch.testing.assert_close(out[:, 0, 0, 0], torch.tensor([0.5, 1.0, 2.0, 2.5]))
    halves = _couple_pairs(torch.cat([u, u]), 0.25, 2)
    torch.testing.assert_close(halves[4:], out)


def test_invert_field_composes_to_identity():
    u = smooth_field(48, 40, 2.5)
    v = invert_field(u, 15)
    # pull back by u then by v: (u o v)(q) = v(q) + u(q + v(q)) ~ 0
    comp = v + warp2d(u, v, "bilinear", "border")
    assert comp[..., 4:-4, 4:-4].abs().max() < 0.05


def test_register_stack_identity_volume_gives_zero_fields():
    img = torch.from_numpy(smooth_texture(32, 30, seed=8)).expand(5, 32, 30).contiguous()
    fwd, bwd = register_stack(img)
    assert fwd.shape == bwd.shape == (4, 2, 32, 30)
    assert fwd.abs().max() < 1e-5 and bwd.abs().max() < 1e-5


def test_register_stack_both_directions_and_small_sizes():
    img = torch.from_numpy(np.stack([smooth_texture(20, 18, seed=s) for s in range(3)]))
    fwd, bwd = register_stack(img, NativeParams(direction="both", iterations=(5, 5, 5)))
    assert fwd.shape == (2, 2, 20, 18) and torch.isfinite(fwd).all() and torch.isfinite(bwd).all()
    one = register_stack(img[:1])
    assert one[0].shape == (0, 2, 20, 18)
    tiny = register_stack(torch.rand(3, 3, 2), NativeParams(iterations=(3, 3, 3)))  # no pyramid possible
    assert tiny[0].shape == (2, 2, 3, 2) and torch.isfinite(tiny[0]).all()


def test_params_and_input_validation():
    with pytest.raises(InputError):
        NativeParams(iterations=())
    with pytest.raises(InputError):
        NativeParams(max_step_mm=0)
    with pytest.raises(InputError):
        NativeParams(direction="sideways")
    with pytest.raises(InputError):
        NativeParams(force="magnetic")
    with pytest.raises(ShapeError):
        register_stack(torch.zeros(4, 4))
    with pytest.raises(ShapeError):
        demons_register(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 9))
    with pytest.raises(InputError):
        register_stack(np.zeros((3, 8, 8)))


@pytest.mark.gpu
def test_cuda_matches_cpu():
    img = torch.from_numpy(np.stack([smooth_texture(40, 36, seed=s) for s in range(4)]))
    f_cpu, b_cpu = register_stack(img)
    f_gpu, b_gpu = register_stack(img.cuda())
    torch.testing.assert_close(f_gpu.cpu(), f_cpu, atol=2e-3, rtol=0)
    torch.testing.assert_close(b_gpu.cpu(), b_cpu, atol=2e-3, rtol=0)


@pytest.mark.parametrize("shape", [(3, 1, 7, 5), (2, 1, 1, 6), (2, 1, 5, 1)])
def test_image_gradient_writes_every_entry(shape):
    from engine.propagate.native import image_gradient

    x = torch.rand(shape, generator=torch.Generator().manual_seed(0)) + 0.5
    ref = torch.zeros(shape[0], 2, *shape[2:])
    if shape[2] > 1:
        ref[:, 0] = torch.gradient(x[:, 0], dim=1, edge_order=1)[0]
    if shape[3] > 1:
        ref[:, 1] = torch.gradient(x[:, 0], dim=2, edge_order=1)[0]
    for _ in range(3):  # fresh allocations may reuse poisoned memory
        torch.full((shape[0], 2, *shape[2:]), float("nan"))
        torch.testing.assert_close(image_gradient(x), ref)


@pytest.mark.parametrize("factors", [(1, 1), (2, 2), (3, 2), (2, 5), (4, 3)])
@pytest.mark.parametrize("hw", [(1, 1), (1, 7), (5, 1), (2, 3), (9, 13), (37, 44)])
def test_integer_upsampling_by_views_is_the_gather_bit_for_bit(factors, hw):
    """_fields_up reads shifted views instead of index_select: the same bits as
    _resize_fields (which the torch-free path reproduces), on random odd shapes."""
    from engine.propagate.native import _resize_fields, _upsample_axis

    g = torch.Generator().manual_seed(hash((factors, hw)) % 2**31)
    u = torch.randn(3, 2, *hw, generator=g) * 4
    f0, f1 = factors
    want = _resize_fields(u, (hw[0] * f0, hw[1] * f1))
    got = _upsample_axis(_upsample_axis(u, f1, 3), f0, 2)
    assert got.shape == want.shape and torch.equal(got, want)
