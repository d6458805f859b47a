"""Stage timings of API calls: CUDA events on the GPU (read lazily), perf_counter
on the CPU."""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextlib import contextmanager
from typing import Any, Iterator, Optional

import torch

__all__ = ["Timer", "LazyTimings"]


class Timer:
    """Collects ``stage(name)`` spans; :meth:`result` sums them per name, in ms."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._marks: list[tuple[str, Any, Any]] = []

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            yield
            b.record()
            self._marks.append((name, a, b))
        else:
            t0 = time.perf_counter()
            yield
            self._marks.append((name, t0, time.perf_counter()))

    def result(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, a, b in self._marks:
            if self.cuda:
                b.synchronize()  # timings are read after the work, never inside it
                ms = a.elapsed_time(b)
            else:
                ms = (b - a) * 1e3
            out[name] = out.get(name, 0.0) + ms
        out["total"] = sum(out.values())
        return out


class LazyTimings(Mapping):
    """A call's stage timings in ms, read from its :class:`Timer` on first access."""

    def __init__(self, timer: Timer) -> None:
        self._timer = timer
        self._d: Optional[dict[str, float]] = None

    def _get(self) -> dict[str, float]:
        if self._d is None:
            self._d = self._timer.result()
        return self._d

    def __getitem__(self, key: str) -> float:
        return self._get()[key]

    def __iter__(self):
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())
