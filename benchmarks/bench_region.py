"""The session's prediction in a later round, side by side (issue 13): the region rule
and sliding-window overlap before this change against now, on the same weights and
the same case, interleaved.

* before: the region grows by the last prediction's whole box, whatever the fusion
  gate says, and the windows overlap by 0.5;
* now: the prediction widens the region only when ``lam >= 0.5`` and within one
  margin of the drawings, and the windows overlap by ``sw_overlap_round`` (0.25).

Two 240x240x155 volumes at 1 mm with a small object (``phantom_in_volume``), two rounds
of 3 + 2 slices with 20 steps each; then the second case's region under both rules is
predicted at both overlaps, three times each, interleaved::

    .venv/bin/python benchmarks/bench_region.py --threads 2
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
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "region_brain_cpu.md"))
    a = ap.parse_args(argv)
    import torch

    import engine
    from engine.api.roi import bbox2d, drawn_boxes
    from engine.eval.annotator import SimulatedAnnotator
    from engine.io.phantoms import phantom_in_volume

    if a.threads:
        torch.set_num_threads(a.threads)
    eng = engine.Engine(engine.Config(device="cpu"))
    for i in range(2):
        c = phantom_in_volume((9, i))
        person = SimulatedAnnotator(c.label, axis=c.axis)
        s = eng.open(torch.from_numpy(np.ascontiguousarray(c.image)), axis=c.axis, spacing=c.spacing)
        lo, hi = person.extent()
        s.set_extent(lo, hi)
        for k in (3, 2):
            for z in s.propose(k):
                s.annotate(z, torch.from_numpy(person.draw(z)))
            s.propagate()
            s.learn(20)
            s.predict()
        if i == 0:
            s.commit()
    view = s._view
    boxes = drawn_boxes(s._store.masks, {})
    pb = bbox2d((s._pred[lo : hi + 1] >= 0.5).any(0))
    regions = {"before": view.region(s.extent, boxes + ([pb] if pb else [])), "now": s._region()}
    times: dict[tuple[str, float], list[float]] = {(r, ov): [] for r in regions for ov in (0.5, 0.25)}
    for _ in range(a.repeats):
        for (r, ov), xs in times.items():
            box = regions[r]
            t0 = time.perf_counter()
            eng._predict_crop(s.image[box], view._grid(box), view.stats, ov, True)
            xs.append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    lines = [
        f"Session prediction in round 2 of a 240x240x155 case, {torch.get_num_threads()} threads, "
        f"{_dt.date.today()} (`benchmarks/bench_region.py`); fusion weight lam = {s.fusion_weight}",
        "",
        "| region rule | region (z, y, x) | voxels | overlap 0.5 | overlap 0.25 |",
        "|---|---|---:|---:|---:|",
    ]
    for r, box in regions.items():
        n = int(np.prod([b.stop - b.start for b in box]))
        spans = ", ".join(f"{b.start}-{b.stop}" for b in box)
        lines.append(f"| {r} | {spans} | {n / 1e6:.2f} M | {med[(r, 0.5)]:.2f} s | {med[(r, 0.25)]:.2f} s |")
    lines += [
        "",
        f"before @ 0.5 / now @ 0.25: **{med[('before', 0.5)] / med[('now', 0.25)]:.2f}x** "
        f"(medians of {a.repeats}, interleaved)",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(a.out).write_text(text)
    eng.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
