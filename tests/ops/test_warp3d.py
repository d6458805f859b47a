"""warp3d: every backend pinned to the pure-torch reference, the reference pinned to
F.grid_sample (5D, align_corners=True), gradients, custom-op checks, properties.

* reference vs grid_sample; C++ vs reference on odd shapes, strided views, every
  dtype / mode / padding, into poisoned buffers, both backward scheduling paths;
  float64 gradcheck (reference and C++); torch.library.opcheck; torch.compile.
* Triton launchers under TRITON_INTERPRET=1 on CPU tensors (tiny grids).
* ``@pytest.mark.gpu``: the CUDA kernels and compiled Triton on CUDA tensors.
* properties: a zero field is the identity; an integer shift is an exact shift; a
  field with no depth component equals warp2d slice by slice.

Tolerances: tests/ops/_oracle.py (TOLERANCES / GRAD_TOLERANCES, each entry with its
source). The trilinear sum has 8 products instead of warp2d's 4; the fp32 entry
(1e-5 abs/rel on values of order 1-5) still holds with a wide margin (observed
differences are 0 to a few ulp: same operation order as the reference).
"""

import sys

import pytest
import torch
import torch.nn.functional as F

import engine.ops  # noqa: F401  (registers dilseg::warp3d)
from engine import _backends
from engine.errors import DTypeError, InputError, NonFiniteError, ShapeError
from engine.ops import warp2d_reference, warp3d, warp3d_reference
from engine.ops._warp import enums

from ._oracle import (
    GRAD_TOLERANCES, assert_close, has_kernel, kernel_dtype, load_backend, poisoned,
    rand, requires_cpu_ext,
)

W3 = sys.modules["engine.ops.warp3d"]
FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
MODES = ["bilinear", "nearest"]
PADS = ["zeros", "border"]
# (src shape, output D, H, W): odd sizes, output size != source size, a 1-voxel-deep source
CASES = [((2, 3, 5, 7, 6), 4, 6, 5), ((1, 2, 1, 5, 9), 3, 5, 9), ((3, 1, 7, 3, 5), 7, 3, 5)]
LAYOUTS = ["contiguous", "strided", "channels_last_3d"]


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _poison_value(dtype):
    return float("nan") if dtype.is_floating_point else 0xAB


def _layout(t, layout):
    """A copy of ``t`` in ``layout``; the gaps of a strided view hold poison, so a
    kernel that ignores strides reads NaN / 0xAB."""
    if layout == "contiguous":
        return t.contiguous()
    if layout == "channels_last_3d":
        return t.contiguous(memory_format=torch.channels_last_3d)
    big = torch.full(t.shape[:-1] + (2 * t.shape[-1] + 1,), _poison_value(t.dtype), dtype=t.dtype, device=t.device)
    view = big[..., 1::2]
    view.copy_(t)
    return view


def _inputs(shape, d, h, w, dtype, layout="contiguous", scale=4.0, seed=0, device="cpu"):
    src = rand(shape, dtype, low=-2, high=3, seed=seed)
    u = ((rand((shape[0], 3, d, h, w), torch.float64, seed=seed + 1) * 2 - 1) * scale).to(_acc(dtype))
    return _layout(src, layout).to(device), _layout(u, layout).to(device)


def _grid_sample(src, u, mode, padding):
    _, _, ds, hs, ws = src.shape
    d, h, w = u.shape[-3:]
    zs = torch.arange(d, dtype=u.dtype).view(1, d, 1, 1)
    ys = torch.arange(h, dtype=u.dtype).view(1, 1, h, 1)
    xs = torch.arange(w, dtype=u.dtype).view(1, 1, 1, w)
    gz = (zs + u[:, 0]) * (2 / (ds - 1)) - 1
    gy = (ys + u[:, 1]) * (2 / (hs - 1)) - 1
    gx = (xs + u[:, 2]) * (2 / (ws - 1)) - 1
    return F.grid_sample(src, torch.stack([gx, gy, gz], -1), mode=mode, padding_mode=padding, align_corners=True)


def _expected_grads(g, src, u, mode, padding):
    return W3.BACKWARD_IMPLS["reference"](g, src, u, mode, padding, True, True)


