"""propagate_chain: properties of the reference, every backend pinned to it.

Backends: ``cpu`` (C++), ``triton`` (interpreter on CPU tensors, tiny shapes here;
compiled on GPU in the gpu-marked tests), ``cuda`` (gpu-marked: values and the
single-launch guarantee).
"""

import sys

import pytest
import torch

import engine.ops  # noqa: F401  (registers dilseg::propagate_chain)
from engine.errors import DTypeError, InputError, MaskError, NonFiniteError, ShapeError, SliceIndexError
from engine.ops import propagate_chain, propagate_chain_reference

from ._oracle import (
    FixedThreads,
    assert_close,
    cpu_ext_loaded,
    has_kernel,
    load_backend,
    poisoned,
    requires_cpu_ext,
    smooth_field,
    triton_interpret,
)

PC = sys.modules["engine.ops.propagate_chain"]
FUSES = ["none", "nearest", "linear"]
MASK_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.uint8]


def _case(D, H, W, idx, *, amp=1.5, drift=0.0, dtype=torch.float32, noncontig=False, seed=0):
    """Soft masks (blobs in [0,1]), smooth fields (+ a constant row drift), annotated bools."""
    g = torch.Generator().manual_seed(seed)
    yy = torch.arange(H, dtype=torch.float32).view(1, H, 1)
    xx = torch.arange(W, dtype=torch.float32).view(1, 1, W)
    cy = torch.rand(D, 1, 1, generator=g) * H * 0.5 + H * 0.25
    cx = torch.rand(D, 1, 1, generator=g) * W * 0.5 + W * 0.25
    r2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / (0.3 * min(H, W)) ** 2
    masks = torch.clamp(1.5 - r2, 0, 1)  # soft edges, a flat core
    if dtype == torch.uint8:
        masks = (masks > 0.5).to(torch.uint8)
    else:
        masks = masks.to(dtype)
    if noncontig:
        big = torch.zeros(D, H, 2 * W, dtype=masks.dtype)
        big[..., ::2] = masks
        masks = big[..., ::2]
    fwd = smooth_field(max(D - 1, 0), H, W, amplitude=amp, seed=seed + 1)
    bwd = smooth_field(max(D - 1, 0), H, W, amplitude=amp, seed=seed + 2)
    fwd[:, 0] += drift
    bwd[:, 0] -= drift
    if noncontig:
        fwd = fwd.transpose(2, 3).contiguous().transpose(2, 3)
        bwd = bwd.transpose(2, 3).contiguous().transpose(2, 3)
    ann = torch.zeros(D, dtype=torch.bool)
    ann[list(idx)] = True
    return masks, ann, fwd, bwd


def _check_same(got, exp, msg=""):
    names = ["from_below", "from_above", "dist_below", "dist_above", "q", "confidence"]
    for name, g, e in zip(names, got, exp):
        assert g.shape == e.shape and g.dtype == e.dtype, f"{msg} {name}: {g.shape}/{g.dtype} vs {e.shape}/{e.dtype}"
        if e.dtype == torch.int32:
            assert torch.equal(g.cpu(), e.cpu()), f"{msg} {name}"
        else:
            assert_close(g, e, msg=f"{msg} {name}")


def _margin_ok(masks, ann, res, min_mass, margin=2e-3):
    """True when no living chain slice has a mass ratio within `margin` of the
    threshold (so backends summing in different orders cannot disagree)."""
    fb, fa, db, da = res[:4]
    for vol, dist, sign in ((fb, db, -1), (fa, da, 1)):
        for z in range(masks.shape[0]):
            d = int(dist[z])
            if d <= 0:
                continue
            src = float(masks[z + sign * d].float().sum())
            if src == 0:
                continue
            ratio = float(vol[z].sum()) / src
            if ratio > 0 and abs(ratio - min_mass) < margin:
                return False
    return True


# --- properties of the reference ----------------------------------------------------


def test_zero_fields_copy_the_mask():
    masks, ann, fwd, bwd = _case(9, 11, 13, [3])
    fwd.zero_(), bwd.zero_()
    r = propagate_chain(masks, ann, fwd, bwd, fuse="linear")
    for z in range(9):
        if z >= 3:
            assert torch.equal(r.from_below[z], masks[3])
        if z <= 3:
            assert torch.equal(r.from_above[z], masks[3])
        assert torch.equal(r.q[z], masks[3])


