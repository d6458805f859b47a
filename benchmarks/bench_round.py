"""Latency of one interaction round through the session API (issue 6, DESIGN §5).

One round, as a viewer drives it::

    propose(k) -> annotate(k slices) -> propagate() -> learn(N) -> predict() -> result()

The first round of a case also registers all adjacent slice pairs (once per case);
later rounds re-propagate through the cached fields and take model-guided proposals.
Every call's own timing breakdown (``return_timings=True``: CUDA events on GPU,
``perf_counter`` on CPU) is summed per stage, so the table shows where the time goes.

Script (real left-atrium cases on the CPU; writes a Markdown table)::

    .venv/bin/python benchmarks/bench_round.py --cases 6 --steps 10
    .venv/bin/python benchmarks/bench_round.py --size la-full --cases 4 --rounds 3 --steps 20   # 0.625 mm LA
    .venv/bin/python benchmarks/bench_round.py --size brain --cases 2 --rounds 3 --steps 20  # 240x240x155
    .venv/bin/python benchmarks/bench_round.py --size S --steps 20 --device cuda   # GPU, phantoms at S

On CUDA every round runs under ``torch.cuda.set_sync_debug_mode("warn")`` and the
host synchronisations of its calls are counted (``host syncs`` column);
``gpu_rows()`` also counts the CUDA kernel launches of one later round with the
profiler.

pytest-benchmark (one LA case, or a phantom without the data)::

    .venv/bin/python -m pytest benchmarks/bench_round.py --benchmark-only

``gpu_rows()`` (for ``benchmarks/gpu_table.py`` / ``device_check.sh``): p50/p95 of a
round at S = 64x128x128 and L = 128x256x256 with 20 learning steps on the GPU.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import statistics
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SIZES = {"S": (64, 128, 128), "L": (128, 256, 256)}
SOURCES = ("la", "la-full", "brain", "S", "L")
STAGES = ("propose", "register", "propagate", "learn", "predict", "fuse")


def _cases(source: str, n: int, data: Optional[str]):
    """``n`` (name, image, label, axis, spacing): LA cases (axis 2; ``la-full``: the
    0.625 mm folder), a 240x240x155 volume at 1 mm with a small object (``brain``:
    :func:`engine.io.phantoms.phantom_in_volume`), or phantoms at a size."""
    if source in ("la", "la-full"):
        from engine.io import CaseFolder, la_folder

        if source == "la":
            folder = la_folder(data)
        else:
            from engine.io import default_data_dir

            half = default_data_dir()
            full = Path(data) if data else (None if half is None else half.parent / "la_lgemri_2018_full")
            folder = CaseFolder(full, axis=2)
        for i in range(min(n, len(folder))):
            c = folder[i]
            yield c.name, c.image, c.label, 2, c.spacing
    elif source == "brain":
        from engine.io.phantoms import phantom_in_volume

        for i in range(n):
            c = phantom_in_volume((9, i))
            yield c.name, c.image, c.label, c.axis, c.spacing
    else:
        from engine.io.phantoms import phantom_case

        for i in range(n):
            c = phantom_case((7, i), shape=SIZES[source], axis=0)
            yield c.name, c.image, c.label, 0, c.spacing


def _percentile(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q))


def run_rounds(
    source: str = "la",
    cases: int = 4,
    steps: int = 10,
    sizes: Sequence[int] = (3, 2),
    device: str = "cpu",
    data: Optional[str] = None,
    warmup: bool = True,
    config=None,
) -> list[dict]:
    """Drive ``cases`` cases through ``len(sizes)`` rounds each; one record per round.

    A record: ``case``, ``round`` (1-based), ``wall_ms`` (the whole round, host clock,
    device-synchronised), ``stages`` (ms per stage from the calls' own breakdowns).
    One engine serves all cases (the model learns as the stream goes, as in use).
    """
    import torch

    import engine
    from engine.eval.annotator import SimulatedAnnotator

    cfg = config or engine.Config(device=device)
    eng = engine.Engine(cfg)
    dev = eng.device

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    records: list[dict] = []
    first = True
    cuda = dev.type == "cuda"
    for name, image, label, axis, spacing in _cases(source, cases, data):
        img = torch.from_numpy(np.ascontiguousarray(image)).to(dev)  # the viewer's volume lives on the device
        person = SimulatedAnnotator(label, axis=axis)
        if first and warmup:  # one untimed round: kernels compiled, allocator and caches warm
            s = eng.open(img, axis=axis, spacing=spacing)
            lo, hi = person.extent()
            s.set_extent(lo, hi)
            for z in s.propose(sizes[0]):
                s.annotate(z, torch.from_numpy(person.draw(z)).to(dev))
            s.propagate()
            s.learn(2)
            s.result()
            s.close()
            person.reset()
            first = False
        s = eng.open(img, axis=axis, spacing=spacing)
        lo, hi = person.extent()
        s.set_extent(lo, hi)
        for r, k in enumerate(sizes, start=1):
            stages = dict.fromkeys(STAGES, 0.0)

            def add(t: dict) -> None:
                for key, ms in t.items():
                    if key != "total":
                        stages[key] = stages.get(key, 0.0) + ms

            masks = [(z, torch.from_numpy(person.draw(z)).to(dev)) for z in s.propose(k)]  # the person's drawing
            syncs = _SyncCounter(cuda)
            sync()
            t0 = time.perf_counter()
            with syncs:
                picks, t = s.propose(k, return_timings=True)
                add(t)
                if picks != [z for z, _ in masks]:
                    raise RuntimeError("the proposal changed between the person's drawing and the timed round")
                for z, m in masks:
                    s.annotate(z, m)
                add(s.propagate(return_timings=True)[1])
                add(s.learn(steps, return_timings=True))
                add(s.predict(return_timings=True)[1])
                add(s.result(return_timings=True)[1])  # reuses the prediction and the proxy when current
            sync()
            wall = (time.perf_counter() - t0) * 1e3
            records.append(
                {
                    "case": name,
                    "round": r,
                    "slices": len(picks),
                    "wall_ms": wall,
                    "stages": stages,
                    "syncs": syncs.count,
                }
            )
        s.commit()
    eng.close()
    return records


class _SyncCounter:
    """Counts the host synchronisations of the calls inside (CUDA only): the sync debug
    mode warns at each one; the warnings are counted, not shown."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.count: Optional[int] = None

    def __enter__(self):
        if self.cuda:
            import warnings

            import torch

            self._catch = warnings.catch_warnings(record=True)
            self._log = self._catch.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc):
        if self.cuda:
            import torch

            torch.cuda.set_sync_debug_mode("default")
            self._catch.__exit__(*exc)
            self.count = sum(1 for w in self._log if "synchroniz" in str(w.message).lower())
        return False