# --- the reference ------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding", PADS)
def test_reference_equals_grid_sample(mode, padding):
    for shape in [(2, 2, 5, 6, 7), (1, 3, 4, 9, 5)]:  # grid_sample needs sizes > 1
        src = rand(shape, torch.float64, low=-2, high=3)
        u = ((rand((shape[0], 3) + shape[2:], torch.float64, seed=1) * 2 - 1) * 5)  # reaches outside
        assert_close(warp3d_reference(src, u, mode, padding), _grid_sample(src, u, mode, padding))


def test_reference_gradients_equal_grid_sample():
    # away from integer knots (one-sided derivatives agree there anyway)
    src = rand((1, 2, 4, 5, 6), torch.float64, low=-1, high=1).requires_grad_()
    u = ((rand((1, 3, 4, 5, 6), torch.float64, seed=2) * 2 - 1) * 3 + 0.37).requires_grad_()
    g = rand((1, 2, 4, 5, 6), torch.float64, seed=3)
    for padding in PADS:
        a = torch.autograd.grad(warp3d_reference(src, u, "bilinear", padding), (src, u), g)
        b = torch.autograd.grad(_grid_sample(src, u, "bilinear", padding), (src, u), g)
        assert_close(a[0], b[0], table=GRAD_TOLERANCES)
        assert_close(a[1], b[1], table=GRAD_TOLERANCES)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding", PADS)
def test_analytic_reference_backward_equals_autograd(mode, padding):
    """The reference backward spells the gradients out (custom-op kernels run below
    autograd); pin it to autograd through warp3d_reference, in float64."""
    for shape, d, h, w in CASES:
        src, u = _inputs(shape, d, h, w, torch.float64, "strided")
        g = rand(shape[:2] + (d, h, w), torch.float64, low=-1, high=1, seed=7)
        s2, u2 = src.clone().requires_grad_(), u.clone().requires_grad_()
        exp_s, exp_u = torch.autograd.grad(warp3d_reference(s2, u2, mode, padding), (s2, u2), g, allow_unused=True)
        got_s, got_u = _expected_grads(g, src, u, mode, padding)
        assert_close(got_s, exp_s, table=GRAD_TOLERANCES)
        assert_close(got_u, torch.zeros_like(u) if exp_u is None else exp_u, table=GRAD_TOLERANCES)


# --- C++ ------------------------------------------------------------------------------------

@requires_cpu_ext
@pytest.mark.parametrize("dtype", FLOATS + [torch.uint8])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding", PADS)
def test_cpu_matches_reference(dtype, mode, padding):
    if dtype == torch.uint8 and mode == "bilinear":
        pytest.skip("uint8 is nearest-only (validated separately)")
    for shape, d, h, w in CASES:
        for layout in LAYOUTS:
            src, u = _inputs(shape, d, h, w, dtype, layout)
            expected = warp3d_reference(src, u, mode, padding)
            got = W3.IMPLS["cpu"](src, u, mode, padding)
            assert got.dtype == dtype and got.shape == expected.shape
            assert_close(got, expected, dtype, msg=f"{shape} {layout}")


@requires_cpu_ext
def test_cpu_kernel_writes_every_output_element():
    mod = load_backend("cpu")
    for dtype in FLOATS + [torch.uint8]:
        src, u = _inputs((2, 3, 5, 7, 6), 4, 6, 5, dtype, "strided")
        for mode in MODES:
            if dtype == torch.uint8 and mode == "bilinear":
                continue
            for padding in PADS:
                out = poisoned((2, 3, 4, 6, 5), dtype)
                interp, pad = enums(mod, mode, padding)
                mod.warp3d_forward(src.data_ptr(), list(src.stride()), kernel_dtype(mod, dtype), u.data_ptr(),
                                   list(u.stride()), out.data_ptr(), W3._geom(src, u), interp, pad, 2)
                assert_close(out, warp3d_reference(src, u, mode, padding), dtype)


