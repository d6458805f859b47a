"""Collect the GPU figures of every benchmark module into one table.

Each ``benchmarks/bench_*.py`` may define ``gpu_rows() -> list[dict]``; a row has at
least ``kernel`` and, for bandwidth-bound kernels, ``GB/s``, ``fraction`` (of the
device-to-device copy bandwidth measured in this run) and ``launches`` per call; the
rows of public entries (``engine.ops.<op>(...)``) add ``syncs`` per call and
``public/raw`` (their time over the raw backend's, same run; see
``benchmarks/_gpu.py``). Other keys (``TFLOP/s``, ``p50 ms``...) pass through.

    python benchmarks/gpu_table.py --json out.json --markdown out.md
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def collect() -> tuple[list[dict], list[str]]:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu_table.py needs a CUDA device")
    from _gpu import copy_bandwidth_gbs

    rows = [{"kernel": "device-to-device copy", "GB/s": round(copy_bandwidth_gbs(), 1), "fraction": 1.0}]
    errors = []
    for path in sorted(HERE.glob("bench_*.py")):
        try:
            mod = _load(path)
            fn = getattr(mod, "gpu_rows", None)
            if fn is None:
                continue
            for row in fn():
                row.setdefault("source", path.name)
                rows.append(row)
                print(json.dumps(row), flush=True)
        except Exception:  # one broken benchmark must not hide the others
            errors.append(f"{path.name}: {traceback.format_exc(limit=3)}")
            print(errors[-1], flush=True)
    return rows, errors


def markdown(rows: list[dict], device: str) -> str:
    keys = [
        "kernel",
        "ms",
        "GB/s",
        "fraction",
        "launches",
        "syncs",
        "public/raw",
        "TFLOP/s",
        "p50 ms",
        "p95 ms",
        "note",
    ]
    present = [k for k in keys if any(k in r for r in rows)]
    lines = [f"GPU: {device}", "", "| " + " | ".join(present) + " |", "|" + "---|" * len(present)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(k, "")) for k in present) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args()
    import torch

    rows, errors = collect()
    device = torch.cuda.get_device_name()
    md = markdown(rows, device)
    if args.json:
        args.json.write_text(json.dumps({"device": device, "rows": rows, "errors": errors}, indent=1))
    if args.markdown:
        args.markdown.write_text(md)
    print(md)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
