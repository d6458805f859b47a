"""warp3d throughput: the C++ kernel against the pure-torch reference in the same run
(CPU), and effective bandwidth of the CUDA / Triton kernels (GPU).

Sizes (D×H×W, N = 1, C = 1, float32, trilinear, zeros padding, a smooth field of
about 2 voxels amplitude): S = 64×128×128, L = 128×256×256 and the real left-atrium
size LA = 44×95×71.

    .venv/bin/python -m pytest benchmarks/bench_warp3d.py --benchmark-only

prints, per case, each backend's median and its ratio to the reference, measured in
the same run (benchmarks/conftest.py), and for the forward the public entry
``engine.ops.warp3d`` (default flags) against the raw C++ backend. The reference is slow (seconds at L), so L runs
few rounds; the whole CPU run stays around a minute on 2 cores. The backward is
measured at S and LA only (the reference backward takes ~15 s at L).

``gpu_rows()`` (collected by benchmarks/gpu_table.py, run by device_check.sh) reports
the CUDA and Triton kernels at L: effective GB/s counting the bytes that must move,
the fraction of the device-to-device copy bandwidth measured in the same run, and
launches per call; at S, launches per call.
"""

import sys

import pytest
import torch
import torch.nn.functional as F

import engine.ops  # noqa: F401
from engine.ops import warp3d

from _entry import record_entry

W3 = sys.modules["engine.ops.warp3d"]

SIZES = {"S": (64, 128, 128), "L": (128, 256, 256), "LA": (44, 95, 71)}
CUDA = torch.cuda.is_available()


