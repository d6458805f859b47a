"""A session's registration of the drawn region against whole slices, side by side
(issue 13: the cost follows the object).

For each case: ``Session.propagate`` after drawing ``k`` slices evenly over the extent
(ends included), in a warm engine, once with the registration cropped to the drawn
masks' box + ``REGISTER_CROP_MM`` (the default) and once on whole slices (the crop
switched off), interleaved ``--repeats`` times. Reports the median time of the call
(its registration stage and the proxy assembly) and the proxy Dice of both, and
whether the crop applied (it does not when the box would cover most of the plane, as
on the LA scans, whose field of view is already the heart).

    .venv/bin/python benchmarks/bench_register_crop.py --threads 2                  # 240x240x155 phantoms
    .venv/bin/python benchmarks/bench_register_crop.py --source la-full --cases 4   # control: no crop
"""

from __future__ import annotations

import argparse
import datetime as _dt
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))


def _dice(q, label) -> float:
    a, b = np.asarray(q) >= 0.5, np.asarray(label).astype(bool)
    return float(2.0 * (a & b).sum() / max(1, a.sum() + b.sum()))


def run(source: str, cases: int, k: int, repeats: int) -> list[dict]:
    import torch
    from bench_round import _cases

    import engine
    import engine.api.proxycache as proxycache
    from engine.eval.annotator import SimulatedAnnotator

    eng = engine.Engine(engine.Config(device="cpu"))
    crop = proxycache.crop_box
    rows = []
    for name, image, label, axis, spacing in _cases(source, cases, None):
        img = torch.from_numpy(np.ascontiguousarray(image))
        person = SimulatedAnnotator(label, axis=axis)
        lo, hi = person.extent()
        picks = sorted({int(round(v)) for v in np.linspace(lo, hi, k)})
        masks = {z: torch.from_numpy(person.draw(z)) for z in picks}
        times: dict[str, list[float]] = {"crop": [], "whole": []}
        dice, box = {}, {}
        for rep in range(repeats + 1):  # the first pass warms up
            for arm in times:
                proxycache.crop_box = crop if arm == "crop" else (lambda *a, **kw: None)
                try:
                    s = eng.open(img, axis=axis, spacing=spacing)
                    s.set_extent(lo, hi)
                    for z, m in masks.items():
                        s.annotate(z, m)
                    t0 = time.perf_counter()
                    q, _ = s.propagate()
                    dt = time.perf_counter() - t0
                finally:
                    proxycache.crop_box = crop
                if rep:
                    times[arm].append(dt)
                dice[arm] = _dice(np.moveaxis(np.asarray(q), axis, 0), np.moveaxis(label, axis, 0))
                box[arm] = s._proxies.registration.box
                s.close()
        H, W = (n for i, n in enumerate(image.shape) if i != axis)
        b = box["crop"]
        rows.append(
            {
                "case": name,
                "shape": tuple(image.shape),
                "share": 1.0 if b is None else (b[1] - b[0]) * (b[3] - b[2]) / (H * W),
                "crop_ms": statistics.median(times["crop"]) * 1e3,
                "whole_ms": statistics.median(times["whole"]) * 1e3,
                "crop_dice": dice["crop"],
                "whole_dice": dice["whole"],
            }
        )
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", default="brain", choices=("brain", "la", "la-full"))
    ap.add_argument("--cases", type=int, default=3)
    ap.add_argument("--k", type=int, default=3, help="slices drawn evenly over the extent")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="Markdown file (default: print only)")
    a = ap.parse_args(argv)
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    rows = run(a.source, a.cases, a.k, a.repeats)
    lines = [
        f"Session.propagate, registration cropped vs whole slices: {a.source}, k = {a.k}, "
        f"{torch.get_num_threads()} threads, {_dt.date.today()} (`benchmarks/bench_register_crop.py`)",
        "",
        "| case | shape | crop / plane | cropped ms | whole ms | whole / cropped | Dice cropped | Dice whole |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {'x'.join(map(str, r['shape']))} | {r['share']:.2f} | {r['crop_ms']:.0f} | "
            f"{r['whole_ms']:.0f} | {r['whole_ms'] / r['crop_ms']:.2f} | {r['crop_dice']:.4f} | {r['whole_dice']:.4f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
