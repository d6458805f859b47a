"""The report of a run folder, from hand-made logs: summary definitions, claims,
partial runs, every output file."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from engine.eval import report as R


def _case(i, fused, before, proxy, labor, slices=0.2, n=6, rounds=2):
    rows = [
        {
            "round": r + 1,
            "slices": [r],
            "proxy": proxy - 0.1 * (rounds - 1 - r),
            "model": before,
            "fused": fused - 0.05 * (rounds - 1 - r),
            "n_drawn": 3 * (r + 1),
            "effort_slices": slices * (r + 1) / rounds,
            "effort_labor": labor * (r + 1) / rounds,
            "seconds": 1.0,
            "timings_ms": {"learn": 10.0},
        }
        for r in range(rounds)
    ]
    return {
        "index": i,
        "name": f"c{i:02d}",
        "extent": [0, 9],
        "before": before,
        "proxy": proxy,
        "model": before,
        "fused": fused,
        "n_drawn": n,
        "object_slices": 30,
        "effort_slices": slices,
        "effort_labor": labor,
        "seconds": 2.0,
        "rounds": rows,
    }


def _folder(tmp_path: Path, finished=True) -> Path:
    n = 4
    cfg = {
        "name": "t",
        "n_train": n,
        "n_test": 2,
        "rounds": 2,
        "k": 3,
        "steps": 5,
        "eval_every": 2,
        "methods": ["ours", "proxy_even", "online_full", "ours_even", "proxy_guided", "offline_full"],
    }
    data = {"kind": "phantom", "where": "x", "axis": 0, "train": [f"c{i:02d}" for i in range(n)], "test": ["t0", "t1"]}
    (tmp_path / "config.json").write_text(json.dumps({"version": 1, "digest": "d", "stream": cfg, "data": data}))

    def write(name, cases, held, **extra):
        log = {
            "version": 1,
            "method": name,
            "digest": "d",
            "slot": None,
            "cases_done": len(cases),
            "finished": finished,
            "cases": cases,
            "heldout": held,
            "train_seconds": 1.0,
            **extra,
        }
        (tmp_path / name).mkdir()
        (tmp_path / name / "log.json").write_text(json.dumps(log))

    # second half = indices 2, 3
    write(
        "ours",
        [_case(i, f, 0.5, 0.85, 0.3) for i, f in enumerate([0.80, 0.82, 0.90, 0.92])],
        [
            {"cases_seen": 2, "dice": 0.70, "per_case": [0.7, 0.7]},
            {"cases_seen": 4, "dice": 0.80, "per_case": [0.8, 0.8]},
        ],
    )
    write(
        "ours_even",
        [_case(i, 0.9, 0.5, 0.86, 0.3) for i in range(n)],
        [{"cases_seen": 4, "dice": 0.79, "per_case": [0.79, 0.79]}],
    )
    write("proxy_even", [_case(i, 0.88, None, 0.88, 0.3) for i in range(n)], [])
    write("proxy_guided", [_case(i, 0.87, None, 0.87, 0.3) for i in range(n)], [])
    full = [
        {
            "index": i,
            "name": f"c{i:02d}",
            "before": 0.6,
            "proxy": None,
            "model": None,
            "fused": 1.0,
            "n_drawn": 30,
            "object_slices": 30,
            "effort_slices": 1.0,
            "effort_labor": 1.0,
            "seconds": 3.0,
            "rounds": [],
        }
        for i in range(n)
    ]
    write("online_full", full, [{"cases_seen": 4, "dice": 0.82, "per_case": [0.82, 0.82]}])
    write(
        "offline_full",
        [],
        [
            {"cases_seen": 2.0, "steps": 20, "dice": 0.8, "per_case": [0.8, 0.8]},
            {"cases_seen": 4.0, "steps": 40, "dice": 0.85, "per_case": [0.85, 0.85]},
        ],
        steps_done=40,
    )
    return tmp_path


def test_summary_definitions(tmp_path):
    run = R.load_run(_folder(tmp_path))
    s = R.summarize(run)
    assert list(s) == ["ours", "proxy_even", "online_full", "ours_even", "proxy_guided", "offline_full"]
    assert s["ours"]["fused_2nd"] == pytest.approx(0.91)  # cases 2 and 3 only
    assert s["ours"]["heldout_end"] == 0.80 and s["ours"]["effort_labor"] == pytest.approx(0.3)
    assert s["ours"]["rounds_2nd"][1]["fused"] == pytest.approx(0.86)
    assert s["ours"]["rounds_2nd"][2]["effort_labor"] == pytest.approx(0.3)
    assert s["proxy_even"]["before_2nd"] is None and s["proxy_even"]["heldout_end"] is None
    assert s["offline_full"]["heldout_end"] == 0.85 and s["offline_full"]["steps_done"] == 40
    assert s["offline_full"]["sec_per_case"] == pytest.approx(0.25)


def test_claims_are_checked_with_numbers(tmp_path):
    s = R.summarize(R.load_run(_folder(tmp_path)))
    text = "\n".join(R.claims(s))
    # 1: labor 0.3 <= 0.4 and held-out gap 0.82 - 0.80 = 0.02 <= 0.03
    assert "1. **holds**" in text and "+0.020" in text
    # 2: 0.91 - 0.88 = +0.03
    assert "2. **holds**" in text and "+0.030" in text
    assert "ours 0.910 vs ours_even 0.900" in text and "guided beats even" in text
    assert "proxy_guided 0.870 vs proxy_even 0.880" in text and "does not beat" in text
    s["ours"]["heldout_end"] = 0.70
    assert "1. **does not hold**" in "\n".join(R.claims(s))


def test_every_file_written_and_partial_runs_marked(tmp_path):
    out = _folder(tmp_path, finished=False)
    paths = R.write_report(out)
    names = {p.name for p in paths}
    assert names == {
        "results.json",
        "cases.csv",
        "rounds.csv",
        "heldout.csv",
        "dice_per_case.png",
        "dice_vs_effort.png",
        "heldout.png",
        "report.md",
    }
    for p in paths:
        assert p.stat().st_size > 0
    md = (out / "report.md").read_text()
    assert "partial" in md and "(running)" in md and "(at 4)" in md
    with open(out / "cases.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 * 4 and {r["method"] for r in rows} == {
        "ours",
        "ours_even",
        "proxy_even",
        "proxy_guided",
        "online_full",
    }
    with open(out / "heldout.csv") as f:
        held = list(csv.DictReader(f))
    assert [h["cases_seen"] for h in held if h["method"] == "offline_full"] == ["2.0", "4.0"]
    res = json.loads((out / "results.json").read_text())
    assert res["summary"]["ours"]["fused_2nd"] == pytest.approx(0.91)


def test_paired_differences(tmp_path):
    run = R.load_run(_folder(tmp_path))
    # second half: ours fused 0.90, 0.92 vs proxy_even 0.88, 0.88
    r = R.paired(run, "ours", "proxy_even")
    assert r["n"] == 2 and r["better"] == 2
    assert r["mean"] == pytest.approx(0.03) and r["se"] == pytest.approx(0.01)
    assert R.paired(run, "ours", "missing") is None
    R.write_report(tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "## Paired differences" in text and "| ours | proxy_even | +0.0300 | 0.0100 | 2 | 2 |" in text
