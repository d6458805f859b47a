"""regularize_field: the reference against the composition it replaced in the native
registration (smooth, then couple), every backend pinned to the reference (Triton
through the interpreter on CPU tensors; compiled Triton in the gpu-marked test),
typed errors, opcheck."""

import sys

import pytest
import torch

import engine.ops  # noqa: F401  (registers dilseg::regularize_field)
from engine.errors import DTypeError, InputError, NonFiniteError, ShapeError
from engine.ops import regularize_field, regularize_field_reference

from ._oracle import assert_close, has_kernel, load_backend, poisoned, rand, requires_cpu_ext, triton_interpret

RF = sys.modules["engine.ops.regularize_field"]

# odd shapes: (N, C, H, W); N = 1 (no coupling possible), planes smaller than the
# Gaussian's radius (smoothing skipped), a 2-entry run (mirrored ends meet)
SHAPES = [(5, 2, 13, 11), (1, 2, 9, 7), (4, 2, 2, 6), (6, 3, 7, 17), (2, 2, 5, 5)]
# (sigma, coupling, groups)
SETTINGS = [(1.0, 0.1, 1), (1.0, 0.1, 2), (0.0, 0.25, 1), (1.7, 0.0, 1), (0.6, 0.5, 1), (1.0, 0.1, 5)]


# every (shape, setting) pair whose groups divide N
CASES = [(sh, st) for sh in SHAPES for st in SETTINGS if sh[0] % st[2] == 0]
IDS = [f"{'x'.join(map(str, sh))}-s{st[0]}-w{st[1]}-g{st[2]}" for sh, st in CASES]


def _inputs(N, C, H, W, seed=0, noncontig=False):
    u = (rand((N, C, H, W), seed=seed, noncontig=noncontig) - 0.5) * 6.0
    step = rand((N, C, H, W), seed=seed + 1, noncontig=noncontig) - 0.5
    return u, step


def _valid(shape, groups):
    return shape[0] % groups == 0


def _composition(u, step, sigma, coupling, groups):
    """What engine/propagate/native.py computed before the op: smooth, then couple."""
    from engine.propagate.native import _couple_pairs, gaussian_smooth

    a = u + step
    s = gaussian_smooth(a, sigma)
    return _couple_pairs(s, coupling, groups) if coupling > 0 else s


@pytest.mark.parametrize("shape,setting", CASES, ids=IDS)
def test_reference_equals_the_composition_it_replaced(shape, setting):
    sigma, coupling, groups = setting
    args = _inputs(*shape, seed=2)
    assert_close(regularize_field_reference(*args, sigma, coupling, groups), _composition(*args, *setting))


def test_smoothing_keeps_constants_and_coupling_keeps_equal_pairs():
    u = torch.full((4, 2, 9, 8), 1.75)
    step = torch.full_like(u, 0.25)
    assert_close(regularize_field_reference(u, step, 1.3, 0.2, 1), torch.full_like(u, 2.0))
    # a field whose pairs differ is pulled towards its neighbours' mean
    u, step = _inputs(5, 2, 9, 8, seed=4)
    out = regularize_field_reference(u, step, 0.0, 0.5, 1)
    a = u + step
    assert_close(out[2], 0.5 * (a[1] + a[3]))


@requires_cpu_ext
@pytest.mark.parametrize("shape,setting", CASES, ids=IDS)
@pytest.mark.parametrize("noncontig", [False, True])
def test_cpu_matches_reference(shape, setting, noncontig):
    args = _inputs(*shape, seed=7, noncontig=noncontig)
    assert_close(RF.IMPLS["cpu"](*args, *setting), regularize_field_reference(*args, *setting))


@requires_cpu_ext
def test_cpu_kernel_writes_every_output_element():
    N, Cc, H, W = 4, 2, 11, 9
    u, step = (t.contiguous() for t in _inputs(N, Cc, H, W, seed=9))
    for sigma, coupling, groups in SETTINGS[:4]:
        out = poisoned((N, Cc, H, W), torch.float32)
        load_backend("cpu").regularize_field(
            u.data_ptr(),
            step.data_ptr(),
            out.data_ptr(),
            N,
            Cc,
            H,
            W,
            list(RF._taps_for(sigma, H, W)),
            coupling,
            groups,
            2,
        )
        assert_close(out, regularize_field_reference(u, step, sigma, coupling, groups))
    with pytest.raises(ValueError):  # an even tap count is refused by the binding
        load_backend("cpu").regularize_field(
            u.data_ptr(), step.data_ptr(), out.data_ptr(), N, Cc, H, W, [0.5, 0.5], 0.0, 1, 1
        )


