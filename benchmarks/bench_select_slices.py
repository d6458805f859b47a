"""select_slices: C++ vs the pure-torch reference on CPU, the public entry
``engine.ops.select_slices`` next to the raw backend (same run), and on GPU latency,
launches and (public entry) host syncs per call. D = 44 (a left-atrium case along its
annotation axis) and 128 (L), k = 4 slices, min_gap 2, every fifth slice annotated.

    .venv/bin/python -m pytest benchmarks/bench_select_slices.py --benchmark-only

The op is microseconds long: its public entry pays Python argument checks and the
backend rule (a few microseconds), which is what the entry-vs-raw table shows.
"""

import sys

import pytest
import torch
from _entry import record_entry

import engine.ops  # noqa: F401
from engine.ops import select_slices

SS = sys.modules["engine.ops.select_slices"]


def make_scores(D: int, device: str = "cpu"):
    g = torch.Generator().manual_seed(1)
    s = torch.rand(D, generator=g)
    a = torch.zeros(D, dtype=torch.bool)
    a[:: max(1, D // 5)] = True
    return s.to(device), a.to(device)


@pytest.mark.parametrize("D", [44, 128])
@pytest.mark.parametrize("backend", ["reference", "cpu", "public"])
def test_select_slices_cpu(benchmark, ratios, D, backend):
    if backend == "cpu" and not SS.select_slices_op.serves("cpu", "cpu"):
        pytest.skip("engine._C not loaded")
    s, a = make_scores(D)
    if backend == "public":
        fn = lambda: select_slices(s, a, 4, 2)  # noqa: E731
    else:
        impl = SS.IMPLS[backend]
        fn = lambda: impl(s, a, 4, 2, None)  # noqa: E731
    benchmark.pedantic(fn, rounds=2000, warmup_rounds=50)
    ratios.record(f"select_slices cpu D={D} k=4 gap=2", backend, benchmark, baseline="reference")


@pytest.mark.parametrize("D", [44, 128])
def test_select_slices_entry_vs_raw(benchmark, ratios, D):
    """The public entry against the raw C++ backend, interleaved (benchmarks/_entry.py)."""
    if not SS.select_slices_op.serves("cpu", "cpu"):
        pytest.skip("engine._C not loaded")
    s, a = make_scores(D)
    impl = SS.IMPLS["cpu"]
    public = lambda: select_slices(s, a, 4, 2)  # noqa: E731
    benchmark.pedantic(public, rounds=1, warmup_rounds=0)
    record_entry(ratios, f"select_slices cpu D={D} k=4 gap=2", lambda: impl(s, a, 4, 2, None), public, repeats=5000)


def gpu_rows() -> list[dict]:
    """Latency, launches and host syncs per call of each backend and the public entry."""
    from _gpu import count_launches, count_syncs, time_cuda

    rows = []
    for D in (44, 128, 2048):
        s, a = make_scores(D, "cuda")
        raw_ms = {}
        for backend in ("cuda", "triton", "reference"):
            if not SS.select_slices_op.serves(backend, s.device):
                rows.append({"kernel": f"select_slices {backend} D={D}", "note": "backend not loaded"})
                continue
            impl = SS.IMPLS[backend]
            fn = lambda: impl(s, a, 4, 2, None)  # noqa: E731
            raw_ms[backend] = time_cuda(fn)
            lc = count_launches(fn)
            rows.append(
                {
                    "kernel": f"select_slices {backend} D={D} k=4",
                    "ms": round(raw_ms[backend], 4),
                    "launches": lc.get("kernels", 0) + lc.get("memsets", 0),
                }
            )
        raw = next((b for b in ("cuda", "triton") if b in raw_ms), None)
        if raw is not None:
            fn = lambda: select_slices(s, a, 4, 2)  # noqa: E731
            ms = time_cuda(fn)
            lc = count_launches(fn)
            rows.append(
                {
                    "kernel": f"select_slices D={D} k=4 ({raw}) public entry",
                    "ms": round(ms, 4),
                    "launches": lc.get("kernels", 0) + lc.get("memsets", 0),
                    "syncs": count_syncs(fn),
                    "public/raw": round(ms / raw_ms[raw], 3),
                }
            )
    return rows
