"""instance_norm / instance_norm_backward: the reference against torch's instance_norm,
the C++ kernel pinned to the reference (run in float64 on the same float32 inputs) in
both layouts on random odd shapes, every output element written (poisoned buffers
through the binding), accuracy far from 0, the layout capacity, typed errors, opcheck."""

import sys

import pytest
import torch

import engine.ops  # noqa: F401  (registers dilseg::instance_norm)
from engine.errors import DTypeError, InputError, ShapeError
from engine.ops import (
    instance_norm,
    instance_norm_backward,
    instance_norm_backward_reference,
    instance_norm_reference,
)
from engine.ops._declare import registry

from ._oracle import load_backend, poisoned, requires_cpu_ext

IN = sys.modules["engine.ops.instance_norm"]

# (N, C, D, H, W): batch 1 and 2, one channel, a single position per instance, sizes
# that are no multiple of a vector width or of the kernel's 128-position blocks
SHAPES = [(2, 8, 7, 13, 11), (1, 5, 3, 1, 13), (3, 1, 5, 9, 7), (2, 16, 1, 1, 1), (1, 3, 9, 17, 33), (2, 24, 5, 6, 7)]
IDS = ["x".join(map(str, s)) for s in SHAPES]


def _inputs(shape, layout, seed=0, centre=2.0):
    g = torch.Generator().manual_seed(seed)
    x = centre + 1.5 * torch.randn(shape, generator=g)
    dy = torch.randn(shape, generator=g)
    w = torch.rand(shape[1], generator=g) + 0.5
    b = torch.randn(shape[1], generator=g)
    if layout == "channels_last":
        x, dy = (t.contiguous(memory_format=torch.channels_last_3d) for t in (x, dy))
    return x, dy, w, b


def _close(got, exp, atol=2e-5, rtol=2e-5):
    torch.testing.assert_close(got.double(), exp.double(), atol=atol, rtol=rtol)


def _sums_close(got, exp, n):
    # dweight / dbias sum n products: the float64 reference is exact to ~1e-16; the
    # kernel's float blocks + double totals are off by a few float ulps of a block sum
    torch.testing.assert_close(got.double(), exp.double(), atol=1e-5 * n**0.5, rtol=2e-5)


def test_reference_equals_torch_instance_norm_in_float64():
    x, dy, w, b = (t.double() for t in _inputs((2, 5, 4, 7, 6), "contiguous", seed=1))
    xr, wr, br = (t.clone().requires_grad_() for t in (x, w, b))
    ref = torch.nn.functional.instance_norm(xr, weight=wr, bias=br, eps=1e-5)
    ref.backward(dy)
    y, mean, rstd = instance_norm_reference(x, w, b, 1e-5)
    torch.testing.assert_close(y, ref.detach(), atol=1e-12, rtol=1e-12)
    dx, dw, db = instance_norm_backward_reference(dy, x, mean, rstd, w)
    for got, exp in ((dx, xr.grad), (dw, wr.grad), (db, br.grad)):
        torch.testing.assert_close(got, exp, atol=1e-10, rtol=1e-10)


@requires_cpu_ext
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_cpu_matches_reference(shape, layout):
    x, dy, w, b = _inputs(shape, layout, seed=sum(shape))
    assert registry["instance_norm"].select(x, w, b, 1e-5) == "cpu"
    y, mean, rstd = IN.IMPLS["cpu"](x, w, b, 1e-5)
    ye, me, re = instance_norm_reference(x.double(), w.double(), b.double(), 1e-5)
    _close(y, ye)
    _close(mean, me)
    _close(rstd, re)
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last_3d)
    assert registry["instance_norm_backward"].select(dy, x, mean, rstd, w) == "cpu"
    dx, dw, db = IN.BACKWARD_IMPLS["cpu"](dy, x, mean, rstd, w)
    dxe, dwe, dbe = instance_norm_backward_reference(dy.double(), x.double(), mean.double(), rstd.double(), w.double())
    _close(dx, dxe)
    n = shape[0] * x[0, 0].numel()
    _sums_close(dw, dwe, n)
    _sums_close(db, dbe, n)


@requires_cpu_ext
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cpu_kernel_writes_every_output_element(layout):
    shape = (2, 6, 5, 9, 7)
    x, dy, w, b = _inputs(shape, layout, seed=3)
    N, Cc, S = shape[0], shape[1], 5 * 9 * 7
    mod = load_backend("cpu")
    cl = layout == "channels_last"
    y = poisoned(shape, torch.float32)
    if cl:
        y = y.contiguous(memory_format=torch.channels_last_3d)
    mean, rstd = poisoned((N, Cc), torch.float32), poisoned((N, Cc), torch.float32)
    mod.instance_norm_forward(
        x.data_ptr(), w.data_ptr(), b.data_ptr(), y.data_ptr(), mean.data_ptr(), rstd.data_ptr(), N, Cc, S, cl, 1e-5, 2
    )
    ye, me, re = instance_norm_reference(x, w, b, 1e-5)
    for got, exp in ((y, ye), (mean, me), (rstd, re)):
        _close(got, exp)
    dx = torch.full_like(x, float("nan"))
    dw, db = poisoned((Cc,), torch.float32), poisoned((Cc,), torch.float32)
    mod.instance_norm_backward(
        dy.data_ptr(), x.data_ptr(), me.data_ptr(), re.data_ptr(), w.data_ptr(), dx.data_ptr(), dw.data_ptr(),
        db.data_ptr(), N, Cc, S, cl, 2,
    )  # fmt: skip
    dxe, dwe, dbe = instance_norm_backward_reference(dy, x, me, re, w)
    _close(dx, dxe)
    _sums_close(dw, dwe, N * S)
    _sums_close(db, dbe, N * S)
    with pytest.raises(ValueError):  # an empty instance is refused by the binding
        mod.instance_norm_forward(
            x.data_ptr(), w.data_ptr(), b.data_ptr(), y.data_ptr(), mean.data_ptr(), rstd.data_ptr(), N, Cc, 0, cl,
            1e-5, 1,
        )  # fmt: skip


