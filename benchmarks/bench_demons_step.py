"""demons_step throughput: the C++ kernel against the pure-torch reference in the same
run (CPU), effective bandwidth of the Triton kernel (GPU), and what the fused step
buys the whole native registration of a left-atrium case.

Workload: all adjacent slice pairs of a D×H×W volume registered in both directions at
once, N = 2(D-1) pairs of H×W, float32, smooth fields of ~3 px:
S = 64×128×128, L = 128×256×256 and the real left-atrium size LA = 44×95×71.

    .venv/bin/python -m pytest benchmarks/bench_demons_step.py --benchmark-only

prints each backend's median and its ratio to the reference, measured in the same
run (benchmarks/conftest.py), and the public entry ``engine.ops.demons_step`` (default
flags) against the raw C++ backend. ``gpu_rows()`` (collected by benchmarks/gpu_table.py)
reports the Triton kernel at L: effective GB/s, fraction of the copy bandwidth
measured in the same run, launches per call.
"""

import sys

import pytest
import torch
import torch.nn.functional as F
from _entry import record_entry

import engine.ops  # noqa: F401
from engine.ops import demons_step

DS = sys.modules["engine.ops.demons_step"]

SIZES = {"S": (64, 128, 128), "L": (128, 256, 256), "LA": (44, 95, 71)}
ROUNDS = {"LA": 10, "S": 5, "L": 3}
CASES = [(s, b) for s in ("LA", "S", "L") for b in ("reference", "cpu", "public")]


def make_inputs(size: str, device: str = "cpu"):
    """fixed, moving [N,1,H,W] in [0,1]; u smooth [N,2,H,W]; g_fixed [N,2,H,W]."""
    D, H, W = SIZES[size]
    N = 2 * (D - 1)
    g = torch.Generator().manual_seed(0)
    fixed = torch.rand(N, 1, H, W, generator=g)
    moving = torch.rand(N, 1, H, W, generator=g)
    coarse = torch.randn(N, 2, max(2, H // 8), max(2, W // 8), generator=g) * 3.0
    u = F.interpolate(coarse, size=(H, W), mode="bilinear", align_corners=True).contiguous()
    g_fixed = (torch.rand(N, 2, H, W, generator=g) - 0.5) * 0.2
    return [t.to(device) for t in (fixed, moving, u, g_fixed)]


def _skip_unless_loaded(backend, device="cpu"):
    if backend not in ("reference", "public") and not DS.demons_step_op.serves(backend, device):
        pytest.skip(f"{backend} backend not loaded")


@pytest.mark.parametrize("size,backend", CASES, ids=[f"{s}-{b}" for s, b in CASES])
def test_demons_step_cpu(benchmark, ratios, size, backend):
    _skip_unless_loaded(backend)
    args = make_inputs(size)
    impl = demons_step if backend == "public" else DS.IMPLS[backend]
    warmup = 0 if (size == "L" and backend == "reference") else 1
    benchmark.pedantic(lambda: impl(*args, 1.0), rounds=ROUNDS[size], warmup_rounds=warmup)
    D, H, W = SIZES[size]
    ratios.record(f"demons_step cpu {2 * (D - 1)}x{H}x{W}", backend, benchmark, baseline="reference")


@pytest.mark.parametrize("size", ["LA", "S", "L"])
def test_demons_step_entry_vs_raw(benchmark, ratios, size):
    """The public entry against the raw C++ backend, interleaved (benchmarks/_entry.py)."""
    _skip_unless_loaded("cpu")
    args = make_inputs(size)
    impl = DS.IMPLS["cpu"]
    public = lambda: demons_step(*args, 1.0)  # noqa: E731
    benchmark.pedantic(public, rounds=1, warmup_rounds=0)
    D, H, W = SIZES[size]
    record_entry(
        ratios,
        f"demons_step cpu {2 * (D - 1)}x{H}x{W}",
        lambda: impl(*args, 1.0),
        public,
        repeats={"LA": 100, "S": 30, "L": 8}[size],
    )


# --- GPU -----------------------------------------------------------------------------------


def gpu_rows() -> list[dict]:
    """Triton demons_step at L (254 pairs of 256×256, float32).

    Bytes that must move per call (P = N·H·W pixels): fixed 4P + u 8P + g_fixed 8P
    read, step 8P written, moving read through the stencil's gathers (≥ 4P) = 32P.
    """
    try:
        from _gpu import bandwidth_row, count_launches, entry_row, time_cuda
    except ImportError:
        from benchmarks._gpu import bandwidth_row, count_launches, entry_row, time_cuda
    args = make_inputs("L", "cuda")
    N, _, H, W = args[0].shape
    P = N * H * W
    name = f"demons_step triton {N}x{H}x{W}"
    if not DS.demons_step_op.serves("triton", args[0].device):
        return [{"kernel": name, "note": "backend not loaded"}]
    fn = lambda: DS.IMPLS["triton"](*args, 1.0)  # noqa: E731
    ms = time_cuda(fn)
    return [
        bandwidth_row(name, 32 * P, ms, count_launches(fn)),
        entry_row(f"demons_step {N}x{H}x{W} (triton)", 32 * P, lambda: demons_step(*args, 1.0), ms),
    ]
