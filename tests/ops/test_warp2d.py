"""warp2d: reference vs grid_sample, C++ vs reference, gradients, custom-op checks.

The Triton and CUDA backends are pinned to the same reference in
tests/ops/test_warp2d_gpu.py.
"""

import sys

import pytest
import torch
import torch.nn.functional as F

import engine.ops  # noqa: F401  (registers dilseg::warp2d)
from engine.errors import DTypeError, InputError, NonFiniteError, ShapeError
from engine.ops import warp2d, warp2d_reference
from engine.ops._warp import enums

from ._oracle import GRAD_TOLERANCES, assert_close, load_backend, poisoned, rand, requires_cpu_ext, smooth_field

W2 = sys.modules["engine.ops.warp2d"]
MODES = ["bilinear", "nearest"]
PADS = ["zeros", "border"]
SHAPES = [(1, 1, 7, 9), (3, 2, 17, 23), (2, 3, 5, 31)]


def _field(shape, scale, noncontig=False, dtype=torch.float32, seed=1):
    n, _, h, w = shape
    u = (rand((n, 2, h, w), torch.float64, low=-1, high=1, noncontig=noncontig, seed=seed) * scale).to(dtype)
    return u


def _grid_sample(src, u, mode, padding):
    _, _, hs, ws = src.shape
    h, w = u.shape[-2:]
    ys = torch.arange(h, dtype=u.dtype).view(1, h, 1)
    xs = torch.arange(w, dtype=u.dtype).view(1, 1, w)
    gy = (ys + u[:, 0]) * (2 / (hs - 1)) - 1
    gx = (xs + u[:, 1]) * (2 / (ws - 1)) - 1
    return F.grid_sample(src, torch.stack([gx, gy], -1), mode=mode, padding_mode=padding, align_corners=True)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding", PADS)
@pytest.mark.parametrize("shape", SHAPES)
def test_reference_equals_grid_sample(shape, mode, padding):
    src = rand(shape, torch.float64, low=-2, high=3)
    u = _field(shape, 6.0, dtype=torch.float64)  # reaches outside: padding matters
    assert_close(warp2d_reference(src, u, mode, padding), _grid_sample(src, u, mode, padding))


@requires_cpu_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.uint8])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding", PADS)
@pytest.mark.parametrize("noncontig", [False, True])
def test_cpu_matches_reference(dtype, mode, padding, noncontig):
    if dtype == torch.uint8 and mode == "bilinear":
        pytest.skip("uint8 is nearest-only (validated separately)")
    for shape in SHAPES:
        src = rand(shape, dtype, low=-2, high=3, noncontig=noncontig)
        u = _field(shape, 5.0, noncontig=noncontig, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
        expected = warp2d_reference(src, u, mode, padding)
        got = W2.IMPLS["cpu"](src, u, mode, padding)
        assert got.dtype == dtype and got.shape == expected.shape
        assert_close(got, expected, dtype)


@requires_cpu_ext
def test_cpu_kernel_writes_every_output_element():
    shape = (2, 3, 13, 11)
    src, u = rand(shape), _field(shape, 4.0)
    mod = load_backend("cpu")
    for mode in MODES:
        for padding in PADS:
            out = poisoned(shape, torch.float32)
            interp, pad = enums(mod, mode, padding)
            mod.warp2d_forward(
                src.data_ptr(),
                list(src.stride()),
                mod.DType.Float32,
                u.data_ptr(),
                list(u.stride()),
                out.data_ptr(),
                W2._geom(src, u),
                interp,
                pad,
                2,
            )
            assert torch.isfinite(out).all()
            assert_close(out, warp2d_reference(src, u, mode, padding))


@requires_cpu_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding", PADS)
def test_cpu_backward_matches_reference(dtype, mode, padding):
    for shape in SHAPES:
        src = rand(shape, dtype, low=-2, high=3)
        u = _field(shape, 4.0, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
        g = rand(shape[:2] + u.shape[2:], dtype, low=-1, high=1, seed=7)
        exp_s, exp_u = W2.BACKWARD_IMPLS["reference"](g, src, u, mode, padding, True, True)
        got_s, got_u = W2.BACKWARD_IMPLS["cpu"](g, src, u, mode, padding, True, True)
        assert_close(got_s.float(), exp_s.float(), dtype, GRAD_TOLERANCES)
        assert_close(got_u, exp_u, dtype, GRAD_TOLERANCES)
        # one-sided requests
        only_u = W2.BACKWARD_IMPLS["cpu"](g, src, u, mode, padding, False, True)
        assert only_u[0].numel() == 0
        assert_close(only_u[1], exp_u, dtype, GRAD_TOLERANCES)


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=requires_cpu_ext)])
@pytest.mark.parametrize("padding", PADS)
def test_gradcheck_float64(backend, padding, monkeypatch):
    monkeypatch.setenv("ENGINE_CPU_BACKEND", "reference" if backend == "reference" else "cpu")
    shape = (2, 2, 5, 6)
    src = rand(shape, torch.float64, low=-1, high=1).requires_grad_()
    u = (_field(shape, 0.8, dtype=torch.float64) + 0.37).requires_grad_()  # away from integer knots
    assert torch.autograd.gradcheck(lambda s, v: warp2d(s, v, "bilinear", padding), (src, u), atol=1e-7)


