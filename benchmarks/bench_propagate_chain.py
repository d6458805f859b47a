"""propagate_chain throughput: pure-torch reference vs C++ on CPU, CUDA and Triton on
GPU, and the public entry ``engine.ops.propagate_chain`` (default flags, annotations
as a bool vector on the device), at S = 64x128x128, L = 128x256x256 and the real
left-atrium size 44x95x71, 5 evenly spaced annotated slices, smooth random fields,
fused ``linear``. (confidence_map: benchmarks/bench_confidence_map.py.)

    .venv/bin/python -m pytest benchmarks/bench_propagate_chain.py --benchmark-only

prints, per size, each backend's median and its ratio to the reference from the same
run (the CPU run takes about a minute on 2 cores; the reference at L dominates), and
the public entry against the raw C++ backend.
``gpu_rows()`` (collected by benchmarks/gpu_table.py) reports effective GB/s, the
fraction of the device-to-device copy bandwidth measured in the same run, and kernel
launches per call (1 for the CUDA path: it is one kernel for the whole volume).
"""

import sys

import pytest
import torch
import torch.nn.functional as F
from _entry import record_entry

import engine.ops  # noqa: F401
from engine.ops import propagate_chain
from engine.ops._declare import registry

PC = sys.modules["engine.ops.propagate_chain"]

SIZES = {"S": (64, 128, 128), "L": (128, 256, 256), "LA": (44, 95, 71)}
N_ANNOTATED = 5
CUDA = torch.cuda.is_available()


def make_inputs(D: int, H: int, W: int, device: str = "cpu", seed: int = 0):
    """A drifting soft ellipse per slice, smooth random fields (a few pixels), and
    5 evenly spaced annotated slices inside the object's extent."""
    g = torch.Generator().manual_seed(seed)
    z = torch.linspace(-1, 1, D).view(D, 1, 1)
    yy = torch.linspace(-1, 1, H).view(1, H, 1)
    xx = torch.linspace(-1, 1, W).view(1, 1, W)
    r = 0.5 * torch.sqrt(torch.clamp(1 - 0.8 * z**2, min=0.05))
    d2 = ((yy - 0.2 * z) / r) ** 2 + ((xx + 0.1 * z) / (0.8 * r)) ** 2
    masks = torch.clamp((1.2 - d2) * 4, 0, 1)
    fields = []
    for _ in range(2):
        coarse = torch.randn(D - 1, 2, max(2, H // 16), max(2, W // 16), generator=g) * 1.5
        fields.append(F.interpolate(coarse, size=(H, W), mode="bilinear", align_corners=True).contiguous())
    ann = torch.zeros(D, dtype=torch.bool)
    ann[torch.linspace(D * 0.1, D * 0.9, N_ANNOTATED).round().long()] = True
    return [t.to(device) for t in (masks, ann, fields[0], fields[1])]


def _run(backend, masks, ann, fwd, bwd, fuse="linear"):
    if backend == "public":
        return propagate_chain(masks, ann, fwd, bwd, 0.02, fuse)
    return PC.IMPLS[backend](masks, ann, fwd, bwd, 0.02, fuse)


def _available(op, backend, device):
    return backend == "public" or registry[op].serves(backend, device)


CPU_CASES = [(size, b) for size in SIZES for b in ("reference", "cpu", "public")]


@pytest.mark.parametrize("size,backend", CPU_CASES, ids=[f"{s}-{b}" for s, b in CPU_CASES])
def test_propagate_chain_cpu(benchmark, ratios, size, backend):
    if not _available("propagate_chain", backend, "cpu"):
        pytest.skip(f"{backend} backend not loaded")
    D, H, W = SIZES[size]
    masks, ann, fwd, bwd = make_inputs(D, H, W)
    rounds = 3 if (size == "L" and backend == "reference") else 10
    benchmark.pedantic(lambda: _run(backend, masks, ann, fwd, bwd), rounds=rounds, warmup_rounds=1)
    ratios.record(f"propagate_chain cpu {size} {D}x{H}x{W}", backend, benchmark, baseline="reference")


@pytest.mark.parametrize("size", list(SIZES))
def test_propagate_chain_entry_vs_raw(benchmark, ratios, size):
    """The public entry against the raw C++ backend, interleaved (benchmarks/_entry.py)."""
    if not registry["propagate_chain"].serves("cpu", "cpu"):
        pytest.skip("cpu backend not loaded")
    D, H, W = SIZES[size]
    masks, ann, fwd, bwd = make_inputs(D, H, W)
    public = lambda: _run("public", masks, ann, fwd, bwd)  # noqa: E731
    benchmark.pedantic(public, rounds=1, warmup_rounds=0)
    record_entry(
        ratios,
        f"propagate_chain cpu {size} {D}x{H}x{W}",
        lambda: _run("cpu", masks, ann, fwd, bwd),
        public,
        repeats={"LA": 100, "S": 40, "L": 10}[size],
    )


def _propagate_bytes(masks, ann, fuse="linear") -> int:
    """Bytes that must move: each chain's source slice read, every propagated
    slice's field read once (2 x H x W float32), the output volumes written
    (from_below, from_above, q) plus the small vectors. The previous slice a step
    gathers from is on chip (shared memory) or L2-resident: not counted."""
    D, H, W = masks.shape
    HW = H * W
    a = ann.cpu().tolist()
    idx = [z for z in range(D) if a[z]]
    up = sum((next((b for b in idx if b > s), D) - s - 1) for s in idx)
    down = sum((s - max([b for b in idx if b < s], default=-1) - 1) for s in idx)
    read = 2 * len(idx) * HW * masks.element_size() + (up + down) * 2 * HW * 4 + D
    written = (3 if fuse != "none" else 2) * D * HW * 4 + 4 * D * 3
    return read + written


def gpu_rows() -> list[dict]:
    """GPU figures for benchmarks/gpu_table.py (lazy imports: GPU-only path)."""
    from _gpu import bandwidth_row, count_launches, entry_row, time_cuda

    rows = []
    for size, (D, H, W) in SIZES.items():
        masks, ann, fwd, bwd = make_inputs(D, H, W, "cuda")
        nbytes = _propagate_bytes(masks, ann)
        raw_ms = {}
        for backend in ("cuda", "triton"):
            if not _available("propagate_chain", backend, "cuda"):
                rows.append({"kernel": f"propagate_chain {backend} {size}", "note": "backend not loaded"})
                continue
            fn = lambda: _run(backend, masks, ann, fwd, bwd)  # noqa: E731
            raw_ms[backend] = time_cuda(fn, repeats=20)
            row = bandwidth_row(
                f"propagate_chain {backend} {size} {D}x{H}x{W}", nbytes, raw_ms[backend], count_launches(fn)
            )
            rows.append(row)
        raw = next((b for b in ("cuda", "triton") if b in raw_ms), None)
        if raw is not None:
            rows.append(
                entry_row(
                    f"propagate_chain {size} {D}x{H}x{W} ({raw})",
                    nbytes,
                    lambda: _run("public", masks, ann, fwd, bwd),
                    raw_ms[raw],
                )
            )
        ms = time_cuda(lambda: _run("reference", masks, ann, fwd, bwd), repeats=3, warmup=1)
        rows.append(bandwidth_row(f"propagate_chain reference {size} {D}x{H}x{W}", nbytes, ms))
    return rows