def test_single_annotated_slice_runs_to_both_ends():
    D = 10
    masks, ann, fwd, bwd = _case(D, 12, 12, [4], amp=0.7)
    r = propagate_chain(masks, ann, fwd, bwd, min_mass=0.0)
    assert r.dist_below.tolist() == [-1] * 4 + list(range(6))
    assert r.dist_above.tolist() == list(range(4, -1, -1)) + [-1] * 5
    for z in range(D):
        assert (r.from_below[z].sum() > 0) == (z >= 4)
        assert (r.from_above[z].sum() > 0) == (z <= 4)
    assert r.confidence.tolist() == pytest.approx([1 / (1 + abs(z - 4)) for z in range(D)])


def test_chains_never_cross_an_annotated_slice():
    D = 12
    masks, ann, fwd, bwd = _case(D, 10, 11, [2, 6, 9], amp=0.5)
    masks[6] = 0  # an empty annotated slice in the middle
    r = propagate_chain(masks, ann, fwd, bwd, min_mass=0.0)
    assert (r.from_below[3:6].flatten(1).sum(1) > 0).all()  # from 2
    assert (r.from_below[6:9] == 0).all()  # from the empty slice 6, never from 2
    assert (r.from_above[3:6] == 0).all()  # from 6 (empty), never from 9
    assert (r.from_above[7:9].flatten(1).sum(1) > 0).all()  # from 9
    assert r.dist_below.tolist() == [-1, -1, 0, 1, 2, 3, 0, 1, 2, 0, 1, 2]
    assert r.dist_above.tolist() == [2, 1, 0, 3, 2, 1, 0, 2, 1, 0, -1, -1]
    # the annotated slices hold their own masks
    for a in (2, 6, 9):
        assert torch.equal(r.from_below[a], masks[a]) and torch.equal(r.from_above[a], masks[a])


def test_independent_of_annotation_order_and_unannotated_content():
    masks, ann, fwd, bwd = _case(11, 9, 10, [1, 5, 8])
    base = propagate_chain(masks, [5, 1, 8], fwd, bwd, fuse="linear")
    other = masks.clone()
    other[[0, 2, 3, 4, 6, 7, 9, 10]] = torch.rand(8, 9, 10)
    for annotated in ([8, 5, 1], [1, 8, 5], ann, [bool(v) for v in ann]):
        for m in (masks, other):
            r = propagate_chain(m, annotated, fwd, bwd, fuse="linear")
            for a, b in zip(r, base):
                assert torch.equal(a, b)


def test_mass_threshold_stops_the_chain():
    D, H, W = 8, 12, 9
    masks = torch.zeros(D, H, W)
    masks[1, 0:4, 2:7] = 1.0  # 4 rows at the top
    ann = torch.zeros(D, dtype=torch.bool)
    ann[1] = True
    fwd = torch.zeros(D - 1, 2, H, W)
    fwd[:, 0] = 2.0  # m_{z+1}(y) = m_z(y + 2): the square slides out through row 0
    bwd = torch.zeros(D - 1, 2, H, W)
    # step 1 keeps 2 of 4 rows (mass 50%), step 2 keeps none
    r = propagate_chain(masks, ann, fwd, bwd, min_mass=0.6)
    assert (r.from_below[2:] == 0).all()  # 0.5 < 0.6: ended at slice 2
    assert r.dist_below.tolist() == [-1, 0, 1, 2, 3, 4, 5, 6]  # still contributors (empty)
    r = propagate_chain(masks, ann, fwd, bwd, min_mass=0.4)
    assert float(r.from_below[2].sum()) == pytest.approx(10.0)
    assert (r.from_below[3:] == 0).all()
    # a vanished chain never comes back even if the field would bring mass back
    fwd[3:, 0] = -6.0
    r = propagate_chain(masks, ann, fwd, bwd, min_mass=0.4)
    assert (r.from_below[3:] == 0).all()
    assert (r.from_above[0] == 1.0).sum() == 20  # down: zero field, a plain copy


def test_fused_q_by_hand():
    D, H, W = 7, 4, 5
    masks = torch.zeros(D, H, W)
    masks[1] = 1.0
    masks[5, :2] = 1.0
    fwd = torch.zeros(D - 1, 2, H, W)
    bwd = torch.zeros(D - 1, 2, H, W)
    lin = propagate_chain(masks, [1, 5], fwd, bwd, fuse="linear")
    near = propagate_chain(masks, [1, 5], fwd, bwd, fuse="nearest")
    for z, wa in ((2, 0.25), (3, 0.5), (4, 0.75)):
        expect = (1 - wa) * masks[1] + wa * masks[5]
        assert torch.allclose(lin.q[z], expect, atol=1e-7)
    assert torch.equal(near.q[2], masks[1]) and torch.equal(near.q[4], masks[5])
    assert torch.equal(near.q[3], 0.5 * (masks[1] + masks[5]))
    for q in (lin.q, near.q):
        assert torch.equal(q[0], masks[1]) and torch.equal(q[6], masks[5])  # one contributor
        assert torch.equal(q[1], masks[1]) and torch.equal(q[5], masks[5])  # annotated
    assert lin.confidence.tolist() == pytest.approx([0.5, 1, 0.5, 1 / 3, 0.5, 1, 0.5])


