"""slice_residuals: C++ vs the pure-torch reference on CPU (same run), the public entry
``engine.ops.slice_residuals`` (default flags) next to the raw backend, and on GPU the
effective bandwidth, its fraction of the device-to-device copy bandwidth, launches
and (public entry) host syncs per call. (select_slices: benchmarks/bench_select_slices.py.)

Sizes (D x H x W): S = 64x128x128, L = 128x256x256, LA = 44x95x71 (a real left-atrium
case). The CPU case is the guide's: float32 q and p with a per-slice weight ``[D]``.

    .venv/bin/python -m pytest benchmarks/bench_slice_residuals.py --benchmark-only
    .venv/bin/python benchmarks/bench_slice_residuals.py          # CPU table, < 60 s

GPU: ``gpu_rows()`` (collected by benchmarks/gpu_table.py). Bytes counted are those
that must be read: q, p and w (per-slice: D floats; full: the volume); the D+H+W
float32 outputs are negligible and not counted.
"""

from __future__ import annotations

import statistics
import sys
import time

import pytest
import torch
from _entry import record_entry

import engine.ops  # noqa: F401
from engine.ops import slice_residuals

SR = sys.modules["engine.ops.slice_residuals"]

SIZES = {"S": (64, 128, 128), "L": (128, 256, 256), "LA": (44, 95, 71)}
CUDA = torch.cuda.is_available()


def make_inputs(size: str, dtype=torch.float32, weight: str = "slice", device: str = "cpu"):
    """q: a soft proxy mask, p: probabilities, w: per-slice ``1 - C`` (or full)."""
    D, H, W = SIZES[size]
    g = torch.Generator().manual_seed(0)
    q = torch.rand(D, H, W, generator=g)
    p = torch.rand(D, H, W, generator=g)
    if dtype == torch.uint8:
        q = (q > 0.5).to(torch.uint8)
    else:
        q = q.to(dtype)
    p = p.to(dtype if dtype != torch.uint8 else torch.float32)
    w = {"none": None, "slice": torch.rand(D, generator=g), "full": torch.rand(D, H, W, generator=g)}[weight]
    q, p = q.to(device), p.to(device)
    return q, p, (None if w is None else w.to(device))


# --- CPU (pytest-benchmark) ------------------------------------------------------------


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("backend", ["reference", "cpu", "public"])
def test_slice_residuals_cpu(benchmark, ratios, size, backend):
    if backend == "cpu" and not SR.slice_residuals_op.serves("cpu", "cpu"):
        pytest.skip("engine._C not loaded")
    q, p, w = make_inputs(size)
    if backend == "public":
        fn = lambda: slice_residuals(q, p, w)  # noqa: E731
    else:
        impl = SR.IMPLS[backend]
        fn = lambda: impl(q, p, w)  # noqa: E731
    benchmark.pedantic(fn, rounds=20 if size == "L" else 50, warmup_rounds=2)
    ratios.record(
        f"slice_residuals cpu {size} {'x'.join(map(str, SIZES[size]))} f32 per-slice w",
        backend,
        benchmark,
        baseline="reference",
    )


@pytest.mark.parametrize("size", list(SIZES))
def test_slice_residuals_entry_vs_raw(benchmark, ratios, size):
    """The public entry against the raw C++ backend, interleaved (benchmarks/_entry.py)."""
    if not SR.slice_residuals_op.serves("cpu", "cpu"):
        pytest.skip("engine._C not loaded")
    q, p, w = make_inputs(size)
    impl = SR.IMPLS["cpu"]
    public = lambda: slice_residuals(q, p, w)  # noqa: E731
    benchmark.pedantic(public, rounds=1, warmup_rounds=0)
    record_entry(
        ratios,
        f"slice_residuals cpu {size} {'x'.join(map(str, SIZES[size]))} f32 per-slice w",
        lambda: impl(q, p, w),
        public,
        repeats=60 if size == "L" else 500,
    )


# --- CPU table (script mode) --------------------------------------------------------------


