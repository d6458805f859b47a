"""compose2d: every backend pinned to the pure-torch reference, the reference pinned
to F.grid_sample, gradients, custom-op checks, and the properties a composition of
displacement fields must have.

* reference vs ``v + grid_sample(u, x + v)``; C++ vs reference on odd shapes,
  strided views, both dtypes and paddings, into poisoned buffers, both backward
  scheduling paths; the analytic reference backward vs autograd; float64 gradcheck
  (reference and C++); torch.library.opcheck; torch.compile.
* Triton launchers under TRITON_INTERPRET=1 on CPU tensors (tiny grids).
* ``@pytest.mark.gpu``: the CUDA kernels and compiled Triton on CUDA tensors.
* properties: ``u o 0 = u`` and ``0 o v = v`` exactly; a smooth field composed with
  its fixed-point inverse is the identity to well under 0.1 px; warping by ``u o v``
  equals warping by ``u`` then by ``v``.

Tolerances: tests/ops/_oracle.py (TOLERANCES / GRAD_TOLERANCES, with sources). The
fields are float32 or float64 only; the sum has 4 products plus the identity term.
"""

import sys

import pytest
import torch
import torch.nn.functional as F

import engine.ops  # noqa: F401  (registers dilseg::compose2d)
from engine import _backends
from engine.errors import DTypeError, InputError, NonFiniteError, ShapeError
from engine.ops import compose2d, compose2d_reference, warp2d_reference

from ._oracle import (
    GRAD_TOLERANCES, assert_close, has_kernel, kernel_dtype, load_backend, poisoned,
    rand, requires_cpu_ext, smooth_field,
)

CP = sys.modules["engine.ops.compose2d"]
DTYPES = [torch.float32, torch.float64]
PADS = ["border", "zeros"]
SHAPES = [(2, 2, 7, 9), (1, 2, 1, 11), (5, 2, 13, 6)]  # odd sizes, a 1-row field
LAYOUTS = ["contiguous", "strided", "channels_last"]


def _layout(t, layout):
    """A copy of ``t`` in ``layout``; the gaps of a strided view hold NaN."""
    if layout == "contiguous":
        return t.contiguous()
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    big = torch.full(t.shape[:-1] + (2 * t.shape[-1] + 1,), float("nan"), dtype=t.dtype, device=t.device)
    view = big[..., 1::2]
    view.copy_(t)
    return view


def _fields(shape, dtype=torch.float32, layout="contiguous", scale=3.0, seed=0, device="cpu"):
    u = ((rand(shape, torch.float64, seed=seed) * 2 - 1) * scale).to(dtype)
    v = ((rand(shape, torch.float64, seed=seed + 1) * 2 - 1) * scale).to(dtype)
    return _layout(u, layout).to(device), _layout(v, layout).to(device)


def _grid_sample_compose(u, v, padding):
    _, _, h, w = v.shape
    ys = torch.arange(h, dtype=v.dtype).view(1, h, 1)
    xs = torch.arange(w, dtype=v.dtype).view(1, 1, w)
    gy = (ys + v[:, 0]) * (2 / (h - 1)) - 1
    gx = (xs + v[:, 1]) * (2 / (w - 1)) - 1
    return v + F.grid_sample(u, torch.stack([gx, gy], -1), mode="bilinear", padding_mode=padding, align_corners=True)


def _expected_grads(g, u, v, padding):
    return CP.BACKWARD_IMPLS["reference"](g, u, v, padding, True, True)


def _impls():
    names = ["reference"]
    cpu = _backends.load("cpu")
    if cpu is not None and "compose2d" in cpu.ops:
        names.append("cpu")
    return names


# --- the reference ------------------------------------------------------------------------

@pytest.mark.parametrize("padding", PADS)
def test_reference_equals_grid_sample(padding):
    u, v = _fields((2, 2, 7, 9), torch.float64, scale=5.0)  # reaches outside: padding matters
    assert_close(compose2d_reference(u, v, padding), _grid_sample_compose(u, v, padding))


@pytest.mark.parametrize("padding", PADS)
def test_analytic_reference_backward_equals_autograd(padding):
    for shape in SHAPES:
        u, v = _fields(shape, torch.float64, "strided")
        g = rand(shape, torch.float64, low=-1, high=1, seed=7)
        u2, v2 = u.clone().requires_grad_(), v.clone().requires_grad_()
        exp_u, exp_v = torch.autograd.grad(compose2d_reference(u2, v2, padding), (u2, v2), g)
        got_u, got_v = _expected_grads(g, u, v, padding)
        assert_close(got_u, exp_u, table=GRAD_TOLERANCES)
        assert_close(got_v, exp_v, table=GRAD_TOLERANCES)