def test_triton_interpreter_matches_reference():
    with triton_interpret():
        tk = load_backend("triton")
        for shape, setting in zip(SHAPES[:4], SETTINGS[:4]):
            sigma, coupling, groups = setting
            if not _valid(shape, groups):
                groups = 1
            args = _inputs(*shape, seed=11)
            out = poisoned(shape, torch.float32)
            tk.regularize_field_forward(*args, RF._taps_for(sigma, shape[2], shape[3]), coupling, groups, out)
            assert_close(out, regularize_field_reference(*args, sigma, coupling, groups))


def test_public_entry_and_opcheck():
    args = _inputs(4, 2, 7, 6, seed=3)
    assert_close(regularize_field(*args, 1.0, 0.1, 2), regularize_field_reference(*args, 1.0, 0.1, 2))
    torch.library.opcheck(
        torch.ops.dilseg.regularize_field.default, (*args, 1.0, 0.1, 2), test_utils=("test_schema", "test_faketensor")
    )


@pytest.mark.parametrize(
    "kw,err",
    [
        (dict(u=torch.rand(2, 6, 5)), ShapeError),
        (dict(step=torch.rand(2, 2, 6, 4)), ShapeError),
        (dict(u=torch.rand(2, 2, 6, 5, dtype=torch.float64)), DTypeError),
        (dict(step=torch.full((2, 2, 6, 5), float("inf"))), NonFiniteError),
        (dict(u=[[0.0]]), InputError),
        (dict(sigma=-1.0), InputError),
        (dict(coupling=0.7), InputError),
        (dict(groups=3), InputError),
        (dict(groups=0), InputError),
    ],
)
def test_bad_input_raises_typed_error(kw, err):
    u, step = _inputs(2, 2, 6, 5)
    args = dict(u=u, step=step, sigma=1.0, coupling=0.1, groups=1)
    args.update(kw)
    with pytest.raises(err):  # value scans are opt-in: NaN/Inf with check_finite=True
        regularize_field(
            args["u"], args["step"], args["sigma"], args["coupling"], args["groups"], check_finite=err is NonFiniteError
        )


@pytest.mark.gpu
def test_triton_on_gpu_matches_reference():
    if not has_kernel("regularize_field", "triton"):
        pytest.skip("triton backend not available")
    for shape in SHAPES + [(86, 2, 95, 71), (126, 2, 128, 128)]:
        for setting in SETTINGS[:3]:
            if not _valid(shape, setting[2]):
                continue
            args = _inputs(*shape, seed=5)
            exp = regularize_field_reference(*args, *setting)
            got = RF.IMPLS["triton"](*[a.cuda() for a in args], *setting)
            assert_close(got, exp)


def test_out_buffer_is_written_and_checked():
    u, step = _inputs(4, 2, 9, 8, seed=12)
    out = poisoned(u.shape, torch.float32)
    got = regularize_field(u, step, 1.0, 0.1, 2, out=out)
    assert got is out
    assert_close(out, regularize_field_reference(u, step, 1.0, 0.1, 2))
    u = u.contiguous()
    for bad, err in (
        (u, InputError),
        (torch.empty(4, 2, 9, 7), ShapeError),
        (torch.empty(4, 2, 9, 8, dtype=torch.float64), DTypeError),
        (torch.empty(4, 2, 8, 9).transpose(2, 3), InputError),
    ):
        with pytest.raises(err):
            regularize_field(u, step, 1.0, 0.1, 2, out=bad)
    torch.library.opcheck(
        torch.ops.dilseg.regularize_field_out.default,
        (u, step, 1.0, 0.1, 2, torch.empty_like(u)),
        test_utils=("test_schema", "test_faketensor"),
    )