def _interleaved(fns: dict, repeats: int) -> dict:
    """Median seconds of each fn, calls interleaved so machine noise hits all alike."""
    times = {k: [] for k in fns}
    for f in fns.values():
        f()  # warm-up
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def cpu_table() -> list[dict]:
    rows = []
    cases = [(s, torch.float32, "slice") for s in SIZES] + [
        ("L", torch.bfloat16, "slice"),
        ("L", torch.uint8, "none"),
        ("L", torch.float32, "full"),
    ]
    for size, dtype, weight in cases:
        q, p, w = make_inputs(size, dtype, weight)
        med = _interleaved(
            {
                "reference": lambda: SR.IMPLS["reference"](q, p, w),
                "cpu": lambda: SR.IMPLS["cpu"](q, p, w),
                "public": lambda: slice_residuals(q, p, w),
            },
            7 if size == "L" else 41,
        )
        rows.append(
            {
                "op": "slice_residuals",
                "case": f"{size} {'x'.join(map(str, SIZES[size]))} {str(dtype).split('.')[-1]} w={weight}",
                "reference ms": med["reference"] * 1e3,
                "C++ ms": med["cpu"] * 1e3,
                "speed-up": med["reference"] / med["cpu"],
                "public ms": med["public"] * 1e3,
                "public/raw": med["public"] / med["cpu"],
            }
        )
    return rows


# --- GPU ----------------------------------------------------------------------------------


def gpu_rows() -> list[dict]:
    """Effective GB/s (q, p, w read) and launches per call of the CUDA, Triton and
    reference backends at S, L and LA (float32, per-slice w) and at L for bf16 / uint8 /
    full-w; the public entry (default flags) next to the backend that serves it."""
    from _gpu import bandwidth_row, count_launches, entry_row, time_cuda

    rows = []
    cases = [(s, torch.float32, "slice") for s in SIZES] + [
        ("L", torch.bfloat16, "slice"),
        ("L", torch.uint8, "none"),
        ("L", torch.float32, "full"),
    ]
    for size, dtype, weight in cases:
        q, p, w = make_inputs(size, dtype, weight, device="cuda")
        nbytes = q.numel() * q.element_size() + p.numel() * p.element_size()
        nbytes += 0 if w is None else w.numel() * w.element_size()
        tag = f"{size} {str(dtype).split('.')[-1]} w={weight}"
        raw_ms = {}
        for backend in ("cuda", "triton", "reference"):
            if not SR.slice_residuals_op.serves(backend, q.device):
                rows.append({"kernel": f"slice_residuals {backend} {tag}", "note": "backend not loaded"})
                continue
            impl = SR.IMPLS[backend]
            fn = lambda: impl(q, p, w)  # noqa: E731
            raw_ms[backend] = time_cuda(fn)
            rows.append(bandwidth_row(f"slice_residuals {backend} {tag}", nbytes, raw_ms[backend], count_launches(fn)))
        raw = next((b for b in ("cuda", "triton") if b in raw_ms), None)
        if raw is not None:
            rows.append(
                entry_row(f"slice_residuals {tag} ({raw})", nbytes, lambda: slice_residuals(q, p, w), raw_ms[raw])
            )
    return rows


if __name__ == "__main__":
    if "--gpu" in sys.argv:
        sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
        for r in gpu_rows():
            print(r)
        raise SystemExit(0)
    print(
        f"threads: {torch.get_num_threads()}  (C++ vs pure-torch reference, public entry vs C++, interleaved "
        "medians, same run)"
    )
    print(
        f"{'op':16s} {'case':36s} {'reference ms':>13s} {'C++ ms':>9s} {'speed-up':>9s} {'public ms':>10s} "
        f"{'public/raw':>10s}"
    )
    for r in cpu_table():
        print(
            f"{r['op']:16s} {r['case']:36s} {r['reference ms']:13.3f} {r['C++ ms']:9.3f} {r['speed-up']:8.2f}x "
            f"{r['public ms']:10.3f} {r['public/raw']:10.2f}"
        )