# --- C++ ------------------------------------------------------------------------------------

@requires_cpu_ext
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("padding", PADS)
def test_cpu_matches_reference(dtype, padding):
    for shape in SHAPES:
        for layout in LAYOUTS:
            u, v = _fields(shape, dtype, layout)
            expected = compose2d_reference(u, v, padding)
            got = CP.IMPLS["cpu"](u, v, padding)
            assert got.dtype == dtype and got.shape == expected.shape
            assert_close(got, expected, dtype, msg=f"{shape} {layout}")


@requires_cpu_ext
def test_cpu_kernel_writes_every_output_element():
    mod = load_backend("cpu")
    for dtype in DTYPES:
        u, v = _fields((3, 2, 9, 7), dtype, "strided")
        for padding in PADS:
            out = poisoned((3, 2, 9, 7), dtype)
            mod.compose2d_forward(u.data_ptr(), list(u.stride()), v.data_ptr(), list(v.stride()), out.data_ptr(),
                                  kernel_dtype(mod, dtype), CP._geom(v), CP._pad(mod, padding), 2)
            assert_close(out, compose2d_reference(u, v, padding), dtype)


@requires_cpu_ext
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("padding", PADS)
def test_cpu_backward_matches_reference(dtype, padding):
    for shape in SHAPES:
        u, v = _fields(shape, dtype, "strided")
        g = _layout(rand(shape, dtype, low=-1, high=1, seed=7), "channels_last")
        exp_u, exp_v = _expected_grads(g, u, v, padding)
        got_u, got_v = CP.BACKWARD_IMPLS["cpu"](g, u, v, padding, True, True)
        assert_close(got_u, exp_u, dtype, GRAD_TOLERANCES)
        assert_close(got_v, exp_v, dtype, GRAD_TOLERANCES)
        only_v = CP.BACKWARD_IMPLS["cpu"](g, u, v, padding, False, True)
        assert only_v[0].numel() == 0
        assert_close(only_v[1], exp_v, dtype, GRAD_TOLERANCES)
        only_u = CP.BACKWARD_IMPLS["cpu"](g, u, v, padding, True, False)
        assert only_u[1].numel() == 0
        assert_close(only_u[0], exp_u, dtype, GRAD_TOLERANCES)


@requires_cpu_ext
@pytest.mark.parametrize("nt", [1, 2, 3])
def test_cpu_backward_scheduling_paths(nt):
    """Direct calls with 1-3 threads: N = 7 images take the per-image path for
    nt <= 3, N = 1 the per-thread grad_u copies for nt > 1; grad_v is written
    completely into poison each time."""
    mod = load_backend("cpu")
    for shape in [(7, 2, 9, 8), (1, 2, 11, 10)]:
        u, v = _fields(shape, scale=4.0)
        g = rand(shape, low=-1, high=1, seed=5)
        exp_u, exp_v = _expected_grads(g, u, v, "zeros")
        gu, gv = torch.zeros(shape), poisoned(shape, torch.float32)
        mod.compose2d_backward(g.data_ptr(), list(g.stride()), u.data_ptr(), list(u.stride()), v.data_ptr(),
                               list(v.stride()), gu.data_ptr(), gv.data_ptr(), mod.DType.Float32, CP._geom(v),
                               mod.Padding.Zeros, nt)
        assert_close(gu, exp_u, table=GRAD_TOLERANCES)
        assert_close(gv, exp_v, table=GRAD_TOLERANCES)


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=requires_cpu_ext)])
@pytest.mark.parametrize("padding", PADS)
def test_gradcheck_float64(backend, padding, monkeypatch):
    monkeypatch.setenv("ENGINE_CPU_BACKEND", "reference" if backend == "reference" else "cpu")
    u = ((rand((1, 2, 5, 6), torch.float64, seed=1) * 2 - 1) * 2).requires_grad_()
    v = ((rand((1, 2, 5, 6), torch.float64, seed=2) * 2 - 1) * 1.5 + 0.37).requires_grad_()  # off the knots
    assert torch.autograd.gradcheck(lambda a, b: compose2d(a, b, padding), (u, v), atol=1e-7)


