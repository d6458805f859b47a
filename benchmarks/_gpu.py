"""GPU measurement helpers shared by the benchmarks and benchmarks/device_check.sh.

* ``copy_bandwidth_gbs()``: the card's device-to-device copy bandwidth, measured now,
  counting bytes read + written (the yardstick every kernel is compared with).
* ``time_cuda(fn)``: median milliseconds of ``fn`` over repeats, by CUDA events.
* ``count_launches(fn)``: CUDA kernel launches (and memsets/memcpys) made by one call,
  from the torch profiler's device-side activity.
* ``count_syncs(fn)``: host synchronisations made by one call, as
  ``torch.cuda.set_sync_debug_mode`` reports them.
* ``bandwidth_row`` / ``entry_row``: one table row for benchmarks/gpu_table.py; an
  entry row times the public ``engine.ops`` entry next to its raw backend.
"""

from __future__ import annotations

import statistics
import warnings
from typing import Callable

import torch


def time_cuda(fn: Callable[[], object], repeats: int = 50, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


_COPY_GBS: dict[int, float] = {}


def copy_bandwidth_gbs(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in GB/s (read + write bytes), measured once."""
    if nbytes in _COPY_GBS:
        return _COPY_GBS[nbytes]
    src = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)
    ms = time_cuda(lambda: dst.copy_(src), repeats=20)
    gbs = 2 * nbytes / (ms * 1e-3) / 1e9
    _COPY_GBS[nbytes] = gbs
    return gbs


def count_launches(fn: Callable[[], object]) -> dict[str, int]:
    """Device activities of one call of ``fn`` (after a warm-up call): kernels,
    memsets and memcpys, as the profiler sees them."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    counts = {"kernels": 0, "memsets": 0, "memcpys": 0}
    for ev in prof.events():
        if ev.device_type != torch.autograd.DeviceType.CUDA:
            continue
        name = ev.name.lower()
        if "memset" in name:
            counts["memsets"] += 1
        elif "memcpy" in name:
            counts["memcpys"] += 1
        else:
            counts["kernels"] += 1
    return counts


def count_syncs(fn: Callable[[], object]) -> int:
    """Host synchronisations one call of ``fn`` makes (after a warm-up call): the
    warnings of ``torch.cuda.set_sync_debug_mode("warn")`` (mode "error" would stop at
    the first; tests/ops/test_entry_checks.py asserts zero with it)."""
    fn()
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return sum(1 for w in caught if "synchroniz" in str(w.message).lower())


def bandwidth_row(name: str, nbytes: int, ms: float, launches: dict | None = None) -> dict:
    gbs = nbytes / (ms * 1e-3) / 1e9
    copy = copy_bandwidth_gbs()
    row = {
        "kernel": name,
        "ms": round(ms, 4),
        "GB/s": round(gbs, 1),
        "copy GB/s": round(copy, 1),
        "fraction": round(gbs / copy, 3),
    }
    if launches is not None:
        row["launches"] = launches.get("kernels", 0) + launches.get("memsets", 0)
    return row


def entry_row(name: str, nbytes: int, public: Callable[[], object], raw_ms: float) -> dict:
    """The public entry (``engine.ops.<op>(...)``, default flags) as a bandwidth row
    with its launches, its host syncs per call and its time over the raw backend's
    (``raw_ms``, measured in the same run)."""
    ms = time_cuda(public)
    row = bandwidth_row(f"{name} public entry", nbytes, ms, count_launches(public))
    row["syncs"] = count_syncs(public)
    row["public/raw"] = round(ms / raw_ms, 3)
    return row
