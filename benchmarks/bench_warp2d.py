"""warp2d throughput: reference, F.grid_sample (grid construction counted in), C++,
Triton and CUDA, and the public entry ``engine.ops.warp2d`` (default flags), for 1 and
128 slices of 256×256, smooth and random fields.

    .venv/bin/python -m pytest benchmarks/bench_warp2d.py --benchmark-only

prints, per case, every backend's median and its ratio to grid_sample from the
same run, and a second table per case: the public entry against the raw backend that
serves it (``raw``). GPU rows appear where a CUDA device is present.
"""

import sys

import pytest
import torch
import torch.nn.functional as F
from _entry import record_entry

import engine.ops  # noqa: F401
from engine.ops import warp2d

W2 = sys.modules["engine.ops.warp2d"]

H = W = 256
CUDA = torch.cuda.is_available()


def make_inputs(n: int, field: str, device: str = "cpu"):
    g = torch.Generator().manual_seed(0)
    src = torch.rand(n, 1, H, W, generator=g)
    if field == "smooth":
        coarse = torch.randn(n, 2, H // 16, W // 16, generator=g) * 3
        u = F.interpolate(coarse, size=(H, W), mode="bilinear", align_corners=True)
    else:
        u = torch.randn(n, 2, H, W, generator=g) * 3
    return src.to(device), u.contiguous().to(device)


def grid_sample_equivalent(src, u):
    """The same warp through F.grid_sample: build the normalised grid, then sample."""
    h, w = u.shape[-2:]
    ys = torch.arange(h, device=u.device, dtype=u.dtype).view(1, h, 1)
    xs = torch.arange(w, device=u.device, dtype=u.dtype).view(1, 1, w)
    gy = (ys + u[:, 0]) * (2.0 / (h - 1)) - 1
    gx = (xs + u[:, 1]) * (2.0 / (w - 1)) - 1
    return F.grid_sample(src, torch.stack([gx, gy], -1), mode="bilinear", padding_mode="zeros", align_corners=True)


def _backends(device):
    names = ["grid_sample", "reference", "public"]
    if device == "cpu":
        names.append("cpu")
    else:
        names += ["cuda", "triton"]
    return names


def _raw(device):
    """The backend the rule picks for the public entry (on CUDA: CUDA, else Triton)."""
    order = ("cpu",) if device == "cpu" else ("cuda", "triton")
    return next((b for b in order if W2.warp2d_op.serves(b, device)), "reference")


CASES = [(n, f, d) for d in (["cpu"] + (["cuda"] if CUDA else [])) for n in (1, 128) for f in ("smooth", "random")]


@pytest.mark.parametrize("n,field,device", CASES, ids=[f"{d}-{n}x256x256-{f}" for n, f, d in CASES])
@pytest.mark.parametrize("backend", ["grid_sample", "reference", "cpu", "cuda", "triton", "public"])
def test_warp2d(benchmark, ratios, n, field, device, backend):
    if backend not in _backends(device):
        pytest.skip(f"{backend} does not serve {device} tensors")
    src, u = make_inputs(n, field, device)
    if backend == "grid_sample":
        fn = lambda: grid_sample_equivalent(src, u)  # noqa: E731
    elif backend == "public":
        fn = lambda: warp2d(src, u)  # noqa: E731
    else:
        if backend != "reference" and not W2.warp2d_op.serves(backend, src.device):
            pytest.skip(f"{backend} backend not loaded")
        impl = W2.IMPLS[backend]
        fn = lambda: impl(src, u, "bilinear", "zeros")  # noqa: E731
    if device == "cuda":

        def run():
            fn()
            torch.cuda.synchronize()
    else:
        run = fn
    rounds = 3 if (n == 128 and device == "cpu") else 20
    benchmark.pedantic(run, rounds=rounds, warmup_rounds=1)
    ratios.record(f"warp2d {device} {n}x{H}x{W} {field}", backend, benchmark, baseline="grid_sample")


ENTRY_CASES = [(n, f) for n in (1, 128) for f in ("smooth", "random")]


@pytest.mark.parametrize("n,field", ENTRY_CASES, ids=[f"cpu-{n}x256x256-{f}" for n, f in ENTRY_CASES])
def test_warp2d_entry_vs_raw(benchmark, ratios, n, field):
    """The public entry against the raw C++ backend, interleaved (benchmarks/_entry.py)."""
    if not W2.warp2d_op.serves("cpu", "cpu"):
        pytest.skip("cpu backend not loaded")
    src, u = make_inputs(n, field)
    impl = W2.IMPLS["cpu"]
    public = lambda: warp2d(src, u)  # noqa: E731
    benchmark.pedantic(public, rounds=1, warmup_rounds=0)
    record_entry(
        ratios,
        f"warp2d cpu {n}x{H}x{W} {field}",
        lambda: impl(src, u, "bilinear", "zeros"),
        public,
        repeats=15 if n == 128 else 300,
    )


def gpu_rows() -> list[dict]:
    """Effective bandwidth of the CUDA and Triton warp2d at 128x256x256 float32
    (bytes that must move: src + u read, out written), for benchmarks/gpu_table.py."""
    from _gpu import bandwidth_row, count_launches, entry_row, time_cuda

    rows = []
    for field in ("smooth", "random"):
        src, u = make_inputs(128, field, "cuda")
        nbytes = src.numel() * 4 + u.numel() * 4 + src.numel() * 4
        raw_ms = {}
        for backend in ("cuda", "triton"):
            if not W2.warp2d_op.serves(backend, src.device):
                rows.append({"kernel": f"warp2d {backend}", "note": "backend not loaded"})
                continue
            impl = W2.IMPLS[backend]
            fn = lambda: impl(src, u, "bilinear", "zeros")  # noqa: E731
            raw_ms[backend] = time_cuda(fn)
            row = bandwidth_row(f"warp2d {backend} 128x256x256 {field}", nbytes, raw_ms[backend], count_launches(fn))
            rows.append(row)
        raw = _raw("cuda")
        if raw in raw_ms:
            rows.append(entry_row(f"warp2d 128x256x256 {field} ({raw})", nbytes, lambda: warp2d(src, u), raw_ms[raw]))
        ms = time_cuda(lambda: grid_sample_equivalent(src, u))
        rows.append(bandwidth_row(f"warp2d grid_sample 128x256x256 {field}", nbytes, ms))
    return rows