def test_no_annotation_gives_zeros():
    masks, _, fwd, bwd = _case(5, 6, 7, [])
    r = propagate_chain(masks, [], fwd, bwd, fuse="nearest")
    assert (r.from_below == 0).all() and (r.from_above == 0).all() and (r.q == 0).all()
    assert (r.dist_below == -1).all() and (r.dist_above == -1).all() and (r.confidence == 0).all()


# --- backends pinned to the reference ----------------------------------------------

CASES = [  # (D, H, W, annotated, min_mass, drift)
    (9, 13, 11, [2, 5, 6], 0.02, 0.0),
    (10, 17, 9, [4], 0.4, 1.3),  # the drift pushes the mask out: chains end
    (7, 8, 15, [0, 6], 0.0, 0.5),
    (6, 5, 7, [], 0.02, 0.0),
    (1, 6, 5, [0], 0.02, 0.0),
]


@requires_cpu_ext
@pytest.mark.parametrize("fuse", FUSES)
@pytest.mark.parametrize("dtype", MASK_DTYPES)
def test_cpu_matches_reference(dtype, fuse):
    for k, (D, H, W, idx, mm, drift) in enumerate(CASES):
        masks, ann, fwd, bwd = _case(D, H, W, idx, drift=drift, dtype=dtype, noncontig=k % 2 == 1, seed=k)
        exp = propagate_chain_reference(masks, ann, fwd, bwd, mm, fuse)
        assert _margin_ok(masks, ann, exp, mm)
        _check_same(PC.IMPLS["cpu"](masks, ann, fwd, bwd, mm, fuse), exp, f"case {k}")


@requires_cpu_ext
def test_cpu_chain_and_row_parallel_paths_agree():
    # 4 chains: with 2 threads whole chains run in parallel; with 8 the rows of each step
    masks, ann, fwd, bwd = _case(12, 21, 19, [3, 8], drift=0.4)
    exp = propagate_chain_reference(masks, ann, fwd, bwd, 0.05, "linear")
    for nt in (1, 2, 8):
        _check_same(PC._native(FixedThreads(nt), masks, ann, fwd, bwd, 0.05, "linear"), exp, f"nt={nt}")


@requires_cpu_ext
def test_cpu_kernel_writes_every_output_element():
    masks, ann, fwd, bwd = _case(8, 7, 6, [2, 3])
    mod = load_backend("cpu")
    for idx in ([2, 3], [], [7]):
        ann = torch.zeros(8, dtype=torch.bool)
        ann[idx] = True
        outs = [
            poisoned((8, 7, 6), torch.float32),
            poisoned((8, 7, 6), torch.float32),
            poisoned((8,), torch.int32),
            poisoned((8,), torch.int32),
            poisoned((8, 7, 6), torch.float32),
            poisoned((8,), torch.float32),
        ]
        mod.propagate_chain(
            masks.data_ptr(),
            list(masks.stride()),
            mod.DType.Float32,
            ann.data_ptr(),
            1,
            fwd.data_ptr(),
            list(fwd.stride()),
            bwd.data_ptr(),
            list(bwd.stride()),
            *[o.data_ptr() for o in outs],
            [8, 7, 6],
            0.02,
            mod.Fuse.Nearest,
            2,
        )
        _check_same(outs, propagate_chain_reference(masks, ann, fwd, bwd, 0.02, "nearest"), str(idx))


def test_triton_interpreter_matches_reference():
    with triton_interpret():
        for k, (D, H, W, idx, mm, drift) in enumerate(CASES):
            fuse = FUSES[k % 3]
            dtype = MASK_DTYPES[k % len(MASK_DTYPES)]
            masks, ann, fwd, bwd = _case(D, H, W, idx, drift=drift, dtype=dtype, noncontig=k == 1, seed=k)
            exp = propagate_chain_reference(masks, ann, fwd, bwd, mm, fuse)
            outs = PC._outputs(masks, fuse)
            for o in outs:
                o.copy_(poisoned(o.shape, o.dtype))
            C = load_backend("triton")
            C.propagate_chain(masks, ann, fwd, bwd, *outs, min_mass=mm, fuse=fuse)
            _check_same(outs, exp, f"case {k}")


