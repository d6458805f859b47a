"""warp2d's GPU backends pinned to the pure-torch reference.

* Triton launchers (kernels/warp2d.py) under ``TRITON_INTERPRET=1`` on CPU tensors,
  on tiny odd grids: every dtype / mode / padding, strided src / u / out views whose
  gaps hold poison, poisoned outputs, ties and clamped edges, one-sided gradients.
  TRITON_INTERPRET is set per test with ``monkeypatch.setenv``: the launchers jit
  their kernels at launch time in the mode the variable asks for then (see
  kernels/warp2d.py), so this works whether or not triton / engine.kernels were
  imported earlier in the process (tested below).
* ``@pytest.mark.gpu``: the CUDA kernels (csrc/warp2d/warp2d.cu) and the compiled
  Triton kernels on CUDA tensors, the same comparisons plus the vectorised CUDA
  path, direct calls into poisoned buffers, and ``torch.library.opcheck``.
"""

import sys

import pytest
import torch

import engine.ops  # noqa: F401  (registers dilseg::warp2d)
from engine import _backends
from engine.ops import warp2d_reference
from engine.ops._warp import enums

from ._oracle import GRAD_TOLERANCES, assert_close, has_kernel, kernel_dtype, poisoned, rand

W2 = sys.modules["engine.ops.warp2d"]
FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
MODES = ["bilinear", "nearest"]
PADS = ["zeros", "border"]
# (src shape, output H, W): odd sizes, output size != source size, a 1-pixel-high source
CASES = [((2, 3, 5, 7), 6, 4), ((1, 2, 1, 9), 3, 9)]
LAYOUTS = ["contiguous", "strided", "channels_last"]
# (dtype, mode) pairs of the forward: uint8 is nearest-only
FWD_KINDS = [(d, m) for d in FLOATS for m in MODES] + [(torch.uint8, "nearest")]


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _poison_value(dtype):
    return float("nan") if dtype.is_floating_point else 0xAB


def _layout(t, layout):
    """A copy of ``t`` in ``layout``; the gaps of a strided view hold poison, so a
    kernel that ignores strides reads NaN / 0xAB."""
    if layout == "contiguous":
        return t.contiguous()
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    big = torch.full(t.shape[:-1] + (2 * t.shape[-1] + 1,), _poison_value(t.dtype), dtype=t.dtype, device=t.device)
    view = big[..., 1::2]
    view.copy_(t)
    assert not view.is_contiguous()
    return view


def _inputs(shape, h, w, dtype, layout="contiguous", scale=4.0, seed=0, device="cpu"):
    # layouts are made on the target device: Tensor.to(device) would densify a gapped view
    src = rand(shape, dtype, low=-2, high=3, seed=seed).to(device)
    u = ((rand((shape[0], 2, h, w), torch.float64, seed=seed + 1) * 2 - 1) * scale).to(_acc(dtype)).to(device)
    return _layout(src, layout), _layout(u, layout)


def _expected_grads(g, src, u, mode, padding):
    return W2.BACKWARD_IMPLS["reference"](g, src, u, mode, padding, True, True)