def test_autograd_through_op_matches_reference():
    u, v = _fields((3, 2, 8, 9), scale=3.0)
    u.requires_grad_()
    v.requires_grad_()
    g = rand((3, 2, 8, 9), low=-1, high=1, seed=3)
    gu, gv = torch.autograd.grad(compose2d(u, v), (u, v), g)
    u2, v2 = u.detach().clone().requires_grad_(), v.detach().clone().requires_grad_()
    ru, rv = torch.autograd.grad(compose2d_reference(u2, v2), (u2, v2), g)
    assert_close(gu, ru, table=GRAD_TOLERANCES)
    assert_close(gv, rv, table=GRAD_TOLERANCES)


@pytest.mark.parametrize("padding", PADS)
def test_opcheck(padding):
    u = ((rand((2, 2, 6, 7), seed=1) * 2 - 1) * 2).requires_grad_()
    v = ((rand((2, 2, 6, 7), seed=2) * 2 - 1) * 2 + 0.31).requires_grad_()
    torch.library.opcheck(torch.ops.dilseg.compose2d.default, (u, v, padding))
    g = rand((2, 2, 6, 7), seed=5)
    torch.library.opcheck(torch.ops.dilseg.compose2d_backward.default, (g, u.detach(), v.detach(), padding, True, True))


def test_compile_traces_through_fake():
    u, v = _fields((1, 2, 8, 9))
    fn = torch.compile(lambda a, b: compose2d(a, b, check_finite=False) * 2, backend="eager", fullgraph=True)
    assert_close(fn(u, v), compose2d_reference(u, v) * 2)


# --- properties -------------------------------------------------------------------------------

def test_zero_fields_are_identities():
    """u o 0 = u (u sampled at the pixel centres) and 0 o v = v, exactly."""
    for dtype in DTYPES:
        u, v = _fields((3, 2, 9, 8), dtype, "strided", scale=4.0)
        zero = torch.zeros(3, 2, 9, 8, dtype=dtype)
        for backend in _impls():
            for padding in PADS:
                assert torch.equal(CP.IMPLS[backend](u, zero, padding), u), (backend, dtype, padding)
                assert torch.equal(CP.IMPLS[backend](zero, v, padding), v), (backend, dtype, padding)


def _smooth(n, h, w, amplitude, seed):
    """A smooth field of max |displacement| = amplitude (pixels)."""
    f = smooth_field(n, h, w, amplitude=1.0, seed=seed).double()
    return f * (amplitude / f.abs().amax())


def test_composition_with_inverse_is_identity():
    """A smooth field of amplitude 2 px composed with its inverse (fixed-point
    iteration w <- -u(x + w)) on both sides is the zero field to well under 0.1 px
    (interior, away from where border extrapolation decides)."""
    u = _smooth(2, 48, 40, 2.0, seed=3)
    w = -u.clone()
    for _ in range(30):
        w = -(compose2d(u, w) - w)  # -u(x + w(x))
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4))
    for backend in _impls():
        right = CP.IMPLS[backend](u, w, "border")  # u o w: w(x) + u(x + w(x))
        left = CP.IMPLS[backend](w, u, "border")  # w o u: u(x) + w(x + u(x))
        assert right[inner].abs().max() < 1e-6, backend  # the fixed point itself
        err = left[inner].abs().max().item()
        assert err < 0.05, (backend, err)  # bilinear interpolation of w only


def test_warp_by_composition_equals_two_warps():
    """warp2d(warp2d(I, u), v) ~= warp2d(I, u o v) for a smooth image (interior)."""
    ys = torch.linspace(0, 3.0, 40).view(40, 1)
    xs = torch.linspace(0, 2.5, 44).view(1, 44)
    img = (torch.sin(ys) * torch.cos(xs) + 0.3 * ys).expand(1, 1, 40, 44).double().contiguous()
    u, v = _smooth(1, 40, 44, 2.0, seed=5), _smooth(1, 40, 44, 1.5, seed=6)
    two = warp2d_reference(warp2d_reference(img, u, "bilinear", "border"), v, "bilinear", "border")
    one = warp2d_reference(img, compose2d(u, v), "bilinear", "border")
    inner = (slice(None), slice(None), slice(5, -5), slice(5, -5))
    assert (two - one)[inner].abs().max() < 5e-3


