"""The public entry next to its raw backend, measured interleaved.

Every kernel benchmark times the public entry ``engine.ops.<op>(...)`` (default flags:
metadata checks, the backend rule, the dispatch) as a row of its own, and compares it
with the raw backend (``IMPLS[<backend>]``, the adapter the rule picks) here: calls
alternate raw, public, raw, public... so that the noise of a shared machine (other
processes, OpenMP threads waiting for a time slice) hits both alike, and the medians
go into a ``<group>: public entry vs raw`` table of benchmarks/conftest.py's printout.
"""

from __future__ import annotations

import statistics
import time
from types import SimpleNamespace
from typing import Callable

ENTRY = ": public entry vs raw"


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds of each function, the calls interleaved."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def record_entry(
    ratios, group: str, raw: Callable[[], object], public: Callable[[], object], repeats: int
) -> dict[str, float]:
    """Time ``raw`` and ``public`` interleaved and record both under ``group + ENTRY``
    (baseline: raw). Returns the medians (seconds)."""
    med = interleaved({"raw": raw, "public": public}, repeats)
    for name, m in med.items():
        ratios.record(group + ENTRY, name, SimpleNamespace(stats=SimpleNamespace(median=m)), baseline="raw")
    return med