def _stage_names(records: list[dict]) -> list[str]:
    extra = sorted({k for r in records for k in r["stages"]} - set(STAGES))
    return list(STAGES) + extra


def summarise(records: list[dict]) -> dict[str, dict]:
    """p50/p95 of the round wall time: all rounds, first rounds (with registration),
    later rounds; mean ms per stage for each group."""
    groups = {
        "all rounds": records,
        "round 1 (registers the pairs)": [r for r in records if r["round"] == 1],
        "later rounds": [r for r in records if r["round"] > 1],
    }
    out = {}
    for g, rs in groups.items():
        if not rs:
            continue
        walls = [r["wall_ms"] for r in rs]
        syncs = [r["syncs"] for r in rs if r.get("syncs") is not None]
        out[g] = {
            "n": len(rs),
            "p50 ms": _percentile(walls, 50),
            "p95 ms": _percentile(walls, 95),
            "syncs": statistics.fmean(syncs) if syncs else None,
            "stages": {s: statistics.fmean(r["stages"].get(s, 0.0) for r in rs) for s in _stage_names(rs)},
        }
    return out


def markdown(summary: dict[str, dict], title: str) -> str:
    names = list(next(iter(summary.values()))["stages"]) if summary else list(STAGES)
    lines = [
        title,
        "",
        "| rounds | n | p50 ms | p95 ms | " + " | ".join(f"{s} ms" for s in names) + " | other ms | host syncs |",
        "|" + "---|" * (4 + len(names) + 2),
    ]
    for g, v in summary.items():
        st = v["stages"]
        other = v["p50 ms"] - sum(st.values())
        sy = "n/a (CPU)" if v.get("syncs") is None else f"{v['syncs']:.1f}"
        lines.append(
            f"| {g} | {v['n']} | {v['p50 ms']:.0f} | {v['p95 ms']:.0f} | "
            + " | ".join(f"{st[s]:.0f}" for s in names)
            + f" | {other:.0f} | {sy} |"
        )
    lines.append("")
    lines.append(
        "Stage columns are means over the rounds of the group (from the calls' own breakdowns); "
        "`other` = p50 minus their sum (annotate calls, Python, conversions; negative when the "
        "stage means exceed the median round)."
    )
    return "\n".join(lines)


