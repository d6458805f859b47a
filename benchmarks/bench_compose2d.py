"""compose2d throughput: the C++ kernel against the pure-torch reference in the same
run (CPU), and effective bandwidth of the CUDA / Triton kernels (GPU).

Workload: chaining the fields of adjacent slice pairs of a D×H×W volume, i.e.
N = D - 1 fields of H×W, float32, border padding, smooth fields of ~2 px amplitude:
S = 63×128×128, L = 127×256×256 and the real left-atrium size LA = 43×95×71.

    .venv/bin/python -m pytest benchmarks/bench_compose2d.py --benchmark-only

prints, per case, each backend's median and its ratio to the reference, measured in
the same run (benchmarks/conftest.py); L runs few rounds. ``gpu_rows()`` (collected
by benchmarks/gpu_table.py) reports the CUDA and Triton kernels at L: effective GB/s,
fraction of the copy bandwidth measured in the same run, launches per call.
"""

import sys

import pytest
import torch
import torch.nn.functional as F

import engine.ops  # noqa: F401

CP = sys.modules["engine.ops.compose2d"]

SIZES = {"S": (64, 128, 128), "L": (128, 256, 256), "LA": (44, 95, 71)}  # volumes: N = D - 1 fields


def make_inputs(size: str, device: str = "cpu"):
    """Two smooth fields u, v [D - 1, 2, H, W] (pixels, amplitude ~2)."""
    D, H, W = SIZES[size]
    g = torch.Generator().manual_seed(0)
    fields = []
    for _ in range(2):
        coarse = torch.randn(D - 1, 2, max(2, H // 8), max(2, W // 8), generator=g) * 2.0
        fields.append(F.interpolate(coarse, size=(H, W), mode="bilinear", align_corners=True).contiguous())
    return fields[0].to(device), fields[1].to(device)


FORWARD = [(s, b) for s in ("LA", "S", "L") for b in ("reference", "cpu")]
BACKWARD = [(s, b) for s in ("LA", "S") for b in ("reference", "cpu")]
ROUNDS = {"LA": 10, "S": 5, "L": 3}


def _skip_unless_loaded(backend, device="cpu"):
    if backend != "reference" and not CP.compose2d_op.serves(backend, device):
        pytest.skip(f"{backend} backend not loaded")


def _label(size):
    D, H, W = SIZES[size]
    return f"{D - 1}x{H}x{W}"


@pytest.mark.parametrize("size,backend", FORWARD, ids=[f"{s}-{b}" for s, b in FORWARD])
def test_compose2d_forward_cpu(benchmark, ratios, size, backend):
    _skip_unless_loaded(backend)
    u, v = make_inputs(size)
    impl = CP.IMPLS[backend]
    # the reference at L takes seconds a call: no warm-up round for it there
    warmup = 0 if (size == "L" and backend == "reference") else 1
    benchmark.pedantic(lambda: impl(u, v, "border"), rounds=ROUNDS[size], warmup_rounds=warmup)
    ratios.record(f"compose2d forward cpu {_label(size)} smooth", backend, benchmark, baseline="reference")


@pytest.mark.parametrize("size,backend", BACKWARD, ids=[f"{s}-{b}" for s, b in BACKWARD])
def test_compose2d_backward_cpu(benchmark, ratios, size, backend):
    _skip_unless_loaded(backend)
    u, v = make_inputs(size)
    g = torch.rand_like(u)
    impl = CP.BACKWARD_IMPLS[backend]
    benchmark.pedantic(lambda: impl(g, u, v, "border", True, True), rounds=max(2, ROUNDS[size] // 2),
                       warmup_rounds=1)
    ratios.record(f"compose2d backward cpu {_label(size)} smooth", backend, benchmark, baseline="reference")


# --- GPU -----------------------------------------------------------------------------------

def _gpu_helpers():
    try:  # benchmarks/ on sys.path (gpu_table.py, pytest's rootdir conftest)
        from _gpu import bandwidth_row, count_launches, time_cuda
    except ImportError:
        from benchmarks._gpu import bandwidth_row, count_launches, time_cuda
    return bandwidth_row, count_launches, time_cuda


def gpu_rows() -> list[dict]:
    """CUDA and Triton compose2d at L (127 fields of 256×256, float32, border).

    Bytes that must move per call (P = N·H·W pixels, 2 channels of 4 bytes):
      forward:  u 8P + v 8P read, out 8P written                     = 24P
      backward: grad_out 8P + u 8P + v 8P read, grad_u 8P + grad_v 8P = 40P
    """
    bandwidth_row, count_launches, time_cuda = _gpu_helpers()
    rows = []
    u, v = make_inputs("L", "cuda")
    g = torch.rand_like(u)
    P = v.shape[0] * v.shape[2] * v.shape[3]
    for backend in ("cuda", "triton"):
        name = f"compose2d {backend} {_label('L')}"
        if not CP.compose2d_op.serves(backend, v.device):
            rows.append({"kernel": name, "note": "backend not loaded"})
            continue
        fwd = lambda: CP.IMPLS[backend](u, v, "border")  # noqa: E731
        bwd = lambda: CP.BACKWARD_IMPLS[backend](g, u, v, "border", True, True)  # noqa: E731
        rows.append(bandwidth_row(f"{name} fwd", 24 * P, time_cuda(fwd), count_launches(fwd)))
        rows.append(bandwidth_row(f"{name} bwd", 40 * P, time_cuda(bwd, repeats=20), count_launches(bwd)))
    return rows


if __name__ == "__main__":
    if "--gpu" in sys.argv:
        import json

        for row in gpu_rows():
            print(json.dumps(row))
    else:
        print(__doc__)
