"""slice_residuals: reference vs an independent float64 oracle; C++, Triton
(TRITON_INTERPRET=1, tiny grids) and, gpu-marked, CUDA / compiled Triton vs the
reference; every data dtype (uint8 masks, bf16, fp16, mixed q/p), w = None /
per-slice / full, strided views whose gaps hold poison, poisoned outputs; the
public entry's typed errors; the custom op (opcheck, fake under torch.compile).

Outputs are float32 sums whatever the input dtypes (16-bit and uint8 inputs widen
to float32 exactly), so every comparison uses the float32 row of the tolerance
table: sums of at most a few thousand terms accumulated in different orders.
"""

import sys

import pytest
import torch

import engine.ops  # noqa: F401  (registers dilseg::slice_residuals)
from engine import _backends
from engine.errors import DTypeError, InputError, MaskError, NonFiniteError, ShapeError
from engine.ops import slice_residuals, slice_residuals_reference

from ._oracle import FixedThreads, assert_close, has_kernel, poisoned, rand, requires_cpu_ext

SR = sys.modules["engine.ops.slice_residuals"]
DATA = [torch.float32, torch.float16, torch.bfloat16, torch.uint8]
WEIGHTS = ["none", "slice", "slice_bf16", "full_f32", "full_f16", "full_bf16"]
# odd sizes; one wider than a 128-column strip and taller than a 32-row band
SHAPES = [(1, 1, 1), (3, 5, 7), (4, 37, 133)]
TINY = [(1, 1, 1), (3, 5, 7), (2, 9, 19)]


def _poison(dtype):
    return float("nan") if dtype.is_floating_point else 0xAB


def _strided(t):
    """``t`` as a view whose skipped elements hold poison (NaN / 0xAB)."""
    big = torch.full(t.shape[:-1] + (2 * t.shape[-1] + 1,), _poison(t.dtype), dtype=t.dtype, device=t.device)
    v = big[..., 1::2]
    v.copy_(t)
    return v


def _inputs(shape, qd, pd, wkind, noncontig=False, seed=0, device="cpu"):
    D, H, W = shape
    q = rand(shape, qd, seed=seed)
    p = rand(shape, pd, seed=seed + 1)
    if wkind == "none":
        w = None
    elif wkind.startswith("slice"):
        w = rand((D,), torch.bfloat16 if wkind.endswith("bf16") else torch.float32, low=0.1, high=1.0, seed=seed + 2)
    else:
        wd = {"full_f32": torch.float32, "full_f16": torch.float16, "full_bf16": torch.bfloat16}[wkind]
        w = rand(shape, wd, low=0.1, high=1.0, seed=seed + 3)
    q, p = q.to(device), p.to(device)
    w = None if w is None else w.to(device)
    if noncontig:
        q, p = _strided(q), _strided(p)
        w = None if w is None else _strided(w)
    return q, p, w


def _oracle(q, p, w):
    r = (q.double() - p.double()).abs()
    if w is not None:
        r = r * (w.double().view(-1, 1, 1) if w.dim() == 1 else w.double())
    return r.sum((1, 2)), r.sum((0, 2)), r.sum((0, 1))


def _check(got, expected):
    if isinstance(got, torch.Tensor):  # a backend's packed [D+H+W] buffer
        got = SR.split(got, expected[0].shape[0], expected[1].shape[0], expected[2].shape[0])
    assert len(got) == 3
    for g, e in zip(got, expected):
        assert g.dtype == torch.float32 and g.shape == e.shape
        assert_close(g, e.float(), torch.float32)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("wkind", ["none", "slice", "full_f32"])
def test_reference_matches_float64_oracle(shape, wkind):
    q, p, w = _inputs(shape, torch.float32, torch.bfloat16, wkind)
    _check(slice_residuals_reference(q, p, w), _oracle(q, p, w))