def make_inputs(size: str, device: str = "cpu", dtype=torch.float32):
    """src [1, 1, D, H, W] in [0, 1) and a smooth field u [1, 3, D, H, W] (voxels)."""
    D, H, W = SIZES[size]
    g = torch.Generator().manual_seed(0)
    src = torch.rand(1, 1, D, H, W, generator=g, dtype=dtype)
    coarse = torch.randn(1, 3, max(2, D // 8), max(2, H // 8), max(2, W // 8), generator=g) * 2.0
    u = F.interpolate(coarse, size=(D, H, W), mode="trilinear", align_corners=True).contiguous()
    return src.to(device), u.to(device)


# (size, backend) in run order: the two backends of a size back to back
FORWARD = [(s, b) for s in ("LA", "S", "L") for b in ("reference", "cpu", "public")]
BACKWARD = [(s, b) for s in ("LA", "S") for b in ("reference", "cpu")]
ROUNDS = {"LA": 10, "S": 5, "L": 2}


def _skip_unless_loaded(backend, device="cpu"):
    if backend not in ("reference", "public") and not W3.warp3d_op.serves(backend, device):
        pytest.skip(f"{backend} backend not loaded")


@pytest.mark.parametrize("size,backend", FORWARD, ids=[f"{s}-{b}" for s, b in FORWARD])
def test_warp3d_forward_cpu(benchmark, ratios, size, backend):
    _skip_unless_loaded(backend)
    src, u = make_inputs(size)
    if backend == "public":
        fn = lambda: warp3d(src, u)  # noqa: E731
    else:
        impl = W3.IMPLS[backend]
        fn = lambda: impl(src, u, "bilinear", "zeros")  # noqa: E731
    # the reference at L takes seconds a call: no warm-up round for it there
    warmup = 0 if (size == "L" and backend == "reference") else 1
    benchmark.pedantic(fn, rounds=ROUNDS[size], warmup_rounds=warmup)
    D, H, W = SIZES[size]
    ratios.record(f"warp3d forward cpu {D}x{H}x{W} smooth", backend, benchmark, baseline="reference")


@pytest.mark.parametrize("size", ["LA", "S", "L"])
def test_warp3d_entry_vs_raw(benchmark, ratios, size):
    """The public entry against the raw C++ backend, interleaved (benchmarks/_entry.py)."""
    _skip_unless_loaded("cpu")
    src, u = make_inputs(size)
    impl = W3.IMPLS["cpu"]
    public = lambda: warp3d(src, u)  # noqa: E731
    benchmark.pedantic(public, rounds=1, warmup_rounds=0)
    D, H, W = SIZES[size]
    record_entry(ratios, f"warp3d forward cpu {D}x{H}x{W} smooth", lambda: impl(src, u, "bilinear", "zeros"),
                 public, repeats={"LA": 100, "S": 30, "L": 6}[size])


@pytest.mark.parametrize("size,backend", BACKWARD, ids=[f"{s}-{b}" for s, b in BACKWARD])
def test_warp3d_backward_cpu(benchmark, ratios, size, backend):
    _skip_unless_loaded(backend)
    src, u = make_inputs(size)
    g = torch.rand_like(src)
    impl = W3.BACKWARD_IMPLS[backend]
    rounds = max(2, ROUNDS[size] // 3)
    benchmark.pedantic(lambda: impl(g, src, u, "bilinear", "zeros", True, True), rounds=rounds, warmup_rounds=1)
    D, H, W = SIZES[size]
    ratios.record(f"warp3d backward cpu {D}x{H}x{W} smooth", backend, benchmark, baseline="reference")


# --- GPU -----------------------------------------------------------------------------------

def _gpu_helpers():
    try:  # benchmarks/ on sys.path (gpu_table.py, pytest's rootdir conftest)
        from _gpu import bandwidth_row, count_launches, entry_row, time_cuda
    except ImportError:  # run from the repository root as a package path
        from benchmarks._gpu import bandwidth_row, count_launches, entry_row, time_cuda
    return bandwidth_row, count_launches, entry_row, time_cuda


def gpu_rows() -> list[dict]:
    """CUDA and Triton warp3d on CUDA tensors, float32, trilinear, zeros padding.

    Bytes that must move per call (V voxels, N = C = 1), counting every tensor once
    (the 8 gathers of a smooth field hit cache):
      forward:  src 4V + u 12V read, out 4V written          = 20V
      backward: grad_out 4V + src 4V + u 12V read,
                grad_src 4V + grad_u 12V written             = 36V
                (grad_src's zero fill is a separate memset, counted in launches)
    """
    bandwidth_row, count_launches, entry_row, time_cuda = _gpu_helpers()
    rows = []
    for size in ("L", "S"):
        src, u = make_inputs(size, "cuda")
        V = src.numel()
        g = torch.rand_like(src)
        D, H, W = SIZES[size]
        for backend in ("cuda", "triton"):
            name = f"warp3d {backend} {D}x{H}x{W}"
            if not W3.warp3d_op.serves(backend, src.device):
                rows.append({"kernel": name, "note": "backend not loaded"})
                continue
            fwd = lambda: W3.IMPLS[backend](src, u, "bilinear", "zeros")  # noqa: E731
            bwd = lambda: W3.BACKWARD_IMPLS[backend](g, src, u, "bilinear", "zeros", True, True)  # noqa: E731
            if size == "L":
                ms = time_cuda(fwd)
                rows.append(bandwidth_row(f"{name} fwd", 20 * V, ms, count_launches(fwd)))
                if backend == "cuda" or not W3.warp3d_op.serves("cuda", src.device):
                    rows.append(entry_row(f"warp3d {D}x{H}x{W} fwd ({backend})", 20 * V, lambda: warp3d(src, u), ms))
                rows.append(bandwidth_row(f"{name} bwd", 36 * V, time_cuda(bwd, repeats=20), count_launches(bwd)))
            else:  # S: launches per call (latency-bound sizes)
                lf, lb = count_launches(fwd), count_launches(bwd)
                rows.append({"kernel": f"{name} fwd", "ms": round(time_cuda(fwd), 4),
                             "launches": lf.get("kernels", 0) + lf.get("memsets", 0)})
                rows.append({"kernel": f"{name} bwd", "ms": round(time_cuda(bwd), 4),
                             "launches": lb.get("kernels", 0) + lb.get("memsets", 0)})
    return rows


if __name__ == "__main__":
    if "--gpu" in sys.argv:
        import json

        for row in gpu_rows():
            print(json.dumps(row))
    else:
        print(__doc__)
