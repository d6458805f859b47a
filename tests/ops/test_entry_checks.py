"""Validation at the boundary: the op entries check metadata only by default and
never read a tensor value on the host (no device sync on CUDA); value scans
(NaN/Inf, mask values) run only when asked (``check_finite=True`` /
``check_inputs=True``), and then raise their typed errors.

CPU: every tensor -> Python conversion raises during the call and ``torch.isfinite``
is counted. GPU (gpu-marked): ``torch.cuda.set_sync_debug_mode("error")`` around every
entry, on the CUDA and the Triton backends."""

import pytest
import torch

import engine.ops as O
from engine import _backends
from engine.errors import MaskError, NonFiniteError

from ._oracle import has_kernel, requires_cpu_ext, smooth_field


def _calls(device="cpu", **flags):
    """One call of every op entry on small valid inputs (annotations as bool vectors
    on the device: the sync-free form)."""
    d = device
    src = torch.rand(2, 1, 9, 8, device=d)
    u = smooth_field(2, 9, 8, amplitude=2.0, device=d)
    g = torch.zeros(2, 2, 9, 8, device=d)
    q, p = torch.rand(6, 9, 8, device=d), torch.rand(6, 9, 8, device=d)
    ann = torch.tensor([False, True, False, False, True, False], device=d)
    f = smooth_field(5, 9, 8, amplitude=1.0, device=d)
    fin = {"check_finite": flags.get("check_finite", False)} if flags else {}
    inp = {"check_inputs": flags.get("check_finite", False)} if flags else {}
    buf = torch.empty(2, 2, 9, 8, device=d)
    return {
        "warp2d": lambda: O.warp2d(src, u, **fin),
        "demons_step": lambda: O.demons_step(src, src.flip(2), u, g, 1.0, **fin),
        "demons_step out=": lambda: O.demons_step(src, src.flip(2), u, g, 1.0, out=buf, **fin),
        "regularize_field": lambda: O.regularize_field(u, g, 1.0, 0.1, 2, **fin),
        "propagate_chain": lambda: O.propagate_chain(q, ann, f, f, fuse="linear", **inp),
        "confidence_map": lambda: O.confidence_map((6, 9, 8), [ann]),
        "confidence_vector": lambda: O.confidence_vector(ann),
        "slice_residuals": lambda: O.slice_residuals(q, p, ann.float(), **fin),
        "select_slices": lambda: O.select_slices(q.sum((1, 2)), ann, 2, 1),
    }


class _Count:
    def __init__(self, fn):
        self.fn, self.n = fn, 0

    def __call__(self, *a, **k):
        self.n += 1
        return self.fn(*a, **k)


def _no_host_reads(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("a tensor value was read on the host")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, boom)


@requires_cpu_ext
@pytest.mark.parametrize("name", list(_calls()))
def test_default_entry_reads_no_value(name, monkeypatch):
    call = _calls()[name]
    call()  # warm-up (module load) outside the trap
    count = _Count(torch.isfinite)
    monkeypatch.setattr(torch, "isfinite", count)
    _no_host_reads(monkeypatch)
    call()
    monkeypatch.undo()
    assert count.n == 0, f"{name}: {count.n} isfinite scans in the default path"


@requires_cpu_ext
@pytest.mark.parametrize(
    "name", [n for n in _calls() if n not in ("confidence_map", "confidence_vector", "select_slices")]
)
def test_value_scans_run_when_asked(name, monkeypatch):
    count = _Count(torch.isfinite)
    monkeypatch.setattr(torch, "isfinite", count)
    _calls(check_finite=True)[name]()
    assert count.n > 0, name


def test_opt_in_scans_raise_their_typed_errors():
    u = torch.zeros(1, 2, 4, 4)
    u[0, 0, 1, 1] = float("nan")
    src = torch.rand(1, 1, 4, 4)
    O.warp2d(src, u)  # default: no scan, memory-safe
    with pytest.raises(NonFiniteError):
        O.warp2d(src, u, check_finite=True)
    with pytest.raises(MaskError):
        O.slice_residuals(torch.full((2, 3, 4), 2, dtype=torch.uint8), torch.rand(2, 3, 4), check_finite=True)
    masks = torch.rand(3, 4, 5) * 3
    with pytest.raises(MaskError):
        O.propagate_chain(masks, [0], torch.zeros(2, 2, 4, 5), torch.zeros(2, 2, 4, 5), check_inputs=True)


# --- GPU (skipped centrally without a CUDA device) -----------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_entries_make_no_host_sync(backend, monkeypatch):
    monkeypatch.setenv("ENGINE_GPU_BACKEND", backend)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    _backends.reset()
    if _backends.load(backend) is None:
        pytest.skip(_backends.status(backend).detail)
    calls = _calls("cuda")
    served = {
        n: c
        for n, c in calls.items()
        if has_kernel(n.split()[0].replace("confidence_vector", "confidence_map"), backend)
    }
    for c in served.values():
        c()  # warm-up: jit, module load
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for c in served.values():
            c()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