def test_nonfinite_fields_stay_memory_safe():
    masks, ann, fwd, bwd = _case(5, 6, 6, [2])
    fwd[2, 0, 3, 3] = float("nan")
    bwd[0, 1, 1, 1] = float("inf")
    for backend in ["reference"] + (["cpu"] if cpu_ext_loaded("propagate_chain") else []):
        out = PC.IMPLS[backend](masks, ann, fwd, bwd, 0.0, "linear")
        assert all(torch.isfinite(o.float()).all() for o in out)


# --- custom op, validation ------------------------------------------------------------


def test_opcheck_and_compile():
    masks, ann, fwd, bwd = _case(6, 5, 7, [1, 4])
    for fuse in ("none", "linear"):
        torch.library.opcheck(
            torch.ops.dilseg.propagate_chain.default,
            (masks, ann, fwd, bwd, 0.02, fuse),
            test_utils=("test_schema", "test_faketensor"),
        )
    fn = torch.compile(
        lambda m, a, f, b: propagate_chain(m, a, f, b, fuse="linear", check_inputs=False).q * 2,
        backend="eager",
        fullgraph=True,
    )
    assert_close(fn(masks, ann, fwd, bwd), propagate_chain_reference(masks, ann, fwd, bwd, 0.02, "linear")[4] * 2)


@pytest.mark.parametrize(
    "make,err",
    [
        (lambda m, a, f, b: (m[0], a, f, b, {}), ShapeError),
        (lambda m, a, f, b: (m, a, f[1:], b, {}), ShapeError),
        (lambda m, a, f, b: (m, a, f, b[:, :1], {}), ShapeError),
        (lambda m, a, f, b: (m, a[1:], f, b, {}), ShapeError),
        (lambda m, a, f, b: (m.int(), a, f, b, {}), DTypeError),
        (lambda m, a, f, b: (m, a, f.double(), b, {}), DTypeError),
        (
            lambda m, a, f, b: (m, a, f.index_fill(0, torch.tensor([1]), float("nan")), b, {"check_inputs": True}),
            NonFiniteError,
        ),
        (lambda m, a, f, b: (m * 3, a, f, b, {"check_inputs": True}), MaskError),
        (lambda m, a, f, b: (m, [0, 9], f, b, {}), SliceIndexError),
        (lambda m, a, f, b: (m, [1.5], f, b, {}), InputError),
        (lambda m, a, f, b: (m, a, f, b, {"fuse": "mean"}), InputError),
        (lambda m, a, f, b: (m, a, f, b, {"min_mass": -0.1}), InputError),
        (lambda m, a, f, b: (m.tolist(), a, f, b, {}), InputError),
    ],
)
def test_bad_input_raises_typed_error(make, err):
    masks, ann, fwd, bwd = _case(5, 6, 7, [1, 3])
    m, a, f, b, kw = make(masks, ann, fwd, bwd)
    with pytest.raises(err):
        propagate_chain(m, a, f, b, **kw)


# --- GPU -------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_matches_reference(backend):
    mod = load_backend(backend)
    if mod is None or not has_kernel("propagate_chain", backend):
        pytest.skip(f"{backend} backend not available")
    cases = CASES + [(12, 200, 190, [3, 9], 0.02, 0.3)]  # 200x190: the CUDA global-memory path
    for k, (D, H, W, idx, mm, drift) in enumerate(cases):
        for fuse in FUSES:
            dtype = MASK_DTYPES[k % len(MASK_DTYPES)]
            masks, ann, fwd, bwd = _case(D, H, W, idx, drift=drift, dtype=dtype, noncontig=k == 1, seed=k)
            exp = propagate_chain_reference(masks, ann, fwd, bwd, mm, fuse)
            dev = [t.cuda() for t in (masks, ann, fwd, bwd)]
            torch.cuda.synchronize()
            got = PC.IMPLS[backend](*dev, mm, fuse)
            _check_same([g.cpu() for g in got], exp, f"{backend} case {k} {fuse}")


@pytest.mark.gpu
def test_cuda_is_one_launch():
    mod = load_backend("cuda")
    if mod is None or not has_kernel("propagate_chain", "cuda"):
        pytest.skip("cuda backend not available")
    from torch.profiler import ProfilerActivity, profile

    masks, ann, fwd, bwd = [t.cuda() for t in _case(16, 64, 64, [3, 9, 12])]
    for fuse in FUSES:
        fn = lambda: propagate_chain(masks, ann, fwd, bwd, fuse=fuse, check_inputs=False)  # noqa: E731
        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        n = sum(1 for ev in prof.events() if ev.device_type == torch.autograd.DeviceType.CUDA)
        assert n == 1, f"fuse={fuse}: {n} device activities"
