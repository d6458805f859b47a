"""select_slices: every backend (reference, C++, Triton under TRITON_INTERPRET=1
and, gpu-marked, CUDA / compiled Triton) against an independent plain-Python
greedy oracle on random cases with ties, NaN / ±inf scores, annotated and invalid
slices, gaps from 0 to beyond D and k beyond the candidates; properties of the
result; no host synchronisation (by construction on CPU: the tensor-to-Python
conversions raise during the call; on GPU: ``torch.cuda.set_sync_debug_mode``);
typed errors; the custom op.
"""

import math
import random
import sys

import pytest
import torch

import engine.ops  # noqa: F401  (registers dilseg::select_slices)
from engine import _backends
from engine.errors import DTypeError, InputError, ShapeError
from engine.ops import select_slices, select_slices_reference

from ._oracle import has_kernel, poisoned, requires_cpu_ext

SS = sys.modules["engine.ops.select_slices"]


def _oracle(scores, annotated, k, gap, valid):
    """Greedy top-k written out in plain Python (the contract, word for word)."""
    D = len(scores)
    annotated = annotated or [False] * D
    valid = valid or [True] * D
    blockers = [i for i in range(D) if annotated[i]]
    out = []
    for _ in range(k):
        best = -1
        for z in range(D):
            s = scores[z]
            if math.isnan(s) or not valid[z] or any(abs(z - b) <= gap for b in blockers):
                continue
            if best < 0 or s > scores[best]:
                best = z
        out.append(best)
        if best >= 0:
            blockers.append(best)
    return out


def _case(seed):
    rng = random.Random(seed)
    D = rng.choice([1, 2, 3, 7, 33, 70])
    levels = rng.choice([3, 1000])  # few levels: many ties
    scores = [float(rng.randrange(levels)) for _ in range(D)]
    for _ in range(rng.randrange(3)):
        scores[rng.randrange(D)] = rng.choice([float("nan"), float("inf"), float("-inf")])
    annotated = [rng.random() < 0.15 for _ in range(D)] if rng.random() < 0.8 else None
    valid = [rng.random() < 0.8 for _ in range(D)] if rng.random() < 0.5 else None
    gap = rng.choice([0, 1, 2, 5, D + 3])
    k = rng.choice([1, 3, D, D + 2])
    return scores, annotated, k, gap, valid


def _tensors(scores, annotated, valid, noncontig=False, device="cpu"):
    def vec(x, dtype):
        if x is None:
            return None
        t = torch.tensor(x, dtype=dtype)
        if noncontig:  # gaps hold values that would change the answer if read
            big = torch.zeros(2 * len(x) + 1, dtype=dtype)
            big[1::2] = t
            big[0::2] = float("inf") if dtype == torch.float32 else True
            t = big[1::2]
        return t.to(device) if not noncontig else _to_keep_strides(t, device)

    return vec(scores, torch.float32), vec(annotated, torch.bool), vec(valid, torch.bool)


def _to_keep_strides(t, device):
    if device == "cpu":
        return t
    big = t._base.to(device) if t._base is not None else t.to(device)
    return big[1::2]


CASES = list(range(40))


def _run(backend, seed, device="cpu"):
    scores, annotated, k, gap, valid = _case(seed)
    s, a, v = _tensors(scores, annotated, valid, noncontig=seed % 2 == 1, device=device)
    out = poisoned((k,), torch.int64, device=device)
    got = SS.IMPLS[backend](s, a, k, min(gap, len(scores)), v, out)
    assert got.dtype == torch.int64 and got.shape == (k,)
    assert got.tolist() == _oracle(scores, annotated, k, gap, valid), (seed, scores, annotated, k, gap, valid)


@pytest.mark.parametrize("seed", CASES)
def test_reference_matches_python_oracle(seed):
    _run("reference", seed)


@requires_cpu_ext
def test_cpu_matches_python_oracle():
    for seed in CASES:
        _run("cpu", seed)


