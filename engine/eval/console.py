"""What a stream run prints: the per-case table, progress bars."""

from __future__ import annotations

import math
import sys
from typing import Callable, Optional

__all__ = ["HEADER", "case_line", "write", "bar", "Log"]

Log = Callable[[str], None]

HEADER = (
    f"{'method':<16} {'case':<14} {'before':>6} {'proxy':>6} {'model':>6} {'fused':>6} "
    f"{'slices':>6} {'labor':>6} {'sec':>7}"
)


def _fmt(v: Optional[float]) -> str:
    return f"{v:6.3f}" if isinstance(v, (int, float)) and v is not None and math.isfinite(v) else f"{'-':>6}"


def case_line(method: str, rec: dict) -> str:
    """One row of the per-case table."""
    return (
        f"{method:<16} {rec['name'][:14]:<14} {_fmt(rec.get('before'))} {_fmt(rec.get('proxy'))} "
        f"{_fmt(rec.get('model'))} {_fmt(rec.get('fused'))} {_fmt(rec.get('effort_slices'))} "
        f"{_fmt(rec.get('effort_labor'))} {rec.get('seconds', 0.0):7.1f}"
    )


def write(log: Log, progress: bool, line: str) -> None:
    """A line to the log; around live progress bars through tqdm so they stay intact."""
    if progress and log is print:
        from tqdm import tqdm

        tqdm.write(line, file=sys.stdout)
    else:
        log(line)


def bar(it, enabled: bool, **kw):
    """``it`` wrapped in a tqdm progress bar on stderr when ``enabled`` (and a terminal)."""
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, file=sys.stderr, dynamic_ncols=True, disable=None, **kw)  # None: off when not a terminal
