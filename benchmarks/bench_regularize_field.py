"""regularize_field throughput: the C++ kernel against the pure-torch reference and
against the torch composition it replaced in the native registration (sum, separable
smoothing by shifted in-place adds, pair coupling, through reused buffers), all in
the same run (CPU); effective bandwidth of the Triton kernel (GPU).

The public entry ``engine.ops.regularize_field`` (default flags, same reused ``out``)
gets its own table against the raw C++ backend.

Workload: the displacement fields of all adjacent slice pairs of a D×H×W volume
registered in both directions at once, N = 2(D-1) fields [2, H, W], float32, sigma 1,
coupling 0.1 within the two directions (groups 2): S = 64×128×128, L = 128×256×256 and
the left-atrium size LA = 44×95×71. Every backend writes into a reused output buffer,
as the registration loop does.

    .venv/bin/python -m pytest benchmarks/bench_regularize_field.py --benchmark-only

``gpu_rows()`` (collected by benchmarks/gpu_table.py) reports the Triton kernel at L:
effective GB/s, fraction of the copy bandwidth measured in the same run, launches.
"""

import sys

import pytest
import torch
from _entry import record_entry

import engine.ops  # noqa: F401
from engine.ops import regularize_field

RF = sys.modules["engine.ops.regularize_field"]

SIZES = {"S": (64, 128, 128), "L": (128, 256, 256), "LA": (44, 95, 71)}
ROUNDS = {"LA": 20, "S": 10, "L": 5}
BACKENDS = ("reference", "composition", "cpu", "public")
CASES = [(s, b) for s in ("LA", "S", "L") for b in BACKENDS]
SIGMA, COUPLING, GROUPS = 1.0, 0.1, 2


def make_inputs(size: str, device: str = "cpu"):
    D, H, W = SIZES[size]
    N = 2 * (D - 1)
    g = torch.Generator().manual_seed(0)
    u = torch.randn(N, 2, H, W, generator=g) * 3.0
    step = (torch.rand(N, 2, H, W, generator=g) - 0.5) * 0.5
    return u.to(device), step.to(device)


def _composition(u, step, out, bufs):
    from engine.propagate.native import _couple_pairs, gaussian_smooth

    torch.add(u, step, out=bufs[0])
    s = gaussian_smooth(bufs[0], SIGMA, (bufs[1], out))
    return _couple_pairs(s, COUPLING, GROUPS, out=bufs[0])


@pytest.mark.parametrize("size,backend", CASES, ids=[f"{s}-{b}" for s, b in CASES])
def test_regularize_field_cpu(benchmark, ratios, size, backend):
    if backend == "cpu" and not RF.regularize_field_op.serves("cpu", "cpu"):
        pytest.skip("cpu backend not loaded")
    u, step = make_inputs(size)
    out = torch.empty_like(u)
    if backend == "composition":
        bufs = [torch.empty_like(u) for _ in range(2)]
        fn = lambda: _composition(u, step, out, bufs)  # noqa: E731
    elif backend == "public":
        fn = lambda: regularize_field(u, step, SIGMA, COUPLING, GROUPS, out=out)  # noqa: E731
    else:
        impl = RF.IMPLS[backend]
        fn = lambda: impl(u, step, SIGMA, COUPLING, GROUPS, out)  # noqa: E731
    warmup = 0 if (size == "L" and backend == "reference") else 1
    benchmark.pedantic(fn, rounds=ROUNDS[size], warmup_rounds=warmup)
    D, H, W = SIZES[size]
    ratios.record(f"regularize_field cpu {2 * (D - 1)}x2x{H}x{W}", backend, benchmark, baseline="composition")


@pytest.mark.parametrize("size", ["LA", "S", "L"])
def test_regularize_field_entry_vs_raw(benchmark, ratios, size):
    """The public entry against the raw C++ backend, both into a reused ``out``,
    interleaved (benchmarks/_entry.py)."""
    if not RF.regularize_field_op.serves("cpu", "cpu"):
        pytest.skip("cpu backend not loaded")
    u, step = make_inputs(size)
    out = torch.empty_like(u)
    impl = RF.IMPLS["cpu"]
    public = lambda: regularize_field(u, step, SIGMA, COUPLING, GROUPS, out=out)  # noqa: E731
    benchmark.pedantic(public, rounds=1, warmup_rounds=0)
    D, H, W = SIZES[size]
    record_entry(
        ratios,
        f"regularize_field cpu {2 * (D - 1)}x2x{H}x{W}",
        lambda: impl(u, step, SIGMA, COUPLING, GROUPS, out),
        public,
        repeats={"LA": 100, "S": 40, "L": 10}[size],
    )


# --- GPU -----------------------------------------------------------------------------------


def gpu_rows() -> list[dict]:
    """Triton regularize_field at L (254 fields of 2×256×256, float32).

    Bytes that must move per call (P = N·2·H·W values): u and step read (8P), out
    written (4P) = 12P; the coupling's neighbour planes and the 25-tap stencil are
    re-reads that a cache serves.
    """
    try:
        from _gpu import bandwidth_row, count_launches, entry_row, time_cuda
    except ImportError:
        from benchmarks._gpu import bandwidth_row, count_launches, entry_row, time_cuda
    u, step = make_inputs("L", "cuda")
    out = torch.empty_like(u)
    P = u.numel()
    name = f"regularize_field triton {u.shape[0]}x2x{u.shape[2]}x{u.shape[3]}"
    if not RF.regularize_field_op.serves("triton", u.device):
        return [{"kernel": name, "note": "backend not loaded"}]
    fn = lambda: RF.IMPLS["triton"](u, step, SIGMA, COUPLING, GROUPS, out)  # noqa: E731
    ms = time_cuda(fn)
    public = lambda: regularize_field(u, step, SIGMA, COUPLING, GROUPS, out=out)  # noqa: E731
    return [
        bandwidth_row(name, 12 * P, ms, count_launches(fn)),
        entry_row(f"regularize_field {u.shape[0]}x2x{u.shape[2]}x{u.shape[3]} (triton)", 12 * P, public, ms),
    ]
