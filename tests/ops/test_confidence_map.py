"""confidence_map / confidence_vector: the reference against brute force, every
backend pinned to the reference (Triton through the interpreter on CPU tensors;
CUDA and compiled Triton in the gpu-marked tests)."""

import sys

import pytest
import torch

import engine.ops  # noqa: F401  (registers dilseg::confidence_map)
from engine.errors import InputError, ShapeError, SliceIndexError
from engine.ops import confidence_map, confidence_map_reference, confidence_vector

from ._oracle import has_kernel, load_backend, poisoned, requires_cpu_ext, triton_interpret

CM = sys.modules["engine.ops.confidence_map"]


def _brute(ann, n):
    idx = [i for i in range(n) if ann is not None and bool(ann[i])]
    if not idx:
        return torch.zeros(n)
    return torch.tensor([1.0 / (1.0 + min(abs(i - j) for j in idx)) for i in range(n)], dtype=torch.float32)


def _axes(D, H, W, seed):
    g = torch.Generator().manual_seed(seed)
    big = torch.rand(2 * D, generator=g) > 0.7
    return [
        (big[::2], None, None),  # strided bool view
        (None, torch.rand(H, generator=g) > 0.6, torch.rand(W, generator=g) > 0.85),
        (torch.rand(D, generator=g) > 0.8, torch.rand(H, generator=g) > 0.8, torch.zeros(W, dtype=torch.bool)),
        (torch.zeros(D, dtype=torch.bool), None, None),
    ]


SHAPES = [(7, 9, 11), (1, 5, 3), (13, 1, 17)]


def test_reference_matches_brute_force():
    for D, H, W in SHAPES:
        for axes in _axes(D, H, W, D):
            got = confidence_map_reference(*axes, [D, H, W])
            exp = torch.maximum(
                torch.maximum(_brute(axes[0], D).view(D, 1, 1), _brute(axes[1], H).view(1, H, 1)),
                _brute(axes[2], W).view(1, 1, W),
            )
            assert torch.equal(got, exp.expand(D, H, W))


def test_public_entry_hand_values():
    c = confidence_map((5, 2, 3), [[0, 4], None, [2]])
    assert c.shape == (5, 2, 3) and c.dtype == torch.float32
    assert c[:, 0, 0].tolist() == pytest.approx([1, 0.5, 1 / 3, 0.5, 1])
    assert (c[:, :, 2] == 1).all()
    assert confidence_vector([3], length=6).tolist() == pytest.approx([0.25, 1 / 3, 0.5, 1, 0.5, 1 / 3])
    v = confidence_vector(torch.tensor([False, True, False]))
    assert v.shape == (3,) and v.tolist() == pytest.approx([0.5, 1, 0.5])
    assert (confidence_vector(None, length=4) == 0).all()
    assert (confidence_map((3, 4, 5), [None, None, None]) == 0).all()
    assert (confidence_map((3, 4, 5), [[]]) == 0).all()


def test_vector_broadcasts_like_the_map_and_matches_propagate_chain():
    ann = torch.tensor([False, False, True, False, False, False, True, False])
    v = confidence_vector(ann)
    m = confidence_map((8, 3, 4), [ann])
    assert torch.equal(v.view(8, 1, 1).expand(8, 3, 4), m)
    masks = torch.rand(8, 3, 4)
    r = engine.ops.propagate_chain(masks, ann, torch.zeros(7, 2, 3, 4), torch.zeros(7, 2, 3, 4))
    assert torch.equal(r.confidence, v)


@requires_cpu_ext
def test_cpu_matches_reference():
    for D, H, W in SHAPES:
        for axes in _axes(D, H, W, D + 1):
            assert torch.equal(CM.IMPLS["cpu"](*axes, [D, H, W]), confidence_map_reference(*axes, [D, H, W]))


@requires_cpu_ext
def test_cpu_kernel_writes_every_output_element():
    mod = load_backend("cpu")
    a = torch.tensor([False, True, False, False])
    out = poisoned((4, 3, 5), torch.float32)
    mod.confidence_map(a.data_ptr(), 1, 0, 0, 0, 0, out.data_ptr(), [4, 3, 5], 2)
    assert torch.equal(out, confidence_map_reference(a, None, None, [4, 3, 5]))


def test_triton_interpreter_matches_reference():
    with triton_interpret():
        tk = load_backend("triton")
        for D, H, W in SHAPES[:2]:
            for axes in _axes(D, H, W, D + 2):
                out = poisoned((D, H, W), torch.float32)
                tk.confidence_map(*axes, out)
                assert torch.equal(out, confidence_map_reference(*axes, [D, H, W]))


def test_opcheck():
    a = torch.tensor([True, False, False, True, False])
    torch.library.opcheck(
        torch.ops.dilseg.confidence_map.default,
        (a, None, torch.tensor([False, True]), [5, 3, 2]),
        test_utils=("test_schema", "test_faketensor"),
    )


@pytest.mark.parametrize(
    "args,err",
    [
        (((3, 4), [[0]]), ShapeError),
        (((3, 4, -1), [[0]]), ShapeError),
        (((3, 4, 5), [[0], None, None, None]), ShapeError),
        (((3, 4, 5), [[3]]), SliceIndexError),
        (((3, 4, 5), [None, torch.ones(5, dtype=torch.bool)]), ShapeError),
        (((3, 4, 5), [[0.5]]), InputError),
        (((3, 4, 5), torch.ones(3, dtype=torch.bool)), InputError),
        (("abc", [[0]]), InputError),
    ],
)
def test_bad_input_raises_typed_error(args, err):
    with pytest.raises(err):
        confidence_map(*args)


def test_confidence_vector_needs_a_length_for_indices():
    with pytest.raises(InputError):
        confidence_vector([1, 2])
    with pytest.raises(ShapeError):
        confidence_vector(torch.ones(3, dtype=torch.bool), length=4)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_matches_reference(backend):
    mod = load_backend(backend)
    if mod is None or not has_kernel("confidence_map", backend):
        pytest.skip(f"{backend} backend not available")
    for D, H, W in SHAPES + [(64, 128, 128), (44, 95, 71)]:
        for axes in _axes(D, H, W, D + 3):
            exp = confidence_map_reference(*axes, [D, H, W])
            got = CM.IMPLS[backend](*[a.cuda() if a is not None else None for a in axes], [D, H, W])
            assert torch.equal(got.cpu(), exp)


@pytest.mark.gpu
def test_cuda_is_one_launch():
    mod = load_backend("cuda")
    if mod is None or not has_kernel("confidence_map", "cuda"):
        pytest.skip("cuda backend not available")
    from torch.profiler import ProfilerActivity, profile

    axes = [a.cuda() for a in _axes(16, 32, 32, 0)[2]]
    fn = lambda: confidence_map((16, 32, 32), axes)  # noqa: E731
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    assert sum(1 for ev in prof.events() if ev.device_type == torch.autograd.DeviceType.CUDA) == 1