@requires_cpu_ext
@pytest.mark.parametrize("qd", DATA)
@pytest.mark.parametrize("wkind", WEIGHTS)
@pytest.mark.parametrize("noncontig", [False, True])
def test_cpu_matches_reference(qd, wkind, noncontig):
    for i, shape in enumerate(SHAPES):
        for pd in (qd, torch.float32 if qd != torch.float32 else torch.uint8):  # same and mixed dtypes
            q, p, w = _inputs(shape, qd, pd, wkind, noncontig, seed=i)
            D, H, W = shape
            out = poisoned((D + H + W,), torch.float32)
            got = SR.IMPLS["cpu"](q, p, w, out)
            assert torch.isfinite(out).all(), "an output element was not written"
            _check(got, slice_residuals_reference(q, p, w))


@requires_cpu_ext
def test_cpu_thread_counts_agree():
    q, p, w = _inputs((9, 21, 17), torch.float32, torch.float32, "slice")
    ref = slice_residuals_reference(q, p, w)
    for nt in (1, 2, 3, 16):  # more threads than planes too
        got = SR._native(FixedThreads(nt), q, p, w)
        _check(got, ref)


@pytest.mark.parametrize("qd", DATA)
@pytest.mark.parametrize("wkind", ["none", "slice", "full_f16"])
def test_triton_interpreter_matches_reference(qd, wkind, monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    _backends.reset()
    mod = _backends.load("triton")
    assert mod is not None and has_kernel("slice_residuals", "triton"), _backends.status("triton").detail
    for i, shape in enumerate(TINY):
        q, p, w = _inputs(shape, qd, torch.bfloat16, wkind, noncontig=i == 2, seed=i)
        D, H, W = shape
        out = poisoned((D + H + W,), torch.float32)
        _check(SR.IMPLS["triton"](q, p, w, out), slice_residuals_reference(q, p, w))


def test_public_entry_and_selection():
    q, p, w = _inputs((5, 7, 9), torch.uint8, torch.float16, "slice")
    sz, sy, sx = slice_residuals(q, p, w)
    _check((sz, sy, sx), slice_residuals_reference(q, p, w))
    # [D, 1, 1] is the same per-slice weight
    _check(slice_residuals(q, p, w.view(-1, 1, 1)), (sz, sy, sx))
    # the three sums share one total
    assert_close(sz.sum(), sx.sum(), torch.float32)
    assert_close(sy.sum(), sx.sum(), torch.float32)


def test_inputs_requiring_grad_are_detached():
    q, p, _ = _inputs((3, 4, 5), torch.float32, torch.float32, "none")
    sz, _, _ = slice_residuals(q.requires_grad_(), p)
    assert not sz.requires_grad


def test_reference_fallback_equals_kernel(monkeypatch):
    q, p, w = _inputs((4, 6, 11), torch.float32, torch.bfloat16, "full_bf16", noncontig=True)
    monkeypatch.setenv("ENGINE_CPU_BACKEND", "reference")
    _backends.reset()
    ref = slice_residuals(q, p, w)
    monkeypatch.delenv("ENGINE_CPU_BACKEND")
    _backends.reset()
    _check(slice_residuals(q, p, w), ref)


@pytest.mark.parametrize(
    "make,err",
    [
        (lambda: (torch.rand(2, 3), torch.rand(2, 3), None), ShapeError),
        (lambda: (torch.rand(2, 3, 4), torch.rand(2, 3, 5), None), ShapeError),
        (lambda: (torch.rand(0, 3, 4), torch.rand(0, 3, 4), None), ShapeError),
        (lambda: (torch.rand(2, 3, 4), torch.rand(2, 3, 4), torch.rand(3)), ShapeError),
        (lambda: (torch.rand(2, 3, 4), torch.rand(2, 3, 4), torch.rand(1, 3, 4)), ShapeError),
        (lambda: (torch.rand(2, 3, 4).double(), torch.rand(2, 3, 4), None), DTypeError),
        (lambda: (torch.rand(2, 3, 4), torch.ones(2, 3, 4, dtype=torch.int32), None), DTypeError),
        (lambda: (torch.rand(2, 3, 4), torch.rand(2, 3, 4), torch.ones(2, dtype=torch.int64)), DTypeError),
        (lambda: (torch.rand(2, 3, 4), torch.rand(2, 3, 4), [1.0, 2.0]), InputError),
        (lambda: (torch.rand(2, 3, 4).numpy(), torch.rand(2, 3, 4), None), InputError),
        (lambda: (torch.full((2, 3, 4), float("nan")), torch.rand(2, 3, 4), None), NonFiniteError),
        (lambda: (torch.rand(2, 3, 4), torch.rand(2, 3, 4), torch.tensor([1.0, float("inf")])), NonFiniteError),
        (lambda: (torch.full((2, 3, 4), 2, dtype=torch.uint8), torch.rand(2, 3, 4), None), MaskError),
    ],
)
def test_bad_input_raises_typed_error(make, err):
    q, p, w = make()
    with pytest.raises(err):  # value scans are opt-in: NaN/Inf and mask values with check_finite=True
        slice_residuals(q, p, w, check_finite=err in (NonFiniteError, MaskError))


def test_nan_propagates_without_check():
    q, p, _ = _inputs((3, 4, 5), torch.float32, torch.float32, "none")
    q[1, 2, 3] = float("nan")
    for kw in ({"check_finite": False}, {}):  # off by default
        sz, sy, sx = slice_residuals(q, p, **kw)
        assert torch.isnan(sz[1]) and torch.isfinite(sz[0]) and torch.isnan(sy[2]) and torch.isnan(sx[3])


def test_opcheck():
    q, p, w = _inputs((3, 5, 6), torch.float32, torch.bfloat16, "slice")
    torch.library.opcheck(torch.ops.dilseg.slice_residuals.default, (q, p, w))
    torch.library.opcheck(torch.ops.dilseg.slice_residuals.default, (q, p, None))


def test_compile_traces_through_fake():
    q, p, w = _inputs((3, 5, 6), torch.float32, torch.float32, "full_f32")
    fn = torch.compile(
        lambda a, b, c: slice_residuals(a, b, c, check_finite=False)[0] * 2, backend="eager", fullgraph=True
    )
    assert_close(fn(q, p, w), slice_residuals_reference(q, p, w)[0] * 2, torch.float32)


# --- GPU (skipped centrally without a CUDA device) -----------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("qd", DATA)
@pytest.mark.parametrize("wkind", WEIGHTS)
def test_gpu_matches_reference(backend, qd, wkind):
    if backend == "triton" and wkind in ("slice_bf16", "full_f32", "full_bf16"):
        pytest.skip(
            "keeps Triton compiles few; the weight dtype is only a load cast (covered by the interpreter and CUDA)"
        )
    mod = _backends.load(backend)
    if mod is None or not has_kernel("slice_residuals", backend):
        pytest.skip(_backends.status(backend).detail)
    for i, shape in enumerate(SHAPES + [(33, 64, 300)]):
        for noncontig in (False, True):
            q, p, w = _inputs(shape, qd, torch.bfloat16, wkind, noncontig, seed=i, device="cuda")
            D, H, W = shape
            out = poisoned((D + H + W,), torch.float32, device="cuda")
            got = SR.IMPLS[backend](q, p, w, out)
            _check(got, slice_residuals_reference(q, p, w))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_entry_makes_no_host_sync(backend, monkeypatch):
    monkeypatch.setenv("ENGINE_GPU_BACKEND", backend)
    _backends.reset()
    mod = _backends.load(backend)
    if mod is None or not has_kernel("slice_residuals", backend):
        pytest.skip(_backends.status(backend).detail)
    q, p, w = _inputs((7, 40, 150), torch.float32, torch.bfloat16, "slice", device="cuda")
    slice_residuals(q, p, w, check_finite=False)  # warm-up (jit, module load)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = slice_residuals(q, p, w, check_finite=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    _check(got, slice_residuals_reference(q, p, w))


@pytest.mark.gpu
def test_gpu_opcheck():
    q, p, w = _inputs((3, 5, 6), torch.float32, torch.bfloat16, "slice", device="cuda")
    torch.library.opcheck(torch.ops.dilseg.slice_residuals.default, (q, p, w))