def test_autograd_through_op_matches_reference():
    shape = (2, 2, 9, 10)
    src = rand(shape, low=-1, high=1).requires_grad_()
    u = _field(shape, 3.0).requires_grad_()
    out = warp2d(src, u)
    g = rand(out.shape, low=-1, high=1, seed=3)
    gs, gu = torch.autograd.grad(out, (src, u), g)
    src2, u2 = src.detach().clone().requires_grad_(), u.detach().clone().requires_grad_()
    rs, ru = torch.autograd.grad(warp2d_reference(src2, u2), (src2, u2), g)
    assert_close(gs, rs, table=GRAD_TOLERANCES)
    assert_close(gu, ru, table=GRAD_TOLERANCES)


@pytest.mark.parametrize("mode", MODES)
def test_opcheck(mode):
    shape = (2, 2, 6, 7)
    src = rand(shape, low=-1, high=1).requires_grad_()
    u = (_field(shape, 2.0) + 0.31).requires_grad_()
    torch.library.opcheck(torch.ops.dilseg.warp2d.default, (src, u, mode, "zeros"))
    g = rand(shape, seed=5)
    torch.library.opcheck(
        torch.ops.dilseg.warp2d_backward.default, (g, src.detach(), u.detach(), mode, "border", True, True)
    )


def test_zero_field_is_identity():
    src = rand((2, 3, 11, 13), low=-1, high=1)
    u = torch.zeros(2, 2, 11, 13)
    for mode in MODES:
        for padding in PADS:
            assert torch.equal(warp2d(src, u, mode, padding), src)


def test_uint8_nearest_exact():
    src = rand((1, 1, 9, 8), torch.uint8)
    u = _field((1, 1, 9, 8), 3.0)
    got = warp2d(src, u, "nearest")
    assert got.dtype == torch.uint8
    assert torch.equal(got, warp2d_reference(src, u, "nearest"))


def test_compile_traces_through_fake():
    shape = (1, 1, 8, 9)
    src, u = rand(shape), _field(shape, 2.0)
    fn = torch.compile(lambda s, v: warp2d(s, v, check_finite=False) * 2, backend="eager", fullgraph=True)
    assert_close(fn(src, u), warp2d_reference(src, u) * 2)