@requires_cpu_ext
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cpu_is_accurate_far_from_zero_and_does_not_depend_on_threads(layout):
    """Data at 1000 +- 1: two passes keep the variance (a one-pass E[x^2] - mean^2 in
    float32 would lose it); the result is bit-identical across calls at one thread
    count and close across thread counts."""
    x, dy, w, b = _inputs((2, 4, 9, 31, 29), layout, seed=5, centre=1000.0)
    ye, me, re = instance_norm_reference(x.double(), w.double(), b.double(), 1e-5)
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 2):
            torch.set_num_threads(n)
            outs.append(IN.IMPLS["cpu"](x, w, b, 1e-5))
    finally:
        torch.set_num_threads(threads)
    _close(outs[0][2], re, atol=0, rtol=1e-5)
    _close(outs[0][0], ye, atol=2e-3, rtol=2e-3)  # x - mean at 1000 carries float32's 6e-5 ulp
    assert all(torch.equal(a, c) for a, c in zip(outs[1], outs[2]))
    for a, c in zip(outs[0], outs[1]):
        _close(a, c, atol=2e-3, rtol=1e-5)


def test_other_layouts_and_float64_go_to_the_reference():
    x, dy, w, b = _inputs((2, 3, 5, 6, 7), "contiguous", seed=7)
    xt = x.transpose(2, 4)  # neither contiguous nor channels_last_3d
    assert registry["instance_norm"].select(xt, w, b, 1e-5) == "reference"
    assert registry["instance_norm"].select(x.double(), w.double(), b.double(), 1e-5) == "reference"
    y, mean, rstd = instance_norm(xt, w, b, 1e-5)
    ye, _, _ = instance_norm_reference(xt.contiguous(), w, b, 1e-5)
    _close(y, ye)
    xc = x.contiguous(memory_format=torch.channels_last_3d)
    assert registry["instance_norm_backward"].select(dy, xc, mean, rstd, w) == "reference"  # layouts differ


def test_public_entries_and_opcheck():
    x, dy, w, b = _inputs((2, 3, 4, 5, 6), "channels_last", seed=9)
    y, mean, rstd = instance_norm(x, w, b, 1e-5)
    ye, me, re = instance_norm_reference(x, w, b, 1e-5)
    _close(y, ye)
    dx, dw, db = instance_norm_backward(dy, x, mean, rstd, w)
    for got, exp in zip((dx, dw, db), instance_norm_backward_reference(dy, x, me, re, w)):
        _close(got, exp, atol=1e-4)
    for op, args in (
        (torch.ops.dilseg.instance_norm.default, (x, w, b, 1e-5)),
        (torch.ops.dilseg.instance_norm_backward.default, (dy, x, mean, rstd, w)),
    ):
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize(
    "kw,err",
    [
        (dict(x=torch.rand(2, 3, 4, 5)), ShapeError),
        (dict(x=torch.rand(2, 3, 4, 5, 6, dtype=torch.float16)), DTypeError),
        (dict(weight=torch.rand(4)), ShapeError),
        (dict(bias=torch.rand(3, dtype=torch.float64)), DTypeError),
        (dict(x=torch.rand(2, 3, 0, 5, 6)), ShapeError),
        (dict(eps=-1.0), InputError),
        (dict(x=[[0.0]]), InputError),
    ],
)
def test_bad_input_raises_typed_error(kw, err):
    args = dict(x=torch.rand(2, 3, 4, 5, 6), weight=torch.rand(3), bias=torch.rand(3), eps=1e-5)
    args.update(kw)
    with pytest.raises(err):
        instance_norm(args["x"], args["weight"], args["bias"], args["eps"])


@pytest.mark.parametrize(
    "kw,err",
    [
        (dict(dy=torch.rand(2, 3, 4, 5, 7)), ShapeError),
        (dict(mean=torch.rand(3, 2)), ShapeError),
        (dict(rstd=torch.rand(2, 3, dtype=torch.float64)), DTypeError),
        (dict(weight=torch.rand(2)), ShapeError),
    ],
)
def test_backward_bad_input_raises_typed_error(kw, err):
    x = torch.rand(2, 3, 4, 5, 6)
    args = dict(dy=torch.rand_like(x), x=x, mean=torch.rand(2, 3), rstd=torch.rand(2, 3), weight=torch.rand(3))
    args.update(kw)
    with pytest.raises(err):
        instance_norm_backward(args["dy"], args["x"], args["mean"], args["rstd"], args["weight"])