@requires_cpu_ext
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding", PADS)
def test_cpu_backward_matches_reference(dtype, mode, padding):
    for shape, d, h, w in CASES:
        src, u = _inputs(shape, d, h, w, dtype, "strided")
        g = _layout(rand(shape[:2] + (d, h, w), dtype, low=-1, high=1, seed=7), "channels_last_3d")
        exp_s, exp_u = _expected_grads(g, src, u, mode, padding)
        got_s, got_u = W3.BACKWARD_IMPLS["cpu"](g, src, u, mode, padding, True, True)
        assert_close(got_s.float(), exp_s.float(), dtype, GRAD_TOLERANCES)
        assert_close(got_u, exp_u, dtype, GRAD_TOLERANCES)
        only_u = W3.BACKWARD_IMPLS["cpu"](g, src, u, mode, padding, False, True)
        assert only_u[0].numel() == 0
        assert_close(only_u[1], exp_u, dtype, GRAD_TOLERANCES)
        only_s = W3.BACKWARD_IMPLS["cpu"](g, src, u, mode, padding, True, False)
        assert only_s[1].numel() == 0
        assert_close(only_s[0].float(), exp_s.float(), dtype, GRAD_TOLERANCES)


@requires_cpu_ext
@pytest.mark.parametrize("nt", [1, 2, 3])
def test_cpu_backward_scheduling_paths(nt):
    """Direct calls with 1-3 threads: N*C = 6 volumes take the per-volume path (then
    a separate grad_u pass) for nt in 2..3, N*C = 1 the per-thread grad_src copies,
    nt = 1 the plain row pass; grad_u is written completely into poison each time."""
    mod = load_backend("cpu")
    for shape, d, h, w in [((3, 2, 5, 6, 7), 5, 6, 7), ((1, 1, 6, 5, 7), 6, 5, 7)]:
        src, u = _inputs(shape, d, h, w, torch.float32, scale=3.0)
        g = rand(shape[:2] + (d, h, w), low=-1, high=1, seed=5)
        exp_s, exp_u = _expected_grads(g, src, u, "bilinear", "zeros")
        gs, gu = torch.zeros(src.shape), poisoned(u.shape, torch.float32)
        interp, pad = enums(mod, "bilinear", "zeros")
        mod.warp3d_backward(g.data_ptr(), list(g.stride()), src.data_ptr(), list(src.stride()), mod.DType.Float32,
                            u.data_ptr(), list(u.stride()), gs.data_ptr(), gu.data_ptr(), W3._geom(src, u), interp,
                            pad, nt)
        assert_close(gs, exp_s, table=GRAD_TOLERANCES)
        assert_close(gu, exp_u, table=GRAD_TOLERANCES)


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=requires_cpu_ext)])
@pytest.mark.parametrize("padding", PADS)
def test_gradcheck_float64(backend, padding, monkeypatch):
    monkeypatch.setenv("ENGINE_CPU_BACKEND", "reference" if backend == "reference" else "cpu")
    shape = (1, 2, 3, 4, 5)
    src = rand(shape, torch.float64, low=-1, high=1).requires_grad_()
    # away from integer knots, some positions outside: padding and clamping matter
    u = ((rand((1, 3, 3, 4, 5), torch.float64, seed=1) * 2 - 1) * 1.5 + 0.37).requires_grad_()
    assert torch.autograd.gradcheck(lambda s, v: warp3d(s, v, "bilinear", padding), (src, u), atol=1e-7)


def test_autograd_through_op_matches_reference():
    shape = (2, 2, 4, 6, 5)
    src = rand(shape, low=-1, high=1).requires_grad_()
    u = ((rand((2, 3, 4, 6, 5), seed=1) * 2 - 1) * 3).requires_grad_()
    out = warp3d(src, u)
    g = rand(out.shape, low=-1, high=1, seed=3)
    gs, gu = torch.autograd.grad(out, (src, u), g)
    src2, u2 = src.detach().clone().requires_grad_(), u.detach().clone().requires_grad_()
    rs, ru = torch.autograd.grad(warp3d_reference(src2, u2), (src2, u2), g)
    assert_close(gs, rs, table=GRAD_TOLERANCES)
    assert_close(gu, ru, table=GRAD_TOLERANCES)
    # a uint8 source: gradient to u only (zero for nearest), none to src
    u3 = u.detach().clone().requires_grad_()
    out8 = warp3d(rand(shape, torch.uint8), u3, "nearest")
    assert out8.dtype == torch.uint8 and not out8.requires_grad


