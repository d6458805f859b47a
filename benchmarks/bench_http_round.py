"""A round in process vs. the same round through dilseg-client on loopback (issue 14).

Two engines built from the same ``Config`` (same seed) take the same calls on the
same real left-atrium cases, so they hold the same weights and do the same work;
only the path differs:

* in process: ``annotate`` x k -> ``propagate`` -> ``learn(N)`` -> ``result`` -> ``propose(k')``
* HTTP: ``RemoteSession.round(indices, masks, steps=N, k=k')`` -- one request to a
  ``dilseg serve`` process on 127.0.0.1 (masks in as packed bits, the result back as
  the changed bounding box, gzip).

Rounds are interleaved (in process, then HTTP, for every round) so drift hits both;
the table gives p50/p95 of each path and of the paired per-round difference.

    .venv/bin/python benchmarks/bench_http_round.py --cases 4 --steps 10
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "clients" / "python"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(xs, q):
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--sizes", default="3,2", help="slices drawn per round")
    ap.add_argument("--data", default=None, help="LA folder (default: ../shared/data/la_lgemri_2018_half)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "http_round_la_cpu.md"))
    args = ap.parse_args(argv)
    sizes = [int(v) for v in args.sizes.split(",")]

    import engine
    from dilseg_client import RemoteEngine
    from engine.io import la_folder
    from engine.server import StateDir

    cfg = engine.Config(device="cpu")
    load0 = os.getloadavg()[0]
    folder = la_folder(args.data)
    tmp = Path(tempfile.mkdtemp(prefix="dilseg-bench-http-"))
    StateDir(tmp / "state").save(engine.Engine(cfg))  # the served engine: the same config and seed
    local = engine.Engine(cfg)
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "serve",
            "--port",
            str(port),
            "--state",
            str(tmp / "state"),
            "--log-level",
            "error",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        remote = RemoteEngine(url)
        for _ in range(600):
            try:
                remote.ping()
                break
            except engine.errors.DilsegError:
                pass
            except Exception:  # noqa: BLE001
                pass
            time.sleep(0.1)
        ping = [remote.ping() for _ in range(20)]
        for ci in range(min(args.cases, len(folder))):
            case = folder[ci]
            image, label = case.image, case.label
            zs = np.nonzero(label.any((0, 1)))[0]
            first, last = int(zs[0]), int(zs[-1])
            a = local.open(image, spacing=case.spacing, axis=2)
            b = remote.open(image, spacing=case.spacing, axis=2)
            a.set_extent(first, last)
            b.set_extent(first, last)
            picks = a.propose(sizes[0])
            assert b.propose(sizes[0]) == picks
            for r in range(len(sizes)):
                k_next = sizes[r + 1] if r + 1 < len(sizes) else 0
                masks = [label[:, :, z] for z in picks]
                t0 = time.perf_counter()
                for z, m in zip(picks, masks):
                    a.annotate(z, m)
                a.propagate()
                a.learn(args.steps)
                res_a = a.result()
                nxt_a = a.propose(k_next) if k_next else []
                t_in = (time.perf_counter() - t0) * 1e3
                t0 = time.perf_counter()
                res_b, nxt_b = b.round(picks, masks, steps=args.steps, k=k_next)
                t_http = (time.perf_counter() - t0) * 1e3
                assert np.array_equal(res_a, res_b) and nxt_a == nxt_b, "the two paths diverged"
                server_ms = b.timings["round"].get("server_ms", float("nan"))
                rows.append({"case": case.name, "round": r + 1, "inproc": t_in, "http": t_http, "server": server_ms})
                print(
                    f"{case.name} round {r + 1}: in process {t_in:7.1f} ms, HTTP round {t_http:7.1f} ms "
                    f"(server {server_ms:7.1f} ms), diff {t_http - t_in:+6.1f} ms",
                    flush=True,
                )
                picks = nxt_a
            a.commit()
            b.commit()
        remote.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        local.close()
        shutil.rmtree(tmp, ignore_errors=True)

    inp = [r["inproc"] for r in rows]
    htp = [r["http"] for r in rows]
    diff = [r["http"] - r["inproc"] for r in rows]
    srv = [r["server"] for r in rows]
    own = [h - v for h, v in zip(htp, srv)]
    import torch

    lines = [
        f"# HTTP round vs. in process — {_dt.date.today().isoformat()}",
        "",
        f"`.venv/bin/python benchmarks/bench_http_round.py --cases {args.cases} --steps {args.steps} "
        f"--sizes {args.sizes}`",
        "",
        f"{len(rows)} rounds on {min(args.cases, len(folder))} real LA cases (axis 2), rounds of {args.sizes} slices, "
        f"{args.steps} learning steps, default `Config` on the CPU ({os.cpu_count()} cores, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads); the server is a `dilseg serve` process on "
        f"127.0.0.1, the client `dilseg_client` (httpx); both paths give identical masks and proposals. "
        f"Health-check round trip: p50 {_pct(ping, 50):.2f} ms.",
        "",
        "| path | p50 | p95 |",
        "|---|---|---|",
        f"| in process (`annotate`×k, `propagate`, `learn`, `result`, `propose`) | {_pct(inp, 50):.0f} ms | "
        f"{_pct(inp, 95):.0f} ms |",
        f"| HTTP, one request (`RemoteSession.round`) | {_pct(htp, 50):.0f} ms | {_pct(htp, 95):.0f} ms |",
        f"| of which inside the server's round handler | {_pct(srv, 50):.0f} ms | {_pct(srv, 95):.0f} ms |",
        f"| **difference HTTP − in process, per round (paired)** | **{_pct(diff, 50):+.1f} ms** | "
        f"{_pct(diff, 95):+.1f} ms |",
        f"| difference of the p50s | {_pct(htp, 50) - _pct(inp, 50):+.1f} ms | |",
        f"| HTTP round − the server's own handler time (transport, codecs, client) | "
        f"{_pct(own, 50):+.1f} ms | {_pct(own, 95):+.1f} ms |",
        "",
        f"Load average (1 min) at start / end: {load0:.2f} / {os.getloadavg()[0]:.2f} (the 2-core machine is shared; "
        "the paired difference carries the noise of two separate learning runs, the last row does not).",
        "",
        "| case | round | in process | HTTP | server | diff |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['case']} | {r['round']} | {r['inproc']:.0f} ms | {r['http']:.0f} ms | {r['server']:.0f} ms | "
        f"{r['http'] - r['inproc']:+.1f} ms |"
        for r in rows
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
