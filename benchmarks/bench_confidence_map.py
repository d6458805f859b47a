"""confidence_map throughput: pure-torch reference vs C++ on CPU, CUDA and Triton on
GPU, and the public entry ``engine.ops.confidence_map`` (annotations as bool vectors
on the device), at L = 128x256x256 and the left-atrium size LA = 44x95x71, annotated
slices on two axes.

    .venv/bin/python -m pytest benchmarks/bench_confidence_map.py --benchmark-only

prints each backend's median and its ratio to the reference, and the public entry
against the raw C++ backend, from the same run. Both the kernel and the reference are
bound by the first-touch page faults of their fresh output volume on the CPU.
``gpu_rows()`` (benchmarks/gpu_table.py): effective GB/s (the volume written),
fraction of the device-to-device copy bandwidth, launches and, for the public entry,
host syncs per call.
"""

import sys

import pytest
import torch
from _entry import record_entry

import engine.ops  # noqa: F401
from engine.ops import confidence_map

CM = sys.modules["engine.ops.confidence_map"]
SIZES = {"LA": (44, 95, 71), "L": (128, 256, 256)}


def make_axes(size: str, device: str = "cpu"):
    D, H, W = SIZES[size]
    g = torch.Generator().manual_seed(1)
    axes = (torch.rand(D, generator=g) > 0.9, torch.rand(H, generator=g) > 0.95, None)
    return [a.to(device) if a is not None else None for a in axes]


CASES = [(s, b) for s in SIZES for b in ("reference", "cpu", "public")]


@pytest.mark.parametrize("size,backend", CASES, ids=[f"{s}-{b}" for s, b in CASES])
def test_confidence_map_cpu(benchmark, ratios, size, backend):
    if backend == "cpu" and not CM.confidence_map_op.serves("cpu", "cpu"):
        pytest.skip("cpu backend not loaded")
    D, H, W = SIZES[size]
    axes = make_axes(size)
    if backend == "public":
        fn = lambda: confidence_map((D, H, W), axes)  # noqa: E731
    else:
        impl = CM.IMPLS[backend]
        fn = lambda: impl(*axes, [D, H, W])  # noqa: E731
    benchmark.pedantic(fn, rounds=10 if size == "L" else 50, warmup_rounds=1)
    ratios.record(f"confidence_map cpu {size} {D}x{H}x{W} (2 axes)", backend, benchmark, baseline="reference")


@pytest.mark.parametrize("size", list(SIZES))
def test_confidence_map_entry_vs_raw(benchmark, ratios, size):
    """The public entry against the raw C++ backend, interleaved (benchmarks/_entry.py)."""
    if not CM.confidence_map_op.serves("cpu", "cpu"):
        pytest.skip("cpu backend not loaded")
    D, H, W = SIZES[size]
    axes = make_axes(size)
    impl = CM.IMPLS["cpu"]
    public = lambda: confidence_map((D, H, W), axes)  # noqa: E731
    benchmark.pedantic(public, rounds=1, warmup_rounds=0)
    record_entry(
        ratios,
        f"confidence_map cpu {size} {D}x{H}x{W} (2 axes)",
        lambda: impl(*axes, [D, H, W]),
        public,
        repeats=40 if size == "L" else 500,
    )


def gpu_rows() -> list[dict]:
    """CUDA and Triton confidence_map at L; bytes: the float32 volume written."""
    from _gpu import bandwidth_row, count_launches, entry_row, time_cuda

    rows = []
    D, H, W = SIZES["L"]
    axes = make_axes("L", "cuda")
    nbytes = D * H * W * 4 + D + H
    raw_ms = {}
    for backend in ("cuda", "triton"):
        if not CM.confidence_map_op.serves(backend, "cuda"):
            rows.append({"kernel": f"confidence_map {backend} L", "note": "backend not loaded"})
            continue
        fn = lambda: CM.IMPLS[backend](*axes, [D, H, W])  # noqa: E731
        raw_ms[backend] = time_cuda(fn)
        rows.append(
            bandwidth_row(f"confidence_map {backend} L {D}x{H}x{W}", nbytes, raw_ms[backend], count_launches(fn))
        )
    raw = next((b for b in ("cuda", "triton") if b in raw_ms), None)
    if raw is not None:
        rows.append(
            entry_row(
                f"confidence_map L {D}x{H}x{W} ({raw})", nbytes, lambda: confidence_map((D, H, W), axes), raw_ms[raw]
            )
        )
    return rows