@pytest.fixture
def interp(monkeypatch):
    """The Triton launchers with the interpreter (CPU tensors)."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    _backends.reset()
    mod = _backends.load("triton")
    assert mod is not None, _backends.status("triton").detail
    assert has_kernel("warp2d", "triton")
    return mod


# --- Triton, interpreter on CPU tensors ----------------------------------------------


@pytest.mark.parametrize("dtype,mode", FWD_KINDS)
@pytest.mark.parametrize("padding", PADS)
def test_triton_forward_interpreter(interp, dtype, mode, padding):
    for shape, h, w in CASES:
        for layout in LAYOUTS:
            src, u = _inputs(shape, h, w, dtype, layout)
            out = poisoned((shape[0], shape[1], h, w), dtype)
            interp.warp2d_forward(src, u, out, bilinear=mode == "bilinear", border=padding == "border")
            expected = warp2d_reference(src, u, mode, padding)
            assert_close(out, expected, dtype, msg=f"{shape} {layout}")


def test_triton_forward_interpreter_strided_out_writes_only_its_elements(interp):
    src, u = _inputs((2, 3, 5, 7), 6, 4, torch.float32)
    big = poisoned((2, 3, 6, 9), torch.float32)
    out = big[..., 1::2]
    interp.warp2d_forward(src, u, out, bilinear=True, border=False)
    assert_close(out, warp2d_reference(src, u))
    assert torch.isnan(big[..., 0::2]).all()  # the gaps are untouched


def test_triton_forward_through_impl_table(interp):
    src, u = _inputs((2, 3, 5, 7), 6, 4, torch.float32, "strided")
    for mode in MODES:
        assert_close(W2.IMPLS["triton"](src, u, mode, "border"), warp2d_reference(src, u, mode, "border"))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding", PADS)
def test_triton_backward_interpreter(interp, dtype, mode, padding):
    for shape, h, w in CASES:
        for layout in LAYOUTS:
            src, u = _inputs(shape, h, w, dtype, layout)
            g = _layout(rand((shape[0], shape[1], h, w), dtype, low=-1, high=1, seed=7), layout)
            exp_s, exp_u = _expected_grads(g, src, u, mode, padding)
            gs = torch.zeros(shape, dtype=_acc(dtype))
            gu = poisoned(u.shape, _acc(dtype))  # must be written completely
            interp.warp2d_backward(g, src, u, gs, gu, bilinear=mode == "bilinear", border=padding == "border")
            assert_close(gs.to(dtype).float(), exp_s.float(), dtype, GRAD_TOLERANCES, msg=f"{shape} {layout}")
            assert_close(gu, exp_u, dtype, GRAD_TOLERANCES, msg=f"{shape} {layout}")


def test_triton_backward_one_sided(interp):
    src, u = _inputs((2, 3, 5, 7), 6, 4, torch.float32, "strided")
    g = rand((2, 3, 6, 4), low=-1, high=1, seed=3)
    exp_s, exp_u = _expected_grads(g, src, u, "bilinear", "zeros")
    gs = torch.zeros(src.shape)
    interp.warp2d_backward(g, src, u, gs, None, bilinear=True, border=False)
    assert_close(gs, exp_s, table=GRAD_TOLERANCES)
    gu = poisoned(u.shape, torch.float32)
    interp.warp2d_backward(g, src, u, None, gu, bilinear=True, border=False)
    assert_close(gu, exp_u, table=GRAD_TOLERANCES)
    # through the impl table (the path engine.ops takes)
    got_s, got_u = W2.BACKWARD_IMPLS["triton"](g, src, u, "bilinear", "border", True, False)
    assert got_u.numel() == 0
    assert_close(got_s, _expected_grads(g, src, u, "bilinear", "border")[0], table=GRAD_TOLERANCES)


def test_triton_nearest_ties_and_border_edges(interp):
    # positions exactly on .5 (nearest rounds up) and exactly on the border
    # (border padding: no gradient w.r.t. u at a clamped or boundary position)
    src = rand((1, 2, 4, 5), low=-1, high=1)
    u = torch.zeros(1, 2, 4, 5)
    u[0, 0] = 0.5
    u[0, 1, :, 0] = -0.5
    u[0, 0, 0, 1] = 0.0  # py == 0 exactly
    u[0, 0, 3, 2] = 0.0  # py == Hs - 1 exactly
    u[0, 1, 2, 4] = 1.0  # px beyond Ws - 1
    for mode in MODES:
        for padding in PADS:
            out = poisoned((1, 2, 4, 5), torch.float32)
            interp.warp2d_forward(src, u, out, bilinear=mode == "bilinear", border=padding == "border")
            expected = warp2d_reference(src, u, mode, padding)
            if mode == "nearest":
                assert torch.equal(out, expected)
            else:
                assert_close(out, expected)
    g = rand((1, 2, 4, 5), low=-1, high=1, seed=9)
    gs, gu = torch.zeros(src.shape), poisoned(u.shape, torch.float32)
    interp.warp2d_backward(g, src, u, gs, gu, bilinear=True, border=True)
    exp_s, exp_u = _expected_grads(g, src, u, "bilinear", "border")
    assert_close(gs, exp_s, table=GRAD_TOLERANCES)
    assert_close(gu, exp_u, table=GRAD_TOLERANCES)
    assert gu[0, 0, 0, 1] == 0 and gu[0, 0, 3, 2] == 0 and gu[0, 1, 2, 4] == 0


def test_triton_nonfinite_positions_stay_memory_safe(interp):
    src = rand((1, 1, 6, 6))
    u = torch.zeros(1, 2, 6, 6)
    u[0, 0, 2, 3] = float("nan")
    u[0, 1, 4, 4] = float("inf")
    u[0, 0, 1, 1] = -float("inf")
    for mode in MODES:
        for padding in PADS:
            out = poisoned((1, 1, 6, 6), torch.float32)
            interp.warp2d_forward(src, u, out, bilinear=mode == "bilinear", border=padding == "border")
            assert torch.isfinite(out).all()
            cpu = _backends.load("cpu")
            if cpu is not None and "warp2d" in cpu.ops:  # the CPU kernel defines the NaN semantics
                assert_close(out, W2.IMPLS["cpu"](src, u, mode, padding))


def test_interpreter_switch_after_import(monkeypatch):
    """engine.kernels imported (and triton decorated) without the interpreter: a later
    setenv still runs the launchers in the interpreter."""
    pytest.importorskip("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    import engine.kernels as K  # noqa: F401  (imported in compiled mode)

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    _backends.reset()
    assert "interpreter" in _backends.status("triton").detail
    src, u = _inputs((1, 2, 3, 5), 3, 5, torch.float32)
    out = poisoned((1, 2, 3, 5), torch.float32)
    K.warp2d_forward(src, u, out, bilinear=True, border=False)
    assert_close(out, warp2d_reference(src, u))


# --- CUDA tensors: the CUDA kernels and compiled Triton -----------------------------------


def _gpu_backend(monkeypatch, backend):
    monkeypatch.setenv("ENGINE_GPU_BACKEND", backend)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    _backends.reset()
    mod = _backends.load(backend)
    if mod is None or not has_kernel("warp2d", backend):
        pytest.skip(f"{backend} backend not available: {_backends.status(backend).detail}")
    return mod


GPU_CASES = CASES + [((3, 2, 16, 24), 16, 24)]  # W % 4 == 0: the vectorised CUDA path


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype,mode", FWD_KINDS)
def test_gpu_forward_matches_reference(monkeypatch, backend, dtype, mode):
    _gpu_backend(monkeypatch, backend)
    for padding in PADS:
        for shape, h, w in GPU_CASES:
            for layout in LAYOUTS:
                src, u = _inputs(shape, h, w, dtype, layout, device="cuda")
                got = W2.IMPLS[backend](src, u, mode, padding)
                expected = warp2d_reference(src, u, mode, padding)
                assert got.dtype == dtype and got.shape == expected.shape
                assert_close(got, expected, dtype, msg=f"{padding} {shape} {layout}")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("mode", MODES)
def test_gpu_backward_matches_reference(monkeypatch, backend, dtype, mode):
    _gpu_backend(monkeypatch, backend)
    for padding in PADS:
        for shape, h, w in GPU_CASES:
            for layout in LAYOUTS:
                src, u = _inputs(shape, h, w, dtype, layout, device="cuda")
                g = _layout(rand((shape[0], shape[1], h, w), dtype, low=-1, high=1, seed=7).cuda(), layout)
                exp_s, exp_u = _expected_grads(g, src, u, mode, padding)
                got_s, got_u = W2.BACKWARD_IMPLS[backend](g, src, u, mode, padding, True, True)
                msg = f"{padding} {shape} {layout}"
                assert_close(got_s.float(), exp_s.float(), dtype, GRAD_TOLERANCES, msg=msg)
                assert_close(got_u, exp_u, dtype, GRAD_TOLERANCES, msg=msg)
                only_u = W2.BACKWARD_IMPLS[backend](g, src, u, mode, padding, False, True)
                assert only_u[0].numel() == 0
                assert_close(only_u[1], exp_u, dtype, GRAD_TOLERANCES, msg=msg)


@pytest.mark.gpu
def test_cuda_kernel_writes_every_element(monkeypatch):
    """Direct calls into poisoned buffers: forward out and backward grad_u are written
    completely, on the vectorised (W % 4 == 0, contiguous u) and the scalar path."""
    mod = _gpu_backend(monkeypatch, "cuda")
    stream = torch.cuda.current_stream().cuda_stream
    for shape, h, w in [((2, 3, 13, 11), 13, 11), ((2, 3, 12, 16), 12, 16)]:
        for dtype in FLOATS:
            src, u = _inputs(shape, h, w, dtype, device="cuda")
            for mode in MODES:
                for padding in PADS:
                    interp, pad = enums(mod, mode, padding)
                    out = poisoned((shape[0], shape[1], h, w), dtype, "cuda")
                    mod.warp2d_forward(
                        src.data_ptr(),
                        list(src.stride()),
                        kernel_dtype(mod, dtype),
                        u.data_ptr(),
                        list(u.stride()),
                        out.data_ptr(),
                        W2._geom(src, u),
                        interp,
                        pad,
                        stream,
                    )
                    assert_close(out, warp2d_reference(src, u, mode, padding), dtype)
                    g = rand(out.shape, dtype, low=-1, high=1, seed=2).cuda()
                    gs = torch.zeros(shape, dtype=_acc(dtype), device="cuda")
                    gu = poisoned(u.shape, _acc(dtype), "cuda")
                    mod.warp2d_backward(
                        g.data_ptr(),
                        list(g.stride()),
                        src.data_ptr(),
                        list(src.stride()),
                        kernel_dtype(mod, dtype),
                        u.data_ptr(),
                        list(u.stride()),
                        gs.data_ptr(),
                        gu.data_ptr(),
                        W2._geom(src, u),
                        interp,
                        pad,
                        stream,
                    )
                    exp_s, exp_u = _expected_grads(g, src, u, mode, padding)
                    assert_close(gs.to(dtype).float(), exp_s.float(), dtype, GRAD_TOLERANCES)
                    assert_close(gu, exp_u, dtype, GRAD_TOLERANCES)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_nonfinite_and_large_batch(monkeypatch, backend):
    _gpu_backend(monkeypatch, backend)
    src = rand((1, 1, 6, 6)).cuda()
    u = torch.zeros(1, 2, 6, 6)
    u[0, 0, 2, 3] = float("nan")
    u[0, 1, 4, 4] = float("inf")
    u = u.cuda()
    for mode in MODES:
        for padding in PADS:
            out = W2.IMPLS[backend](src, u, mode, padding)
            assert torch.isfinite(out).all()
            if _backends.load("cpu") is not None and "warp2d" in _backends.load("cpu").ops:
                assert_close(out, W2.IMPLS["cpu"](src.cpu(), u.cpu(), mode, padding))
    # many slices of a realistic size, C = 1 (the propagation workload)
    src = rand((16, 1, 64, 64)).cuda()
    u = ((rand((16, 2, 64, 64), seed=4) * 2 - 1) * 6).cuda()
    assert_close(W2.IMPLS[backend](src, u, "bilinear", "zeros"), warp2d_reference(src, u))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("mode", MODES)
def test_gpu_opcheck(monkeypatch, backend, mode):
    _gpu_backend(monkeypatch, backend)
    shape = (2, 2, 6, 8)
    src = rand(shape, low=-1, high=1).cuda().requires_grad_()
    u = (((rand((2, 2, 6, 8), seed=1) * 2 - 1) * 2.0) + 0.31).cuda().requires_grad_()
    torch.library.opcheck(torch.ops.dilseg.warp2d.default, (src, u, mode, "zeros"))
    g = rand(shape, seed=5).cuda()
    torch.library.opcheck(
        torch.ops.dilseg.warp2d_backward.default, (g, src.detach(), u.detach(), mode, "border", True, True)
    )
