"""instance_norm throughput on the CPU: the C++ kernel (forward, backward) against the
pure-torch reference (the composition the segmenter's layer ran before the kernel) and
against torch's own ``instance_norm`` (forward and autograd backward), in the same run.

The public entries ``engine.ops.instance_norm`` / ``instance_norm_backward`` get their
own table against the raw C++ backend.

Workload: the CPU plan's largest norm, ``[2, 8, 32, 48, 48]`` float32 channels_last
(the first level of a width-8 U-Net on a 32x48x48 patch, batch 2: ``L1``), and its
third level ``[2, 32, 8, 12, 12]`` (``L3``). What the layer costs inside a training
step (cold caches, every level) is in ``bench_train.py --norms``.

    .venv/bin/python -m pytest benchmarks/bench_instance_norm.py --benchmark-only

No GPU rows: on CUDA the layer calls torch's fused instance_norm.
"""

import sys

import pytest
import torch
from _entry import record_entry

import engine.ops  # noqa: F401
from engine.ops import instance_norm, instance_norm_backward

IN = sys.modules["engine.ops.instance_norm"]

SIZES = {"L1": (2, 8, 32, 48, 48), "L3": (2, 32, 8, 12, 12)}
ROUNDS = {"L1": 30, "L3": 200}
BACKENDS = ("reference", "torch", "cpu", "public")
CASES = [(s, d, b) for s in SIZES for d in ("forward", "backward") for b in BACKENDS]


def make_inputs(size: str):
    g = torch.Generator().manual_seed(0)
    shape = SIZES[size]
    x = (1.0 + 2.0 * torch.randn(shape, generator=g)).contiguous(memory_format=torch.channels_last_3d)
    dy = torch.randn(shape, generator=g).contiguous(memory_format=torch.channels_last_3d)
    w = torch.rand(shape[1], generator=g) + 0.5
    b = torch.randn(shape[1], generator=g)
    return x, dy, w, b


def _torch_fns(x, dy, w, b):
    """torch's layer: forward, and forward + autograd backward less the forward."""
    xr, wr, br = (t.detach().clone().requires_grad_() for t in (x, w, b))

    def fwd():
        with torch.no_grad():
            return torch.nn.functional.instance_norm(x, weight=w, bias=b, eps=1e-5)

    def bwd():
        y = torch.nn.functional.instance_norm(xr, weight=wr, bias=br, eps=1e-5)
        return torch.autograd.grad(y, (xr, wr, br), dy)

    return fwd, bwd


@pytest.mark.parametrize("size,direction,backend", CASES, ids=[f"{s}-{d}-{b}" for s, d, b in CASES])
def test_instance_norm_cpu(benchmark, ratios, size, direction, backend):
    if backend == "cpu" and not IN.instance_norm_op.serves("cpu", "cpu"):
        pytest.skip("cpu backend not loaded")
    x, dy, w, b = make_inputs(size)
    _, mean, rstd = IN.IMPLS["reference"](x, w, b, 1e-5)
    if backend == "torch":
        fwd, bwd = _torch_fns(x, dy, w, b)
        fn = fwd if direction == "forward" else bwd  # torch's backward row includes its forward
    elif backend == "public":
        fn = (
            (lambda: instance_norm(x, w, b, 1e-5))
            if direction == "forward"
            else (lambda: instance_norm_backward(dy, x, mean, rstd, w))
        )
    else:
        f, g = IN.IMPLS[backend], IN.BACKWARD_IMPLS[backend]
        fn = (lambda: f(x, w, b, 1e-5)) if direction == "forward" else (lambda: g(dy, x, mean, rstd, w))
    benchmark.pedantic(fn, rounds=ROUNDS[size], warmup_rounds=2)
    shape = "x".join(map(str, SIZES[size]))
    ratios.record(f"instance_norm {direction} cpu {shape} channels_last", backend, benchmark, baseline="reference")


@pytest.mark.parametrize("size", list(SIZES))
def test_instance_norm_entry_vs_raw(benchmark, ratios, size):
    """The public entries against the raw C++ backend, interleaved (benchmarks/_entry.py)."""
    if not IN.instance_norm_op.serves("cpu", "cpu"):
        pytest.skip("cpu backend not loaded")
    x, dy, w, b = make_inputs(size)
    y, mean, rstd = instance_norm(x, w, b, 1e-5)
    f, g = IN.IMPLS["cpu"], IN.BACKWARD_IMPLS["cpu"]
    public = lambda: (instance_norm(x, w, b, 1e-5), instance_norm_backward(dy, x, mean, rstd, w))  # noqa: E731
    benchmark.pedantic(public, rounds=1, warmup_rounds=0)
    record_entry(
        ratios,
        f"instance_norm forward + backward cpu {'x'.join(map(str, SIZES[size]))}",
        lambda: (f(x, w, b, 1e-5), g(dy, x, mean, rstd, w)),
        public,
        repeats=ROUNDS[size],
    )