# --- pytest-benchmark ----------------------------------------------------------------------


def _source_for_pytest() -> str:
    from engine.io import default_data_dir

    return "la" if default_data_dir() is not None else "S"


def test_round_latency(benchmark, ratios):
    src = _source_for_pytest()
    if src != "la":  # phantom S is heavy on a CPU: keep the pytest run short
        import pytest

        pytest.skip("the left-atrium data is not here; run the script with --size S on a GPU")
    recs = benchmark.pedantic(lambda: run_rounds("la", cases=1, steps=10, device="cpu"), rounds=1, iterations=1)
    summ = summarise(recs)
    print()
    print(markdown(summ, "round latency, 1 LA case, 10 steps, CPU"))
    assert all(r["wall_ms"] > 0 for r in recs)


# --- GPU rows for device_check.sh ----------------------------------------------------------


def launches_of_a_round(size: str = "S", steps: int = 20) -> int:
    """CUDA kernel launches of one later round (round 2 of a case) at ``size``."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    import engine
    from engine.eval.annotator import SimulatedAnnotator

    name, image, label, axis, spacing = next(_cases(size, 1, None))
    eng = engine.Engine(engine.Config(device="cuda"))
    img = torch.from_numpy(np.ascontiguousarray(image)).cuda()
    person = SimulatedAnnotator(label, axis=axis)
    s = eng.open(img, axis=axis, spacing=spacing)
    s.set_extent(*person.extent())
    for z in s.propose(3):
        s.annotate(z, torch.from_numpy(person.draw(z)).cuda())
    s.propagate()
    s.learn(steps)
    s.result()
    masks = [(z, torch.from_numpy(person.draw(z)).cuda()) for z in s.propose(2)]
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        s.propose(2)
        for z, m in masks:
            s.annotate(z, m)
        s.propagate()
        s.learn(steps)
        s.result()
        torch.cuda.synchronize()
    s.close()
    eng.close()
    return sum(1 for e in prof.events() if e.device_type.name == "CUDA")


def gpu_rows() -> list[dict]:
    rows = []
    for size in ("S", "L"):
        recs = run_rounds(size, cases=2, steps=20, device="cuda")
        summ = summarise(recs)
        for g, v in summ.items():
            if g == "all rounds":
                continue
            st = v["stages"]
            rows.append(
                {
                    "kernel": f"round {size} {g}, 20 steps",
                    "p50 ms": round(v["p50 ms"], 1),
                    "p95 ms": round(v["p95 ms"], 1),
                    "syncs / round": v.get("syncs"),
                    "note": " ".join(f"{s} {ms:.0f}" for s, ms in st.items()),
                }
            )
    rows.append({"kernel": "round S later round, 20 steps: CUDA kernel launches", "launches": launches_of_a_round()})
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--size",
        default="la",
        choices=list(SOURCES),
        help="LA cases (la: 1.25 mm, la-full: 0.625 mm), brain (240x240x155, small object) or phantoms S / L",
    )
    ap.add_argument("--data", default=None, help="LA folder (default: the shared data)")
    ap.add_argument("--cases", type=int, default=6)
    ap.add_argument("--steps", type=int, default=10, help="learning steps per round")
    ap.add_argument("--rounds", default="3,2", help="slices per round, e.g. 3,2")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="Markdown output (default benchmarks/results/round_<size>_<device>.md)")
    a = ap.parse_args(argv)
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    sizes = [int(x) for x in a.rounds.split(",")]
    recs = run_rounds(a.size, a.cases, a.steps, sizes, a.device, a.data)
    from conftest import machine_name  # benchmarks/conftest.py

    title = (
        f"Round latency: {a.size if a.size != 'la' else 'left-atrium cases'}, {a.cases} cases x "
        f"{len(sizes)} rounds ({a.rounds} slices), {a.steps} learning steps per round, device {a.device}, "
        f"{torch.get_num_threads()} threads, {machine_name()}, {_dt.date.today()}"
    )
    text = markdown(summarise(recs), title)
    print(text)
    out = Path(a.out) if a.out else ROOT / "benchmarks" / "results" / f"round_{a.size}_{a.device.split(':')[0]}.md"
    # the drawn masks are made before each timed round: the person's time is not the engine's
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(f"\nwritten {out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    raise SystemExit(main())