@pytest.mark.parametrize("mode", MODES)
def test_opcheck(mode):
    src = rand((2, 2, 3, 4, 5), low=-1, high=1).requires_grad_()
    u = (((rand((2, 3, 3, 4, 5), seed=1) * 2 - 1) * 2.0) + 0.31).requires_grad_()
    torch.library.opcheck(torch.ops.dilseg.warp3d.default, (src, u, mode, "zeros"))
    g = rand((2, 2, 3, 4, 5), seed=5)
    torch.library.opcheck(torch.ops.dilseg.warp3d_backward.default,
                          (g, src.detach(), u.detach(), mode, "border", True, True))


def test_compile_traces_through_fake():
    src, u = rand((1, 1, 4, 5, 6)), (rand((1, 3, 4, 5, 6), seed=2) - 0.5) * 3
    fn = torch.compile(lambda s, v: warp3d(s, v, check_finite=False) * 2, backend="eager", fullgraph=True)
    assert_close(fn(src, u), warp3d_reference(src, u) * 2)


# --- properties -------------------------------------------------------------------------------

def _impls():
    names = ["reference"]
    cpu = _backends.load("cpu")
    if cpu is not None and "warp3d" in cpu.ops:
        names.append("cpu")
    return names


def test_zero_field_is_identity():
    for dtype in FLOATS + [torch.uint8]:
        src = rand((2, 3, 5, 6, 7), dtype, low=-1, high=1)
        u = torch.zeros(2, 3, 5, 6, 7, dtype=_acc(dtype))
        for backend in _impls():
            for mode in MODES:
                if dtype == torch.uint8 and mode == "bilinear":
                    continue
                for padding in PADS:
                    assert torch.equal(W3.IMPLS[backend](src, u, mode, padding), src), (backend, dtype, mode)


def test_integer_shift_is_exact():
    src = rand((1, 2, 6, 7, 8), low=-1, high=1)
    u = torch.zeros(1, 3, 6, 7, 8)
    u[:, 0], u[:, 1], u[:, 2] = 1.0, -2.0, 3.0
    expected = torch.zeros_like(src)
    expected[:, :, :5, 2:, :5] = src[:, :, 1:, :5, 3:]
    for backend in _impls():
        for mode in MODES:
            assert torch.equal(W3.IMPLS[backend](src, u, mode, "zeros"), expected), (backend, mode)


def test_no_depth_displacement_equals_warp2d_per_slice():
    src = rand((2, 2, 4, 9, 8), low=-1, high=1)
    u = (rand((2, 3, 4, 9, 8), seed=4) * 2 - 1) * 3
    u[:, 0] = 0
    for padding in PADS:
        got = warp3d(src, u, "bilinear", padding)
        s2 = src.permute(0, 2, 1, 3, 4).reshape(8, 2, 9, 8)
        u2 = u[:, 1:].permute(0, 2, 1, 3, 4).reshape(8, 2, 9, 8)
        exp = warp2d_reference(s2, u2, "bilinear", padding).reshape(2, 4, 2, 9, 8).permute(0, 2, 1, 3, 4)
        assert_close(got, exp)


def test_nonfinite_positions_stay_memory_safe():
    src = rand((1, 1, 4, 6, 6))
    u = torch.zeros(1, 3, 4, 6, 6)
    u[0, 0, 1, 2, 3] = float("nan")
    u[0, 1, 2, 4, 4] = float("inf")
    u[0, 2, 3, 1, 1] = -float("inf")
    outs = {}
    for backend in _impls():
        for mode in MODES:
            for padding in PADS:
                out = W3.IMPLS[backend](src, u, mode, padding)
                assert torch.isfinite(out).all()
                outs[(backend, mode, padding)] = out
    if "cpu" in _impls():
        for (b, m, p), out in outs.items():
            assert_close(out, outs[("cpu", m, p)])  # the CPU kernel defines NaN semantics
    with pytest.raises(NonFiniteError):
        warp3d(src, u, check_finite=True)


