"""demons_step: the reference against the composition it replaced, every backend
pinned to the reference (Triton through the interpreter on CPU tensors; compiled
Triton in the gpu-marked test), typed errors, opcheck."""

import sys

import pytest
import torch

import engine.ops  # noqa: F401  (registers dilseg::demons_step)
from engine.errors import DTypeError, InputError, NonFiniteError, ShapeError
from engine.ops import demons_step, demons_step_reference, warp2d_reference

from ._oracle import (
    assert_close,
    has_kernel,
    load_backend,
    poisoned,
    rand,
    requires_cpu_ext,
    smooth_field,
    triton_interpret,
)

DS = sys.modules["engine.ops.demons_step"]

# odd shapes, including size-1 axes (the gradient is 0 along them) and a 2-pixel axis
SHAPES = [(5, 13, 11), (3, 1, 9), (2, 7, 1), (4, 2, 6), (1, 23, 17)]


def _inputs(N, H, W, seed=0, noncontig=False):
    fixed = rand((N, 1, H, W), seed=seed, noncontig=noncontig) + 0.05
    moving = rand((N, 1, H, W), seed=seed + 1, noncontig=noncontig) + 0.05
    u = smooth_field(N, H, W, amplitude=3.0, seed=seed) + 0.3  # reaches past the border too
    g_fixed = (rand((N, 2, H, W), seed=seed + 2) - 0.5) * 0.6
    return fixed, moving, u, g_fixed


def _composition(fixed, moving, u, g_fixed, inv_k):
    """What engine/propagate/native.py computed before the op: warp, gradient, force."""
    from engine.propagate.native import image_gradient

    mw = warp2d_reference(moving, u, "bilinear", "border")
    diff = fixed - mw
    g = image_gradient(mw).add_(g_fixed).mul_(0.5)
    den = (g * g).sum(1, keepdim=True).addcmul_(diff, diff, value=inv_k)
    return g.mul_(diff / den.clamp_min_(1e-12))


@pytest.mark.parametrize("shape", SHAPES)
def test_reference_equals_the_composition_it_replaced(shape):
    args = _inputs(*shape)
    assert_close(demons_step_reference(*args, 1.0), _composition(*args, 1.0))


def test_step_is_bounded_by_max_step():
    args = _inputs(6, 19, 15, seed=4)
    for max_step in (0.25, 0.5, 1.0):
        s = demons_step_reference(*args, 1.0 / (4 * max_step**2))
        assert float(s.norm(dim=1).max()) <= max_step * (1 + 1e-5)


def test_no_step_where_images_agree():
    f, _, u, g = _inputs(2, 9, 8)
    zero_u = torch.zeros_like(u)
    assert torch.equal(demons_step_reference(f, f.clone(), zero_u, g, 1.0), torch.zeros_like(u))


@requires_cpu_ext
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("noncontig", [False, True])
def test_cpu_matches_reference(shape, noncontig):
    args = _inputs(*shape, seed=7, noncontig=noncontig)
    assert_close(DS.IMPLS["cpu"](*args, 0.8), demons_step_reference(*args, 0.8))


@requires_cpu_ext
def test_cpu_kernel_writes_every_output_element():
    N, H, W = 3, 10, 7
    f, m, u, g = (t.contiguous() for t in _inputs(N, H, W, seed=9))
    out = poisoned((N, 2, H, W), torch.float32)
    load_backend("cpu").demons_step(
        f.data_ptr(), m.data_ptr(), u.data_ptr(), g.data_ptr(), out.data_ptr(), N, H, W, 1.0, 2
    )
    assert_close(out, demons_step_reference(f, m, u, g, 1.0))


def test_triton_interpreter_matches_reference():
    with triton_interpret():
        tk = load_backend("triton")
        for shape in SHAPES[:4]:
            args = _inputs(*shape, seed=11)
            out = poisoned((shape[0], 2, shape[1], shape[2]), torch.float32)
            tk.demons_step_forward(*args, 1.0, out)
            assert_close(out, demons_step_reference(*args, 1.0))


def test_public_entry_and_opcheck():
    args = _inputs(2, 6, 5, seed=3)
    assert_close(demons_step(*args, 1.0), demons_step_reference(*args, 1.0))
    torch.library.opcheck(
        torch.ops.dilseg.demons_step.default, (*args, 1.0), test_utils=("test_schema", "test_faketensor")
    )


def _bad(which, value):
    args = list(_inputs(2, 6, 5))
    args[which] = value
    return args


@pytest.mark.parametrize(
    "args,err",
    [
        (_bad(0, torch.rand(2, 6, 5)), ShapeError),
        (_bad(1, torch.rand(2, 2, 6, 5)), ShapeError),
        (_bad(2, torch.rand(2, 2, 6, 4)), ShapeError),
        (_bad(3, torch.rand(3, 2, 6, 5)), ShapeError),
        (_bad(0, torch.rand(2, 1, 6, 5, dtype=torch.float64)), DTypeError),
        (_bad(2, torch.full((2, 2, 6, 5), float("nan"))), NonFiniteError),
        (_bad(1, [[0.0]]), InputError),
    ],
)
def test_bad_input_raises_typed_error(args, err):
    with pytest.raises(err):  # value scans are opt-in: NaN/Inf with check_finite=True
        demons_step(*args, 1.0, check_finite=err is NonFiniteError)
    with pytest.raises(InputError):
        demons_step(*_inputs(2, 6, 5), -1.0)


@pytest.mark.gpu
def test_triton_on_gpu_matches_reference():
    if not has_kernel("demons_step", "triton"):
        pytest.skip("triton backend not available")
    for shape in SHAPES + [(43, 95, 71), (63, 128, 128)]:
        args = _inputs(*shape, seed=5)
        exp = demons_step_reference(*args, 1.0)
        got = DS.IMPLS["triton"](*[a.cuda() for a in args], 1.0)
        assert_close(got, exp)


def test_out_buffer_is_written_and_checked():
    f, m, u, g = (t.contiguous() for t in _inputs(3, 8, 7, seed=13))
    out = poisoned(u.shape, torch.float32)
    assert demons_step(f, m, u, g, 1.0, out=out) is out
    assert_close(out, demons_step_reference(f, m, u, g, 1.0))
    for bad, err in (
        (u, InputError),
        (g, InputError),
        (torch.empty(3, 2, 8, 6), ShapeError),
        (torch.empty(3, 2, 8, 7, dtype=torch.float64), DTypeError),
    ):
        with pytest.raises(err):
            demons_step(f, m, u, g, 1.0, out=bad)
    torch.library.opcheck(
        torch.ops.dilseg.demons_step_out.default,
        (f, m, u, g, 1.0, torch.empty_like(u)),
        test_utils=("test_schema", "test_faketensor"),
    )