@pytest.mark.parametrize(
    "make,err",
    [
        (lambda: (torch.rand(2, 8, 8), torch.zeros(2, 2, 8, 8)), ShapeError),
        (lambda: (torch.rand(2, 1, 8, 8), torch.zeros(2, 3, 8, 8)), ShapeError),
        (lambda: (torch.rand(2, 1, 8, 8), torch.zeros(3, 2, 8, 8)), ShapeError),
        (lambda: (torch.rand(2, 1, 8, 8).int(), torch.zeros(2, 2, 8, 8)), DTypeError),
        (lambda: (torch.rand(2, 1, 8, 8), torch.zeros(2, 2, 8, 8, dtype=torch.float16)), DTypeError),
        (lambda: (torch.rand(2, 1, 8, 8), torch.full((2, 2, 8, 8), float("nan"))), NonFiniteError),
        (lambda: ([[1.0]], torch.zeros(2, 2, 8, 8)), InputError),
    ],
)
def test_bad_input_raises_typed_error(make, err):
    src, u = make()
    with pytest.raises(err):  # value scans are opt-in: NaN/Inf with check_finite=True
        warp2d(src, u, check_finite=err is NonFiniteError)


def test_bad_mode_and_uint8_bilinear():
    src, u = torch.rand(1, 1, 4, 4), torch.zeros(1, 2, 4, 4)
    with pytest.raises(InputError):
        warp2d(src, u, mode="cubic")
    with pytest.raises(InputError):
        warp2d(src, u, padding="reflect")
    with pytest.raises(DTypeError):
        warp2d(src.to(torch.uint8), u, mode="bilinear")


def test_nonfinite_positions_stay_memory_safe():
    src = rand((1, 1, 6, 6))
    u = torch.zeros(1, 2, 6, 6)
    u[0, 0, 2, 3] = float("nan")
    u[0, 1, 4, 4] = float("inf")
    for backend in W2.IMPLS:
        if backend in ("cuda", "triton"):
            continue
        out = W2.IMPLS[backend](src, u, "bilinear", "zeros")
        assert torch.isfinite(out).all()


def test_fallback_warns_once_when_cpu_module_missing(monkeypatch):
    from engine import _backends

    monkeypatch.setenv("ENGINE_NO_EXTENSION", "1")
    _backends.reset()
    src, u = rand((1, 1, 5, 5)), _field((1, 1, 5, 5), 1.0)
    with pytest.warns(RuntimeWarning, match="falls back to the pure-torch reference"):
        warp2d(src, u)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warp2d(src, u)  # second call: silent


def test_smooth_field_large_batch_matches_reference():
    # a realistic shape: many slices, smooth field, C=1
    src = rand((12, 1, 40, 33))
    u = smooth_field(12, 40, 33, amplitude=3.0, seed=4)
    assert_close(warp2d(src, u), warp2d_reference(src, u))


@requires_cpu_ext
@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512"])
def test_cpu_vector_paths_match_reference(isa):
    """The float32 bilinear forward runs vector row kernels where the CPU has them
    (csrc/warp2d/warp2d_cpu_avx2.cpp, _avx512.cpp) and the scalar kernel elsewhere:
    each path, pinned by capping the instruction set, against the reference, on odd
    widths (vector tails), several channels, strided sources, poisoned outputs and
    non-finite displacements."""
    mod = load_backend("cpu")
    best = mod.cpu_isa()
    try:
        got = mod.cpu_isa(isa)
        if got != isa:
            pytest.skip(f"this CPU runs {got} at most")
        for shape in [(1, 1, 7, 9), (3, 2, 17, 23), (2, 3, 5, 31), (2, 1, 19, 40)]:
            for noncontig in (False, True):
                src = rand(shape, low=-2, high=3, noncontig=noncontig)
                u = _field(shape, 5.0, seed=3)  # contiguous rows: the vector path
                u[0, 0, 1, 2] = float("nan")
                u[0, 1, 2, 3] = float("inf")
                for padding in PADS:
                    out = poisoned(shape, torch.float32)
                    interp, pad = enums(mod, "bilinear", padding)
                    mod.warp2d_forward(
                        src.data_ptr(),
                        list(src.stride()),
                        mod.DType.Float32,
                        u.data_ptr(),
                        list(u.stride()),
                        out.data_ptr(),
                        W2._geom(src, u),
                        interp,
                        pad,
                        2,
                    )
                    assert torch.isfinite(out).all()
                    assert_close(out, warp2d_reference(src, u, "bilinear", padding), msg=f"{isa} {shape} {padding}")
    finally:
        mod.cpu_isa(best)
    assert mod.cpu_isa() == best