# --- validation ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "make,err",
    [
        (lambda: (torch.rand(2, 4, 8, 8), torch.zeros(2, 3, 4, 8, 8)), ShapeError),
        (lambda: (torch.rand(2, 1, 4, 8, 8), torch.zeros(2, 2, 4, 8, 8)), ShapeError),
        (lambda: (torch.rand(2, 1, 4, 8, 8), torch.zeros(3, 3, 4, 8, 8)), ShapeError),
        (lambda: (torch.rand(2, 1, 0, 8, 8), torch.zeros(2, 3, 4, 8, 8)), ShapeError),
        (lambda: (torch.rand(2, 1, 4, 8, 8).int(), torch.zeros(2, 3, 4, 8, 8)), DTypeError),
        (lambda: (torch.rand(2, 1, 4, 8, 8), torch.zeros(2, 3, 4, 8, 8, dtype=torch.float16)), DTypeError),
        (lambda: (torch.rand(2, 1, 4, 8, 8), torch.full((2, 3, 4, 8, 8), float("nan"))), NonFiniteError),
        (lambda: ([[1.0]], torch.zeros(2, 3, 4, 8, 8)), InputError),
    ],
)
def test_bad_input_raises_typed_error(make, err):
    src, u = make()
    with pytest.raises(err):  # value scans are opt-in: NaN/Inf with check_finite=True
        warp3d(src, u, check_finite=err is NonFiniteError)


def test_bad_mode_padding_and_uint8_trilinear():
    src, u = torch.rand(1, 1, 3, 4, 4), torch.zeros(1, 3, 3, 4, 4)
    with pytest.raises(InputError):
        warp3d(src, u, mode="cubic")
    with pytest.raises(InputError):
        warp3d(src, u, padding="reflect")
    with pytest.raises(DTypeError):
        warp3d(src.to(torch.uint8), u, mode="bilinear")
    assert warp3d(src, u.double()).dtype == torch.float32  # float64 fields are accepted


def test_fallback_warns_once_when_cpu_module_missing(monkeypatch):
    monkeypatch.setenv("ENGINE_NO_EXTENSION", "1")
    _backends.reset()
    src, u = rand((1, 1, 3, 4, 5)), torch.zeros(1, 3, 3, 4, 5)
    with pytest.warns(RuntimeWarning, match="falls back to the pure-torch reference"):
        warp3d(src, u)


# --- Triton, interpreter on CPU tensors -------------------------------------------------------------

