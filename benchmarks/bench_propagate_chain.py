"""propagate_chain (and confidence_map) throughput: pure-torch reference vs C++ on CPU,
CUDA and Triton on GPU, at S = 64x128x128, L = 128x256x256 and the real left-atrium
size 44x95x71, 5 evenly spaced annotated slices, smooth random fields, fused
``linear``.

    .venv/bin/python -m pytest benchmarks/bench_propagate_chain.py --benchmark-only

prints, per size, each backend's median and its ratio to the reference from the same
run (the CPU run takes about a minute on 2 cores; the reference at L dominates).
``gpu_rows()`` (collected by benchmarks/gpu_table.py) reports effective GB/s, the
fraction of the device-to-device copy bandwidth measured in the same run, and kernel
launches per call (1 for the CUDA path: it is one kernel for the whole volume).
"""

import sys

import pytest
import torch
import torch.nn.functional as F

import engine.ops  # noqa: F401
from engine.ops._declare import registry

PC = sys.modules["engine.ops.propagate_chain"]
CM = sys.modules["engine.ops.confidence_map"]

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
    return PC.IMPLS[backend](masks, ann, fwd, bwd, 0.02, fuse)


def _available(op, backend, device):
    return registry[op].serves(backend, device)


CPU_CASES = [(size, b) for size in SIZES for b in ("reference", "cpu")]


@pytest.mark.parametrize("size,backend", CPU_CASES, ids=[f"{s}-{b}" for s, b in CPU_CASES])
def test_propagate_chain_cpu(benchmark, ratios, size, backend):
    if not _available("propagate_chain", backend, "cpu"):
        pytest.skip(f"{backend} backend not loaded")
    D, H, W = SIZES[size]
    masks, ann, fwd, bwd = make_inputs(D, H, W)
    rounds = 3 if (size == "L" and backend == "reference") else 10
    benchmark.pedantic(lambda: _run(backend, masks, ann, fwd, bwd), rounds=rounds, warmup_rounds=1)
    ratios.record(f"propagate_chain cpu {size} {D}x{H}x{W}", backend, benchmark, baseline="reference")


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_confidence_map_cpu(benchmark, ratios, backend):
    if not _available("confidence_map", backend, "cpu"):
        pytest.skip(f"{backend} backend not loaded")
    D, H, W = SIZES["L"]
    g = torch.Generator().manual_seed(1)
    axes = (torch.rand(D, generator=g) > 0.9, torch.rand(H, generator=g) > 0.95, None)
    benchmark.pedantic(lambda: CM.IMPLS[backend](*axes, [D, H, W]), rounds=10, warmup_rounds=1)
    ratios.record(f"confidence_map cpu L {D}x{H}x{W} (2 axes)", backend, benchmark, baseline="reference")


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
    from _gpu import bandwidth_row, count_launches, time_cuda

    rows = []
    for size, (D, H, W) in SIZES.items():
        masks, ann, fwd, bwd = make_inputs(D, H, W, "cuda")
        nbytes = _propagate_bytes(masks, ann)
        for backend in ("cuda", "triton"):
            if not _available("propagate_chain", backend, "cuda"):
                rows.append({"kernel": f"propagate_chain {backend} {size}", "note": "backend not loaded"})
                continue
            fn = lambda: _run(backend, masks, ann, fwd, bwd)  # noqa: E731
            row = bandwidth_row(f"propagate_chain {backend} {size} {D}x{H}x{W}", nbytes, time_cuda(fn, repeats=20),
                                count_launches(fn))
            rows.append(row)
        ms = time_cuda(lambda: _run("reference", masks, ann, fwd, bwd), repeats=3, warmup=1)
        rows.append(bandwidth_row(f"propagate_chain reference {size} {D}x{H}x{W}", nbytes, ms))
    D, H, W = SIZES["L"]
    g = torch.Generator().manual_seed(1)
    axes = [a.cuda() if a is not None else None
            for a in (torch.rand(D, generator=g) > 0.9, torch.rand(H, generator=g) > 0.95, None)]
    nbytes = D * H * W * 4 + D + H
    for backend in ("cuda", "triton"):
        if not _available("confidence_map", backend, "cuda"):
            rows.append({"kernel": f"confidence_map {backend} L", "note": "backend not loaded"})
            continue
        fn = lambda: CM.IMPLS[backend](*axes, [D, H, W])  # noqa: E731
        rows.append(bandwidth_row(f"confidence_map {backend} L {D}x{H}x{W}", nbytes, time_cuda(fn), count_launches(fn)))
    return rows
