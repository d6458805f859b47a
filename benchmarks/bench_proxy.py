"""Proxy-mask quality and speed on the real left-atrium cases (DESIGN §3, §5).

For each case (annotation axis 2, moved first: 44 slices of ~95x71 px) and each
k in {3, 5, 8}, the simulated annotator draws k slices evenly spaced over the object's
extent, including its first and last slice; the object's extent is known (those two
slices are drawn). Every method fills the slices in between, background outside the
extent, and is scored by the 3D Dice of its proxy (thresholded at 0.5) against the
full label over the whole volume:

* ``native linear`` / ``native nearest``: engine.propagate, native backend (batched
  demons) with linear / nearest contributor fusion;
* ``elastix linear`` / ``elastix nearest``: engine.propagate, elastix B-spline backend
  (on a subset of cases: ``--elastix-cases``, evenly spread over the evaluated ones);
* ``nearest copy``, ``signed distance``, ``ITK morph. contour``: engine.propagate.baselines.

Also reported: the 10th percentile of Dice over cases, the annotation effort (drawn /
object slices), the Dice of the unannotated slices in the outer 20 % of the object's
extent at each end (pooled per case, then averaged: the "low end" is the lower slice
index along axis 2, the "top end" the higher), and the time per case of every method,
all measured in this one run, side by side, on the machine named in the report.
Native time = normalisation + registration of all 43 pairs + one propagation (k=5,
linear); each case is timed ``--timing-repeats`` times (median per case, then
median over cases).

Script (writes benchmarks/results/proxy_<date>.md and prints it)::

    .venv/bin/python benchmarks/bench_proxy.py --cases 100 --elastix-cases 10

pytest-benchmark (a few cases; part of ``make bench``)::

    .venv/bin/python -m pytest benchmarks/bench_proxy.py --benchmark-only
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

KS = (3, 5, 8)
AXIS = 2
END_FRACTION = 0.2


# --- data and the simulated annotator ------------------------------------------------------


def load_case(case) -> tuple[np.ndarray, np.ndarray, tuple]:
    """(image, label, spacing) of an engine.io.Case."""
    return np.ascontiguousarray(case.image, dtype=np.float32), np.ascontiguousarray(case.label), tuple(case.spacing)


def object_extent(label: np.ndarray, axis: int = AXIS) -> tuple[int, int]:
    other = tuple(a for a in range(label.ndim) if a != axis)
    zs = np.nonzero((label != 0).any(axis=other))[0]
    return int(zs[0]), int(zs[-1])


def even_slices(lo: int, hi: int, k: int) -> list[int]:
    """k slices evenly spaced over [lo, hi], both ends included (fewer if the extent is short)."""
    if k <= 1 or hi == lo:
        return [lo]
    return sorted({int(round(lo + i * (hi - lo) / (k - 1))) for i in range(k)})


def drawn_volume(label: np.ndarray, slices: list[int], axis: int = AXIS) -> np.ndarray:
    d = np.zeros_like(label)
    idx = [slice(None)] * label.ndim
    idx[axis] = slices
    d[tuple(idx)] = label[tuple(idx)]
    return d


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    a, b = pred >= 0.5, gt != 0
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def end_zone_dice(
    pred: np.ndarray, gt: np.ndarray, lo: int, hi: int, slices: list[int], axis: int = AXIS
) -> tuple[float, float]:
    """Dice pooled over the unannotated slices of the outer END_FRACTION of [lo, hi] at the
    low and at the top end (nan when a zone holds no unannotated slice)."""
    n = max(1, int(round(END_FRACTION * (hi - lo + 1))))
    out = []
    for zone in (range(lo, lo + n), range(hi - n + 1, hi + 1)):
        zs = [z for z in zone if z not in slices]
        if not zs:
            out.append(float("nan"))
            continue
        p = np.take(pred, zs, axis=axis)
        g = np.take(gt, zs, axis=axis)
        out.append(dice(p, g))
    return out[0], out[1]


# --- methods ---------------------------------------------------------------------------------


def _baselines() -> dict[str, Callable]:
    from engine.propagate import baselines as B

    return {
        "nearest copy": B.nearest_slice_copy,
        "signed distance": B.signed_distance_interpolation,
        "ITK morph. contour": B.morphological_contour_interpolation,
    }


def run_registration_method(image, label, backend: str, params, ks=KS, repeats: int = 1, spacing=None):
    """Dice per (k, fusion) and per-stage seconds for one case with one backend."""
    import torch

    from engine.propagate import ProxyBuilder

    lo, hi = object_extent(label)
    res: dict = {"dice": {}, "ends": {}, "time": {}}
    totals, regs = [], []
    for _ in range(max(1, repeats)):
        pb = ProxyBuilder(image, axis=AXIS, backend=backend, extent=(lo, hi), params=params, spacing=spacing)
        t0 = time.perf_counter()
        pb.register()
        t1 = time.perf_counter()
        slices5 = even_slices(lo, hi, 5)
        pb.propagate(drawn_volume(label, slices5), slices5, fusion="linear")
        t2 = time.perf_counter()
        totals.append(t2 - t0)
        regs.append(t1 - t0)
    res["time"]["case"] = statistics.median(totals)
    res["time"]["register"] = statistics.median(regs)
    props = []
    for k in ks:
        slices = even_slices(lo, hi, k)
        drawn = drawn_volume(label, slices)
        for fusion in ("linear", "nearest"):
            t = time.perf_counter()
            out = pb.propagate(drawn, slices, fusion=fusion)
            props.append(time.perf_counter() - t)
            q = out.proxy.numpy() if isinstance(out.proxy, torch.Tensor) else out.proxy
            res["dice"][(k, fusion)] = dice(q, label)
            res["ends"][(k, fusion)] = end_zone_dice(q, label, lo, hi, slices)
    res["time"]["propagate"] = statistics.median(props)
    return res


def session_propagate_seconds(eng, image, label, spacing, repeats: int = 1) -> float:
    """The path users call: ``Session.propagate()`` (registration of the case + the
    proxy from 5 evenly spaced drawn slices) in a warm engine, median seconds."""
    lo, hi = object_extent(label)
    slices = even_slices(lo, hi, 5)
    times = []
    for _ in range(max(1, repeats)):
        s = eng.open(image, spacing=spacing, axis=AXIS)
        s.set_extent(lo, hi)
        for z in slices:
            s.annotate(z, np.take(label, z, axis=AXIS))
        t0 = time.perf_counter()
        s.propagate()
        times.append(time.perf_counter() - t0)
        s.close()
    return statistics.median(times)


def run_baselines(label, ks=KS):
    lo, hi = object_extent(label)
    res: dict = {}
    for name, fn in _baselines().items():
        d, e, ts = {}, {}, []
        for k in ks:
            slices = even_slices(lo, hi, k)
            drawn = drawn_volume(label, slices)
            t = time.perf_counter()
            q = fn(drawn, slices, axis=AXIS, extent=(lo, hi))
            ts.append(time.perf_counter() - t)
            d[k] = dice(q, label)
            e[k] = end_zone_dice(q, label, lo, hi, slices)
        res[name] = {"dice": d, "ends": e, "time": statistics.median(ts)}
    return res


# --- report ------------------------------------------------------------------------------------


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import torch

    return f"{model}, {os.cpu_count()} logical cores, torch {torch.__version__} with {torch.get_num_threads()} threads"


def loadavg() -> str:
    try:
        return " / ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "n/a"


def _mean(v):
    v = [x for x in v if not np.isnan(x)]
    return float(np.mean(v)) if v else float("nan")


def _p10(v):
    return float(np.percentile(v, 10)) if len(v) else float("nan")


def _fmt(x, nd=3):
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{nd}f}"


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data",
        type=Path,
        default=None,
        help="an LA folder (npz or h5 cases; default: engine.io.default_data_dir(), the 1.25 mm data; "
        "../shared/data/la_lgemri_2018_full for 0.625 mm)",
    )
    ap.add_argument("--cases", type=int, default=100, help="first N cases")
    ap.add_argument("--elastix-cases", type=int, default=10, help="elastix on this many cases spread evenly (0: none)")
    ap.add_argument("--timing-repeats", type=int, default=3, help="native timings per case (median taken)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument(
        "--out", type=Path, default=None, help="markdown report (default benchmarks/results/proxy_<date>.md)"
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a NativeParams field, e.g. --set sigma_field_mm=1.25 (repeatable)",
    )
    args = ap.parse_args(argv)

    import torch

    import engine
    from engine.io import CaseFolder, default_data_dir
    from engine.propagate import ElastixParams, NativeParams

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {}
    for item in args.set:
        key, _, val = item.partition("=")
        overrides[key] = (
            tuple(int(v) for v in val.split(","))
            if key == "iterations"
            else (val if key in ("force", "direction") else float(val) if "." in val else int(val))
        )
    nparams = NativeParams(**overrides)
    eparams = ElastixParams()
    data = args.data or default_data_dir()
    if data is None:
        print("no LA data: pass --data DIR", file=sys.stderr)
        return 2
    folder = CaseFolder(data, axis=AXIS)
    files = folder.names[: args.cases]
    n = len(files)
    ne = min(args.elastix_cases, n)
    ela_idx = set(np.linspace(0, n - 1, ne).round().astype(int).tolist()) if ne else set()
    load_start = loadavg()
    start = time.time()

    # warm-up: extension loading, first-call costs
    img0, lab0, sp0 = load_case(folder[files[0]])
    run_registration_method(img0, lab0, "native", nparams, ks=(3,), spacing=sp0)
    run_baselines(lab0, ks=(3,))
    eng = engine.Engine(engine.Config(device="cpu"))
    session_propagate_seconds(eng, img0, lab0, sp0)
    session_times = []

    rows: dict[str, dict] = {}

    def add(method, case, dice_by_k, ends_by_k, seconds):
        r = rows.setdefault(
            method,
            {
                "dice": {k: [] for k in KS},
                "low": {k: [] for k in KS},
                "top": {k: [] for k in KS},
                "time": [],
                "cases": [],
            },
        )
        for k in KS:
            r["dice"][k].append(dice_by_k[k])
            r["low"][k].append(ends_by_k[k][0])
            r["top"][k].append(ends_by_k[k][1])
        r["time"].append(seconds)
        r["cases"].append(case)

    effort = {k: [] for k in KS}
    native_reg, native_prop = [], []
    for i, f in enumerate(files):
        image, label, spacing = load_case(folder[f])
        lo, hi = object_extent(label)
        for k in KS:
            effort[k].append(len(even_slices(lo, hi, k)) / (hi - lo + 1))
        nat = run_registration_method(image, label, "native", nparams, repeats=args.timing_repeats, spacing=spacing)
        session_times.append(session_propagate_seconds(eng, image, label, spacing, repeats=args.timing_repeats))
        native_reg.append(nat["time"]["register"])
        native_prop.append(nat["time"]["propagate"])
        for fusion in ("linear", "nearest"):
            add(
                f"native {fusion}",
                i,
                {k: nat["dice"][(k, fusion)] for k in KS},
                {k: nat["ends"][(k, fusion)] for k in KS},
                nat["time"]["case"],
            )
        for name, b in run_baselines(label).items():
            add(name, i, b["dice"], b["ends"], b["time"])
        if i in ela_idx:
            ela = run_registration_method(image, label, "elastix", eparams)
            for fusion in ("linear", "nearest"):
                add(
                    f"elastix {fusion}",
                    i,
                    {k: ela["dice"][(k, fusion)] for k in KS},
                    {k: ela["ends"][(k, fusion)] for k in KS},
                    ela["time"]["case"],
                )
        print(
            f"[{i + 1}/{n}] {f}: native k3/5/8 "
            + " ".join(_fmt(nat["dice"][(k, "linear")]) for k in KS)
            + f"  {nat['time']['case'] * 1e3:.0f} ms  load {loadavg()}",
            flush=True,
        )
    elapsed = time.time() - start
    load_end = loadavg()

    # --- markdown -------------------------------------------------------------------------------
    date = _dt.date.today().isoformat()
    out = args.out or ROOT / "benchmarks" / "results" / f"proxy_{date}.md"
    L = []
    L.append(f"# Proxy mask from k drawn slices — {n} LA cases of {data.name} ({date})\n")
    L.append(
        f"Machine: {machine()}. Load average (1/5/15 min) at start {load_start}, at end {load_end} "
        f"(the CPU is shared: times are comparable within this run only). Wall time {elapsed / 60:.1f} min.\n"
    )
    command = [Path(sys.executable).name, "benchmarks/bench_proxy.py"] + (argv if argv is not None else sys.argv[1:])
    L.append(f"Command: `{' '.join(command)}`\n")
    L.append(f"Native parameters: `{nparams}`  \nElastix parameters: `{eparams}`\n")
    L.append(
        "Protocol: annotation axis 2; k slices evenly spaced over the object's extent incl. its first and "
        "last slice; extent known (background outside); 3D Dice over the whole volume, proxy >= 0.5. "
        f"Ends: Dice pooled over the unannotated slices of the outer {int(END_FRACTION * 100)} % of the "
        "extent (low end = lower index on axis 2). Elastix rows: "
        f"{ne} cases ({', '.join(str(c) for c in sorted(ela_idx))}).\n"
    )
    L.append(
        "Effort (drawn / object slices), mean over cases: "
        + ", ".join(f"k={k}: {np.mean(effort[k]):.3f}" for k in KS)
        + "\n"
    )
    L.append("## Dice (all evaluated cases per method)\n")
    L.append("| method | cases | " + " | ".join(f"k={k} mean | k={k} p10" for k in KS) + " | time / case (median) |")
    L.append("|---|---:|" + "---:|---:|" * len(KS) + "---:|")
    order = [
        "native linear",
        "native nearest",
        "elastix linear",
        "elastix nearest",
        "nearest copy",
        "signed distance",
        "ITK morph. contour",
    ]
    for m in order:
        if m not in rows:
            continue
        r = rows[m]
        L.append(
            f"| {m} | {len(r['cases'])} | "
            + " | ".join(f"{_fmt(_mean(r['dice'][k]))} | {_fmt(_p10(r['dice'][k]))}" for k in KS)
            + f" | {statistics.median(r['time']) * 1e3:.1f} ms |"
        )
    L.append("")
    L.append("## Ends: Dice of the unannotated slices near the object's two ends (mean over cases)\n")
    L.append("| method | " + " | ".join(f"k={k} low | k={k} top" for k in KS) + " |")
    L.append("|---|" + "---:|---:|" * len(KS))
    for m in order:
        if m not in rows:
            continue
        r = rows[m]
        L.append(
            f"| {m} | " + " | ".join(f"{_fmt(_mean(r['low'][k]))} | {_fmt(_mean(r['top'][k]))}" for k in KS) + " |"
        )
    L.append("")
    if ela_idx and "elastix linear" in rows:
        sub = sorted(ela_idx)
        nat = rows["native linear"]
        ela = rows["elastix linear"]
        L.append(f"## Same-case comparison on the {len(sub)} elastix cases\n")
        L.append("| method | " + " | ".join(f"k={k} mean" for k in KS) + " | time / case (median) |")
        L.append("|---|" + "---:|" * len(KS) + "---:|")
        for m in (
            "native linear",
            "native nearest",
            "elastix linear",
            "elastix nearest",
            "nearest copy",
            "signed distance",
            "ITK morph. contour",
        ):
            r = rows[m]
            pos = [r["cases"].index(c) for c in sub]
            L.append(
                f"| {m} | "
                + " | ".join(_fmt(_mean([r["dice"][k][p] for p in pos])) for k in KS)
                + f" | {statistics.median([r['time'][p] for p in pos]) * 1e3:.1f} ms |"
            )
        nat_t = statistics.median([nat["time"][nat["cases"].index(c)] for c in sub])
        ela_t = statistics.median(ela["time"])
        L.append(
            f"\nelastix / native time per case on these cases: {ela_t / nat_t:.0f}x "
            f"({ela_t:.2f} s vs {nat_t * 1e3:.0f} ms).\n"
        )
    L.append("## Native time per case, by stage (median over cases)\n")
    L.append(
        f"- normalise + register all pairs: {statistics.median(native_reg) * 1e3:.1f} ms "
        f"(p90 {np.percentile(native_reg, 90) * 1e3:.1f} ms)"
    )
    L.append(f"- one propagation (chains + fusion + outputs): {statistics.median(native_prop) * 1e3:.1f} ms")
    L.append(
        f"- register + one propagation: {statistics.median(rows['native linear']['time']) * 1e3:.1f} ms "
        f"(p90 {np.percentile(rows['native linear']['time'], 90) * 1e3:.1f} ms)"
    )
    L.append(
        f"- the path users call, `Session.propagate()` with its registration (5 drawn slices, warm engine): "
        f"{statistics.median(session_times) * 1e3:.1f} ms median (p90 "
        f"{np.percentile(session_times, 90) * 1e3:.1f} ms)\n"
    )
    text = "\n".join(L)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"written to {out}")
    return 0


# --- pytest-benchmark: a few cases, for `make bench` ------------------------------------------------


def _bench_cases(n: int = 3):
    from engine.io import la_folder

    folder = la_folder()
    return [load_case(folder[i]) for i in range(n)]


def _have_data() -> bool:
    from engine.io import default_data_dir

    return default_data_dir() is not None


try:
    import pytest
except ImportError:  # pragma: no cover - the script does not need pytest
    pytest = None

if pytest is not None:
    _needs_data = pytest.mark.skipif(not _have_data(), reason="no LA data (set DILSEG_DATA)")

    @pytest.fixture(scope="module")
    def la_cases():
        return _bench_cases(3)

    @_needs_data
    @pytest.mark.parametrize(
        "method", ["native register+propagate", "native propagate only", "nearest copy", "ITK morph. contour"]
    )
    def test_proxy_case(benchmark, ratios, la_cases, method):
        from engine.propagate import ProxyBuilder

        prepared = []
        for image, label, spacing in la_cases:
            lo, hi = object_extent(label)
            sl = even_slices(lo, hi, 5)
            prepared.append((image, label, (lo, hi), sl, drawn_volume(label, sl), spacing))
        if method == "native propagate only":
            builders = [ProxyBuilder(im, axis=AXIS, extent=ext, spacing=sp) for im, _, ext, _, _, sp in prepared]
            for b in builders:
                b.register()

            def fn():
                return [b.propagate(d, sl) for b, (_, _, _, sl, d, _) in zip(builders, prepared)]
        elif method == "native register+propagate":

            def fn():
                return [
                    ProxyBuilder(im, axis=AXIS, extent=ext, spacing=sp).propagate(d, sl)
                    for im, _, ext, sl, d, sp in prepared
                ]
        else:
            f = _baselines()[method]

            def fn():
                return [f(d, sl, axis=AXIS, extent=ext) for _, _, ext, sl, d, _ in prepared]

        benchmark.pedantic(fn, rounds=5, warmup_rounds=1)
        ratios.record(f"proxy, {len(prepared)} LA cases, k=5", method, benchmark, baseline="native register+propagate")


if __name__ == "__main__":
    raise SystemExit(main())