@pytest.fixture
def interp(monkeypatch):
    """The Triton launchers with the interpreter (CPU tensors)."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    _backends.reset()
    mod = _backends.load("triton")
    assert mod is not None, _backends.status("triton").detail
    assert has_kernel("warp3d", "triton")
    return mod


TINY = [((2, 2, 3, 4, 5), 3, 4, 5), ((1, 1, 1, 3, 4), 2, 3, 4)]


@pytest.mark.parametrize("dtype", FLOATS + [torch.uint8])
def test_triton_forward_interpreter(interp, dtype):
    for mode in MODES:
        if dtype == torch.uint8 and mode == "bilinear":
            continue
        for padding in PADS:
            for shape, d, h, w in TINY:
                for layout in ("contiguous", "strided"):
                    src, u = _inputs(shape, d, h, w, dtype, layout, scale=3.0)
                    big = poisoned(shape[:2] + (d, h, 2 * w + 1), dtype)
                    out = big[..., 1::2]  # a strided output: the gaps must stay poisoned
                    interp.warp3d_forward(src, u, out, bilinear=mode == "bilinear", border=padding == "border")
                    assert_close(out, warp3d_reference(src, u, mode, padding), dtype,
                                 msg=f"{mode} {padding} {shape} {layout}")
                    gaps = big[..., 0::2]
                    assert (torch.isnan(gaps).all() if dtype.is_floating_point else (gaps == 0xAB).all())


@pytest.mark.parametrize("dtype", FLOATS)
def test_triton_backward_interpreter(interp, dtype):
    for mode in MODES:
        for padding in PADS:
            for shape, d, h, w in TINY:
                src, u = _inputs(shape, d, h, w, dtype, "strided", scale=3.0)
                g = rand(shape[:2] + (d, h, w), dtype, low=-1, high=1, seed=7)
                exp_s, exp_u = _expected_grads(g, src, u, mode, padding)
                gs = torch.zeros(shape, dtype=_acc(dtype))
                gu = poisoned(u.shape, _acc(dtype))  # must be written completely
                interp.warp3d_backward(g, src, u, gs, gu, bilinear=mode == "bilinear", border=padding == "border")
                msg = f"{mode} {padding} {shape}"
                assert_close(gs.to(dtype).float(), exp_s.float(), dtype, GRAD_TOLERANCES, msg=msg)
                assert_close(gu, exp_u, dtype, GRAD_TOLERANCES, msg=msg)


def test_triton_through_impl_tables_and_edges(interp):
    # one-sided gradients, and positions exactly on .5 ties and on the border
    src = rand((1, 2, 3, 4, 5), low=-1, high=1)
    u = torch.zeros(1, 3, 3, 4, 5)
    u[0, 0] = 0.5
    u[0, 2, :, :, 0] = -0.5
    u[0, 1, 0, 0, 1] = 0.0  # py == 0 exactly (border: no gradient)
    u[0, 1, 1, 3, 2] = 0.0  # py == Hs - 1 exactly
    u[0, 2, 2, 2, 4] = 1.0  # px beyond Ws - 1
    for mode in MODES:
        for padding in PADS:
            got = W3.IMPLS["triton"](src, u, mode, padding)
            assert_close(got, warp3d_reference(src, u, mode, padding))
    g = rand((1, 2, 3, 4, 5), low=-1, high=1, seed=9)
    exp_s, exp_u = _expected_grads(g, src, u, "bilinear", "border")
    got_s, got_u = W3.BACKWARD_IMPLS["triton"](g, src, u, "bilinear", "border", True, False)
    assert got_u.numel() == 0
    assert_close(got_s, exp_s, table=GRAD_TOLERANCES)
    got_s, got_u = W3.BACKWARD_IMPLS["triton"](g, src, u, "bilinear", "border", False, True)
    assert got_s.numel() == 0
    assert_close(got_u, exp_u, table=GRAD_TOLERANCES)
    assert got_u[0, 1, 0, 0, 1] == 0 and got_u[0, 1, 1, 3, 2] == 0 and got_u[0, 2, 2, 2, 4] == 0


# --- CUDA tensors: the CUDA kernels and compiled Triton ----------------------------------------------

def _gpu_backend(monkeypatch, backend):
    monkeypatch.setenv("ENGINE_GPU_BACKEND", backend)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    _backends.reset()
    mod = _backends.load(backend)
    if mod is None or not has_kernel("warp3d", backend):
        pytest.skip(f"{backend} backend not available: {_backends.status(backend).detail}")
    return mod


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", FLOATS + [torch.uint8])
def test_gpu_forward_matches_reference(monkeypatch, backend, dtype):
    _gpu_backend(monkeypatch, backend)
    for mode in MODES:
        if dtype == torch.uint8 and mode == "bilinear":
            continue
        for padding in PADS:
            for shape, d, h, w in CASES + [((1, 1, 16, 24, 40), 16, 24, 40)]:
                for layout in LAYOUTS:
                    src, u = _inputs(shape, d, h, w, dtype, layout, device="cuda")
                    got = W3.IMPLS[backend](src, u, mode, padding)
                    expected = warp3d_reference(src, u, mode, padding)
                    assert got.dtype == dtype and got.shape == expected.shape
                    assert_close(got, expected, dtype, msg=f"{mode} {padding} {shape} {layout}")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", FLOATS)
def test_gpu_backward_matches_reference(monkeypatch, backend, dtype):
    _gpu_backend(monkeypatch, backend)
    for mode in MODES:
        for padding in PADS:
            for shape, d, h, w in CASES:
                for layout in LAYOUTS:
                    src, u = _inputs(shape, d, h, w, dtype, layout, device="cuda")
                    g = _layout(rand(shape[:2] + (d, h, w), dtype, low=-1, high=1, seed=7), layout).cuda()
                    exp_s, exp_u = _expected_grads(g, src, u, mode, padding)
                    got_s, got_u = W3.BACKWARD_IMPLS[backend](g, src, u, mode, padding, True, True)
                    msg = f"{mode} {padding} {shape} {layout}"
                    assert_close(got_s.float(), exp_s.float(), dtype, GRAD_TOLERANCES, msg=msg)
                    assert_close(got_u, exp_u, dtype, GRAD_TOLERANCES, msg=msg)
                    only_u = W3.BACKWARD_IMPLS[backend](g, src, u, mode, padding, False, True)
                    assert only_u[0].numel() == 0
                    assert_close(only_u[1], exp_u, dtype, GRAD_TOLERANCES, msg=msg)


@pytest.mark.gpu
def test_cuda_kernel_writes_every_element(monkeypatch):
    """Direct calls into poisoned buffers: out and grad_u are written completely."""
    mod = _gpu_backend(monkeypatch, "cuda")
    stream = torch.cuda.current_stream().cuda_stream
    shape, d, h, w = (2, 3, 5, 13, 11), 5, 13, 11
    for dtype in FLOATS:
        src, u = _inputs(shape, d, h, w, dtype, device="cuda")
        for mode in MODES:
            for padding in PADS:
                interp, pad = enums(mod, mode, padding)
                out = poisoned(shape[:2] + (d, h, w), dtype, "cuda")
                mod.warp3d_forward(src.data_ptr(), list(src.stride()), kernel_dtype(mod, dtype), u.data_ptr(),
                                   list(u.stride()), out.data_ptr(), W3._geom(src, u), interp, pad, stream)
                assert_close(out, warp3d_reference(src, u, mode, padding), dtype)
                g = rand(out.shape, dtype, low=-1, high=1, seed=2).cuda()
                gs = torch.zeros(shape, dtype=_acc(dtype), device="cuda")
                gu = poisoned(u.shape, _acc(dtype), "cuda")
                mod.warp3d_backward(g.data_ptr(), list(g.stride()), src.data_ptr(), list(src.stride()),
                                    kernel_dtype(mod, dtype), u.data_ptr(), list(u.stride()), gs.data_ptr(),
                                    gu.data_ptr(), W3._geom(src, u), interp, pad, stream)
                exp_s, exp_u = _expected_grads(g, src, u, mode, padding)
                assert_close(gs.to(dtype).float(), exp_s.float(), dtype, GRAD_TOLERANCES)
                assert_close(gu, exp_u, dtype, GRAD_TOLERANCES)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_nonfinite_smooth_and_opcheck(monkeypatch, backend):
    _gpu_backend(monkeypatch, backend)
    src = rand((1, 1, 4, 6, 6)).cuda()
    u = torch.zeros(1, 3, 4, 6, 6)
    u[0, 0, 1, 2, 3] = float("nan")
    u[0, 1, 2, 4, 4] = float("inf")
    u = u.cuda()
    for mode in MODES:
        for padding in PADS:
            out = W3.IMPLS[backend](src, u, mode, padding)
            assert torch.isfinite(out).all()
            assert_close(out, warp3d_reference(src, u, mode, padding))
    # a realistic volume: smooth field, C = 1
    g = torch.Generator().manual_seed(0)
    coarse = torch.randn(1, 3, 4, 8, 8, generator=g) * 2
    u = F.interpolate(coarse, size=(24, 48, 40), mode="trilinear", align_corners=True).cuda()
    src = rand((1, 1, 24, 48, 40)).cuda()
    assert_close(W3.IMPLS[backend](src, u, "bilinear", "zeros"), warp3d_reference(src, u))
    s = rand((2, 2, 3, 4, 5), low=-1, high=1).cuda().requires_grad_()
    v = (((rand((2, 3, 3, 4, 5), seed=1) * 2 - 1) * 2.0) + 0.31).cuda().requires_grad_()
    torch.library.opcheck(torch.ops.dilseg.warp3d.default, (s, v, "bilinear", "zeros"))