def test_border_extrapolates_zeros_does_not():
    u = torch.ones(1, 2, 5, 6) * torch.tensor([0.5, -0.25]).view(1, 2, 1, 1)
    v = torch.zeros(1, 2, 5, 6)
    v[0, 1, 2, 5] = 3.0  # samples u three pixels right of the last column
    for backend in _impls():
        b = CP.IMPLS[backend](u, v, "border")
        z = CP.IMPLS[backend](u, v, "zeros")
        assert torch.allclose(b[0, :, 2, 5], torch.tensor([0.5, 2.75]))  # border value + 3
        assert torch.allclose(z[0, :, 2, 5], torch.tensor([0.0, 3.0]))  # u reads 0 outside


def test_nonfinite_positions_stay_memory_safe():
    u, v = _fields((1, 2, 6, 6))
    v = v.clone()
    v[0, 0, 2, 3] = float("nan")
    v[0, 1, 4, 4] = float("inf")
    for backend in _impls():
        for padding in PADS:
            out = CP.IMPLS[backend](u, v, padding)
            finite = torch.isfinite(v).all(1, keepdim=True).expand_as(out)
            assert torch.isfinite(out[finite]).all()  # non-finite only where v itself is
    with pytest.raises(NonFiniteError):
        compose2d(u, v)


# --- validation ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "make,err",
    [
        (lambda: (torch.zeros(2, 8, 8), torch.zeros(2, 2, 8, 8)), ShapeError),
        (lambda: (torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8)), ShapeError),
        (lambda: (torch.zeros(2, 2, 8, 8), torch.zeros(3, 2, 8, 8)), ShapeError),
        (lambda: (torch.zeros(2, 2, 8, 7), torch.zeros(2, 2, 8, 8)), ShapeError),
        (lambda: (torch.zeros(2, 2, 0, 8), torch.zeros(2, 2, 0, 8)), ShapeError),
        (lambda: (torch.zeros(2, 2, 8, 8, dtype=torch.float16), torch.zeros(2, 2, 8, 8)), DTypeError),
        (lambda: (torch.zeros(2, 2, 8, 8), torch.zeros(2, 2, 8, 8, dtype=torch.float64)), DTypeError),
        (lambda: (torch.full((2, 2, 8, 8), float("inf")), torch.zeros(2, 2, 8, 8)), NonFiniteError),
        (lambda: ([[1.0]], torch.zeros(2, 2, 8, 8)), InputError),
    ],
)
def test_bad_input_raises_typed_error(make, err):
    u, v = make()
    with pytest.raises(err):
        compose2d(u, v)


def test_bad_padding():
    with pytest.raises(InputError):
        compose2d(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3), padding="reflect")


# --- Triton, interpreter on CPU tensors -------------------------------------------------------------