def test_triton_interpreter_matches_python_oracle(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    _backends.reset()
    mod = _backends.load("triton")
    assert mod is not None and has_kernel("select_slices", "triton"), _backends.status("triton").detail
    for seed in CASES[:16]:
        _run("triton", seed)


def test_properties():
    g = torch.Generator().manual_seed(3)
    D, k, gap = 60, 8, 2
    scores = torch.rand(D, generator=g)
    annotated = torch.zeros(D, dtype=torch.bool)
    annotated[[5, 30, 31]] = True
    got = select_slices(scores, annotated, k, gap).tolist()
    picks = [z for z in got if z >= 0]
    # the best eligible slice comes first
    elig = [z for z in range(D) if all(abs(z - a) > gap for a in (5, 30, 31))]
    assert picks[0] == max(elig, key=lambda z: (scores[z].item(), -z))
    assert not any(annotated[z] for z in picks)
    for i, a in enumerate(picks):
        assert all(abs(a - b) > gap for b in picks[i + 1 :]) and all(abs(a - b) > gap for b in (5, 30, 31))
    # padding only at the end, never a repeat
    assert got[: len(picks)] == picks and len(set(picks)) == len(picks)


def test_k_beyond_candidates_pads_with_minus_one():
    scores = torch.tensor([0.3, 0.9, 0.1, 0.5, 0.2])
    valid = torch.tensor([True, True, False, True, True])
    assert select_slices(scores, None, 7, 0, valid).tolist() == [1, 3, 0, 4, -1, -1, -1]
    assert select_slices(scores, None, 4, 1).tolist() == [1, 3, -1, -1]
    assert select_slices(scores, torch.ones(5, dtype=torch.bool), 2, 0).tolist() == [-1, -1]
    assert select_slices(scores, None, 0).shape == (0,)


def test_ties_go_to_the_lower_index_and_are_deterministic():
    scores = torch.tensor([1.0, 2.0, 2.0, 0.5, 2.0, 2.0])
    for _ in range(3):
        assert select_slices(scores, None, 4, 0).tolist() == [1, 2, 4, 5]
        assert select_slices(scores, None, 3, 1).tolist() == [1, 4, -1]


def test_min_gap_zero_excludes_only_annotated_and_repeats():
    scores = torch.arange(6, dtype=torch.float32)
    annotated = torch.tensor([False, False, False, False, True, False])
    assert select_slices(scores, annotated, 6, 0).tolist() == [5, 3, 2, 1, 0, -1]


def test_reference_makes_no_host_sync_by_construction(monkeypatch):
    """Every tensor → Python conversion raises during the call: the reference can
    only branch on Python ints (k, D, min_gap), never on tensor values."""
    scores, annotated, k, gap, valid = _case(7)
    s, a, v = _tensors(scores, annotated, valid)

    def boom(*args, **kwargs):
        raise AssertionError("host sync: a tensor value was read on the host")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, boom)
    got = select_slices_reference(s, a, k, gap, v)
    monkeypatch.undo()
    assert got.tolist() == _oracle(scores, annotated, k, gap, valid)


@pytest.mark.parametrize(
    "call,err",
    [
        (lambda: select_slices(torch.rand(4, 2), None, 1), ShapeError),
        (lambda: select_slices(torch.rand(4).double(), None, 1), DTypeError),
        (lambda: select_slices(torch.rand(4), torch.zeros(5, dtype=torch.bool), 1), ShapeError),
        (lambda: select_slices(torch.rand(4), torch.zeros(4), 1), DTypeError),
        (lambda: select_slices(torch.rand(4), None, 1, 0, torch.ones(3, dtype=torch.bool)), ShapeError),
        (lambda: select_slices(torch.rand(4), None, -1), InputError),
        (lambda: select_slices(torch.rand(4), None, 2.0), InputError),
        (lambda: select_slices(torch.rand(4), None, 1, -2), InputError),
        (lambda: select_slices(torch.rand(4), None, True), InputError),
        (lambda: select_slices([1.0, 2.0], None, 1), InputError),
    ],
)
def test_bad_input_raises_typed_error(call, err):
    with pytest.raises(err):
        call()


def test_empty_scores_give_padding():
    assert select_slices(torch.zeros(0), None, 3).tolist() == [-1, -1, -1]


def test_opcheck():
    s = torch.rand(17)
    a = torch.zeros(17, dtype=torch.bool)
    a[4] = True
    torch.library.opcheck(torch.ops.dilseg.select_slices.default, (s, a, 5, 1, None))
    torch.library.opcheck(torch.ops.dilseg.select_slices.default, (s, None, 3, 0, a))


def test_compile_traces_through_fake():
    s = torch.rand(11)
    fn = torch.compile(lambda x: select_slices(x, None, 4, 1) + 0, backend="eager", fullgraph=True)
    assert fn(s).tolist() == select_slices_reference(s, None, 4, 1).tolist()


# --- GPU (skipped centrally without a CUDA device) -----------------------------------


def _gpu_backend(backend):
    if backend == "reference":
        return
    mod = _backends.load(backend)
    if mod is None or not has_kernel("select_slices", backend):
        pytest.skip(_backends.status(backend).detail)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["reference", "cuda", "triton"])
def test_gpu_matches_python_oracle(backend):
    _gpu_backend(backend)
    for seed in CASES:
        _run(backend, seed, device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_large_d(backend):
    _gpu_backend(backend)
    g = torch.Generator().manual_seed(1)
    D = 3000
    s = (torch.rand(D, generator=g) * 50).floor()  # many ties
    a = torch.rand(D, generator=g) < 0.05
    v = torch.rand(D, generator=g) < 0.9
    for k, gap in ((20, 3), (2 * D, 0), (40, 200)):
        got = SS.IMPLS[backend](s.cuda(), a.cuda(), k, gap, v.cuda())
        assert got.tolist() == _oracle(s.tolist(), a.tolist(), k, gap, v.tolist())


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["reference", "cuda", "triton"])
def test_gpu_makes_no_host_sync(backend, monkeypatch):
    _gpu_backend(backend)
    monkeypatch.setenv("ENGINE_GPU_BACKEND", backend)
    _backends.reset()
    scores, annotated, k, gap, valid = _case(11)
    s, a, v = _tensors(scores, annotated, valid, device="cuda")
    select_slices(s, a, k, gap, v)  # warm-up (jit, module load)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = select_slices(s, a, k, gap, v)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert got.is_cuda and got.tolist() == _oracle(scores, annotated, k, gap, valid)


@pytest.mark.gpu
def test_gpu_opcheck():
    s = torch.rand(17, device="cuda")
    a = torch.zeros(17, dtype=torch.bool, device="cuda")
    a[4] = True
    torch.library.opcheck(torch.ops.dilseg.select_slices.default, (s, a, 5, 1, None))
