"""Shared benchmark plumbing: each benchmark records its median under a group and a
name; at the end of the session a table per group prints every entry's time and its
ratio to the group's baseline, all measured in the same run.

Usage in a benchmark::

    def test_x(benchmark, ratios):
        benchmark.pedantic(fn, rounds=5, warmup_rounds=1)
        ratios.record("warp2d 128x256x256 smooth", "cpu", benchmark, baseline="grid_sample")
"""

from __future__ import annotations

import json
import os
import platform
from collections import defaultdict

import pytest

_TABLES: dict[str, dict[str, float]] = defaultdict(dict)
_BASELINES: dict[str, str] = {}


def machine_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name()
    except Exception:  # pragma: no cover
        pass
    model = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} cores)"


class Ratios:
    def record(self, group: str, name: str, benchmark, baseline: str) -> None:
        stats = benchmark.stats.stats if hasattr(benchmark.stats, "stats") else benchmark.stats
        _TABLES[group][name] = float(stats.median)
        _BASELINES[group] = baseline


@pytest.fixture(scope="session")
def ratios() -> Ratios:
    return Ratios()


def pytest_terminal_summary(terminalreporter):
    if not _TABLES:
        return
    tr = terminalreporter
    tr.section(f"dilseg ratios (same run) on {machine_name()}")
    out = {}
    for group, rows in _TABLES.items():
        base = _BASELINES[group]
        tr.write_line(f"{group}  (baseline: {base})")
        b = rows.get(base)
        for name, med in sorted(rows.items(), key=lambda kv: kv[1]):
            ratio = f"{b / med:6.2f}x faster than {base}" if b else "baseline not measured"
            tr.write_line(f"  {name:24s} {med * 1e3:10.2f} ms   {ratio}")
        out[group] = {"baseline": base, "median_s": rows}
    path = os.environ.get("DILSEG_BENCH_JSON")
    if path:
        with open(path, "w") as f:
            json.dump({"machine": machine_name(), "groups": out}, f, indent=1)