@pytest.fixture
def interp(monkeypatch):
    """The Triton launchers with the interpreter (CPU tensors)."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    _backends.reset()
    mod = _backends.load("triton")
    assert mod is not None, _backends.status("triton").detail
    assert has_kernel("compose2d", "triton")
    return mod


@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_interpreter(interp, dtype):
    for padding in PADS:
        for shape in [(2, 2, 5, 7), (1, 2, 1, 6)]:
            for layout in ("contiguous", "strided"):
                u, v = _fields(shape, dtype, layout)
                big = poisoned(shape[:3] + (2 * shape[3] + 1,), dtype)
                out = big[..., 1::2]  # a strided output: the gaps must stay poisoned
                interp.compose2d_forward(u, v, out, border=padding == "border")
                assert_close(out, compose2d_reference(u, v, padding), dtype, msg=f"{padding} {shape} {layout}")
                assert torch.isnan(big[..., 0::2]).all()
                g = rand(shape, dtype, low=-1, high=1, seed=7)
                exp_u, exp_v = _expected_grads(g, u, v, padding)
                gu, gv = torch.zeros(shape, dtype=dtype), poisoned(shape, dtype)
                interp.compose2d_backward(g, u, v, gu, gv, border=padding == "border")
                assert_close(gu, exp_u, dtype, GRAD_TOLERANCES)
                assert_close(gv, exp_v, dtype, GRAD_TOLERANCES)


def test_triton_through_impl_tables(interp):
    u, v = _fields((2, 2, 5, 7), layout="strided")
    zero = torch.zeros(2, 2, 5, 7)
    assert torch.equal(CP.IMPLS["triton"](u, zero, "border"), u)
    assert torch.equal(CP.IMPLS["triton"](zero, v, "border"), v)
    g = rand((2, 2, 5, 7), low=-1, high=1, seed=3)
    exp_u, exp_v = _expected_grads(g, u, v, "zeros")
    got_u, got_v = CP.BACKWARD_IMPLS["triton"](g, u, v, "zeros", True, False)
    assert got_v.numel() == 0
    assert_close(got_u, exp_u, table=GRAD_TOLERANCES)
    got_u, got_v = CP.BACKWARD_IMPLS["triton"](g, u, v, "zeros", False, True)
    assert got_u.numel() == 0
    assert_close(got_v, exp_v, table=GRAD_TOLERANCES)


# --- CUDA tensors: the CUDA kernels and compiled Triton ----------------------------------------------

def _gpu_backend(monkeypatch, backend):
    monkeypatch.setenv("ENGINE_GPU_BACKEND", backend)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    _backends.reset()
    mod = _backends.load(backend)
    if mod is None or not has_kernel("compose2d", backend):
        pytest.skip(f"{backend} backend not available: {_backends.status(backend).detail}")
    return mod


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_matches_reference(monkeypatch, backend, dtype):
    _gpu_backend(monkeypatch, backend)
    for padding in PADS:
        for shape in SHAPES + [(4, 2, 32, 40)]:
            for layout in LAYOUTS:
                u, v = _fields(shape, dtype, layout, device="cuda")
                msg = f"{padding} {shape} {layout}"
                assert_close(CP.IMPLS[backend](u, v, padding), compose2d_reference(u, v, padding), dtype, msg=msg)
                g = _layout(rand(shape, dtype, low=-1, high=1, seed=7), layout).cuda()
                exp_u, exp_v = _expected_grads(g, u, v, padding)
                got_u, got_v = CP.BACKWARD_IMPLS[backend](g, u, v, padding, True, True)
                assert_close(got_u, exp_u, dtype, GRAD_TOLERANCES, msg=msg)
                assert_close(got_v, exp_v, dtype, GRAD_TOLERANCES, msg=msg)
                only_v = CP.BACKWARD_IMPLS[backend](g, u, v, padding, False, True)
                assert only_v[0].numel() == 0
                assert_close(only_v[1], exp_v, dtype, GRAD_TOLERANCES, msg=msg)


@pytest.mark.gpu
def test_cuda_kernel_writes_every_element(monkeypatch):
    mod = _gpu_backend(monkeypatch, "cuda")
    stream = torch.cuda.current_stream().cuda_stream
    for dtype in DTYPES:
        u, v = _fields((3, 2, 13, 11), dtype, "strided", device="cuda")
        for padding in PADS:
            out = poisoned((3, 2, 13, 11), dtype, "cuda")
            mod.compose2d_forward(u.data_ptr(), list(u.stride()), v.data_ptr(), list(v.stride()), out.data_ptr(),
                                  kernel_dtype(mod, dtype), CP._geom(v), CP._pad(mod, padding), stream)
            assert_close(out, compose2d_reference(u, v, padding), dtype)
            g = rand((3, 2, 13, 11), dtype, low=-1, high=1, seed=2).cuda()
            gu, gv = torch.zeros_like(out), poisoned((3, 2, 13, 11), dtype, "cuda")
            mod.compose2d_backward(g.data_ptr(), list(g.stride()), u.data_ptr(), list(u.stride()), v.data_ptr(),
                                   list(v.stride()), gu.data_ptr(), gv.data_ptr(), kernel_dtype(mod, dtype),
                                   CP._geom(v), CP._pad(mod, padding), stream)
            exp_u, exp_v = _expected_grads(g, u, v, padding)
            assert_close(gu, exp_u, dtype, GRAD_TOLERANCES)
            assert_close(gv, exp_v, dtype, GRAD_TOLERANCES)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_identities_and_opcheck(monkeypatch, backend):
    _gpu_backend(monkeypatch, backend)
    u, v = _fields((3, 2, 9, 8), device="cuda")
    zero = torch.zeros_like(u)
    assert torch.equal(CP.IMPLS[backend](u, zero, "border"), u)
    assert torch.equal(CP.IMPLS[backend](zero, v, "border"), v)
    u.requires_grad_()
    v.requires_grad_()
    torch.library.opcheck(torch.ops.dilseg.compose2d.default, (u, v + 0.31, "border"))
