"""Shared machinery for pinning every kernel to its pure-torch reference.

* ``TOLERANCES``: per-dtype (atol, rtol), each entry saying where it comes from.
* ``rand(...)``: random inputs of odd shapes, never all zeros, optionally as
  non-contiguous views of a larger buffer.
* ``poisoned(...)``: output buffers filled with NaN (floats) or 0xAB (integers), so a
  kernel that forgets to write an element is caught.
* ``triton_interpret``: a context that runs Triton launchers with the interpreter on
  CPU tensors. Triton 3.9 reads TRITON_INTERPRET when a kernel is decorated, so
  the launchers in engine/kernels/ jit lazily at launch (see engine/kernels/_jit.py).
* ``backends_for(device)``: which implementations of an op to compare on a device.
"""

from __future__ import annotations

import contextlib
import os

import pytest
import torch

# (atol, rtol) for comparing a kernel with the reference on the same inputs.
TOLERANCES = {
    # fp32: both accumulate in fp32 but in different orders / with FMA contraction;
    # a few ulp on values of order 1-10 after 4-8 products.
    torch.float32: (1e-5, 1e-5),
    # fp64: same algorithm in double; rounding-order differences only.
    torch.float64: (1e-12, 1e-12),
    # fp16 output: one final rounding of an fp32 result (half ulp = 2^-11 relative)
    # plus possible double rounding when the reference rounds at a different point.
    torch.float16: (2e-3, 2e-3),
    # bf16 output: one final rounding (half ulp = 2^-8 relative), doubled for safety.
    torch.bfloat16: (1.6e-2, 1.6e-2),
    # uint8 (nearest copies only): exact.
    torch.uint8: (0, 0),
}

# gradients: sums of many products reordered by atomics / different loop nests.
GRAD_TOLERANCES = {
    torch.float32: (1e-4, 1e-4),
    torch.float64: (1e-10, 1e-10),
    torch.float16: (5e-2, 5e-2),
    torch.bfloat16: (2e-1, 5e-2),
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype=None, table=TOLERANCES, msg=""):
    dtype = dtype or expected.dtype
    atol, rtol = table[dtype]
    torch.testing.assert_close(actual.cpu(), expected.cpu(), atol=atol, rtol=rtol, equal_nan=False, msg=msg or None)


def rand(shape, dtype=torch.float32, device="cpu", *, low=0.0, high=1.0, noncontig=False, seed=None):
    """Random tensor (never all zeros); ``noncontig`` returns a strided view."""
    g = torch.Generator().manual_seed(seed if seed is not None else hash((tuple(shape), str(dtype))) % (2**31))
    big = list(shape)
    if noncontig:
        big[-1] = big[-1] * 2 + 1
    if dtype == torch.uint8:
        t = torch.randint(0, 2, big, generator=g, dtype=torch.uint8)
        t.view(-1)[0] = 1
    elif dtype == torch.bool:
        t = torch.rand(big, generator=g) > 0.5
    else:
        t = (torch.rand(big, generator=g, dtype=torch.float64) * (high - low) + low).to(dtype)
    if noncontig:
        t = t[..., 1 : 1 + 2 * shape[-1] : 2]
        assert not t.is_contiguous()
    return t.to(device)


def smooth_field(n, h, w, amplitude=2.0, channels=2, seed=0, device="cpu"):
    """A smooth random displacement field [n, channels, h, w] (pixels)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, channels, max(2, h // 8), max(2, w // 8), generator=g)
    f = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)
    return (f * amplitude).to(device)


def poisoned(shape, dtype, device="cpu"):
    if dtype.is_floating_point:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.full(shape, 0xAB, dtype=dtype, device=device)


@contextlib.contextmanager
def triton_interpret():
    """Run Triton kernels with the interpreter on CPU tensors (TRITON_INTERPRET=1)."""
    pytest.importorskip("triton")
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    from engine import _backends

    _backends.reset()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old
        _backends.reset()


def cpu_ext_loaded(op: str) -> bool:
    from engine import _backends

    mod = _backends.load("cpu")
    return mod is not None and op in mod.ops


requires_cpu_ext = pytest.mark.skipif(
    os.environ.get("ENGINE_NO_EXTENSION") == "1", reason="ENGINE_NO_EXTENSION=1: no compiled kernels"
)


def load_backend(name: str):
    """The backend module ``name`` (``cpu``, ``cuda``, ``triton``) or None."""
    from engine import _backends

    return _backends.load(name)


def has_kernel(op: str, backend: str) -> bool:
    """Whether ``op`` declares a ``backend`` kernel and that backend loaded with it."""
    from engine.ops import _common
    from engine.ops._declare import registry

    d = registry[op]
    return backend in d.kernels and _common._loaded(backend, d.unit) is None


def kernel_dtype(mod, dtype):
    """The compiled module's named element type for a torch dtype."""
    names = {
        torch.float32: "Float32",
        torch.float64: "Float64",
        torch.float16: "Float16",
        torch.bfloat16: "BFloat16",
        torch.uint8: "UInt8",
    }
    return getattr(mod.DType, names[dtype])


class FixedThreads:
    """A CPU launch with a fixed OpenMP thread count (tests of the scheduling paths)."""

    backend = "cpu"

    def __init__(self, n: int) -> None:
        self.n = n

    @property
    def mod(self):
        return load_backend("cpu")

    def last(self, t, work=None):
        return self.n

    def dtype(self, dtype):
        return kernel_dtype(self.mod, dtype)
