"""The CSV tables and PNG plots of a stream run (:func:`engine.eval.report.write_report`
writes them beside ``report.md``): ``cases.csv``, ``rounds.csv``, ``heldout.csv``,
``dice_per_case.png``, ``dice_vs_effort.png`` and ``heldout.png``."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

__all__ = ["write_csvs", "write_plots"]


def write_csvs(run: dict[str, Any], out: Path) -> list[Path]:
    case_cols = [
        "method",
        "index",
        "name",
        "before",
        "proxy",
        "model",
        "fused",
        "n_drawn",
        "object_slices",
        "effort_slices",
        "effort_labor",
        "seconds",
        "accepted_after",
    ]
    round_cols = [
        "method",
        "index",
        "name",
        "round",
        "slices",
        "proxy",
        "model",
        "fused",
        "fusion_weight",
        "n_drawn",
        "effort_slices",
        "effort_labor",
        "seconds",
        "timings_ms",
    ]
    paths = [out / "cases.csv", out / "rounds.csv", out / "heldout.csv"]
    with (
        open(paths[0], "w", newline="") as fc,
        open(paths[1], "w", newline="") as fr,
        open(paths[2], "w", newline="") as fh,
    ):
        wc, wr, wh = csv.writer(fc), csv.writer(fr), csv.writer(fh)
        wc.writerow(case_cols)
        wr.writerow(round_cols)
        wh.writerow(["method", "cases_seen", "steps", "dice", "per_case"])
        for name, log in run["methods"].items():
            for c in log.get("cases", []):
                wc.writerow([name] + [c.get(k) for k in case_cols[1:]])
                for row in c.get("rounds", []):
                    wr.writerow(
                        [name, c["index"], c["name"]]
                        + [
                            " ".join(map(str, row[k]))
                            if k == "slices"
                            else json.dumps(row[k])
                            if k == "timings_ms"
                            else row.get(k)
                            for k in round_cols[3:]
                        ]
                    )
            for h in log.get("heldout", []):
                wh.writerow(
                    [
                        name,
                        h["cases_seen"],
                        h.get("steps"),
                        h["dice"],
                        " ".join(f"{x:.4f}" for x in h.get("per_case", [])),
                    ]
                )
    return paths


def _legend(ax, **kw) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, **kw)


def write_plots(run: dict[str, Any], summary: dict[str, dict[str, Any]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    names = list(run["methods"])
    cmap = plt.cm.tab10 if len(names) <= 10 else plt.cm.tab20
    colors = {n: cmap(i % cmap.N) for i, n in enumerate(names)}

    # 1. Dice per case
    fig, axes = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for n, log in run["methods"].items():
        cases = log.get("cases", [])
        if not cases:
            continue
        x = [c["index"] for c in cases]
        if any(c.get("fused") is not None for c in cases) and log.get("method", n) != "online_full":
            axes[0].plot(x, [c.get("fused") for c in cases], ".-", color=colors[n], label=n, lw=1)
        if any(c.get("before") is not None for c in cases):
            axes[1].plot(x, [c.get("before") for c in cases], ".-", color=colors[n], label=n, lw=1)
    axes[0].set_ylabel("fused Dice (final)")
    axes[0].set_title("Per stream case: front-end result after the last round")
    axes[1].set_ylabel("Dice before interaction")
    axes[1].set_title("Dynamic evaluation: back-end prediction before the case's first stroke")
    axes[1].set_xlabel("stream case")
    for a in axes:
        a.grid(alpha=0.3)
        _legend(a, ncol=3)
    fig.tight_layout()
    p = out / "dice_per_case.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    # 2. fused Dice against effort (per-round means over the second half)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for measure, ax in zip(("effort_labor", "effort_slices"), axes):
        for n, s in summary.items():
            rounds = s["rounds_2nd"]
            if rounds:
                xs = [v[measure] for v in rounds.values()]
                ys = [v["fused"] for v in rounds.values()]
                ax.plot(xs, ys, "o-", color=colors[n], label=n)
                for r, xx, yy in zip(rounds, xs, ys):
                    ax.annotate(f"r{r}", (xx, yy), fontsize=7, xytext=(3, -9), textcoords="offset points")
            elif s["fused_2nd"] is not None and s.get(measure) is not None and s[measure] < 1.0:
                ax.plot([s[measure]], [s["fused_2nd"]], "s", color=colors[n], label=n)
        ax.set_xlabel(
            {"effort_labor": "labor (boundary pixels drawn / all)", "effort_slices": "slices drawn / object slices"}[
                measure
            ]
        )
        ax.set_ylabel("fused Dice (mean, 2nd half)")
        ax.grid(alpha=0.3)
    _legend(axes[0])
    full = [n for n, s in summary.items() if s.get("effort_labor") == 1.0]
    if full:
        fig.text(
            0.5, 0.01, f"not shown: {', '.join(full)} (full labels: effort 1, fused Dice 1)", ha="center", fontsize=8
        )
    fig.suptitle("Final fused Dice against effort, after each round (second half of the stream)")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    p = out / "dice_vs_effort.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    # 3. held-out Dice against cases seen
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for n, log in run["methods"].items():
        held = log.get("heldout", [])
        if held:
            style = "s--" if log.get("steps_done") is not None and not log.get("cases") else "o-"
            ax.plot([h["cases_seen"] for h in held], [h["dice"] for h in held], style, color=colors[n], label=n)
    ax.set_xlabel("stream cases seen (offline: steps / steps per case)")
    ax.set_ylabel("held-out Dice (mean)")
    ax.set_title("Learning curve on the held-out split")
    ax.grid(alpha=0.3)
    _legend(ax)
    fig.tight_layout()
    p = out / "heldout.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    return paths
