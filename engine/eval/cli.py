"""``dilseg run``: stream experiments from the command line.

    dilseg run --preset demo                     # what `make demo` runs
    dilseg run --preset paper --out runs/paper   # issue 7's experiment (long; resumable)
    dilseg run --preset paper --methods ours,online_full --out runs/paper
    dilseg run --preset demo --data DIR          # your own NIfTI/NRRD/MHA/npz/h5 cases
    dilseg run --report runs/paper               # rewrite the report of a folder

Interrupting a run and starting the same command again continues after the last
finished case. Methods may run as separate processes into one ``--out`` folder.
"""

from __future__ import annotations

import argparse
import ast
import sys
import time
from pathlib import Path

__all__ = ["add_run_parser", "run_command"]

_HIDDEN = ("tiny",)


def add_run_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``run`` sub-command to an ``argparse`` sub-parser collection."""
    from .presets import ALL_METHODS, PRESETS

    shown = [n for n in PRESETS if n not in _HIDDEN]
    p = subparsers.add_parser(
        "run",
        help="stream experiment with a simulated annotator (demo, paper)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--preset",
        default="demo",
        choices=list(PRESETS),
        metavar="{" + ",".join(shown) + "}",
        help="experiment preset (default: demo)",
    )
    p.add_argument(
        "--data",
        default=None,
        help="case folder (default: the shared LA data if found; demo: else a generated phantom stream)",
    )
    p.add_argument("--out", default=None, help="run folder (default: runs/<preset>-<data>)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 (default: auto)")
    p.add_argument(
        "--methods",
        default=None,
        help=f"comma-separated methods (default: the preset's); known: {', '.join(ALL_METHODS)}, "
        f"ours@RULE, proxy@RULE, *_accept, *_warm, *_fixed",
    )
    p.add_argument("--cases", type=int, default=None, help="stream cases (default: the preset's)")
    p.add_argument("--test-cases", type=int, default=None, help="held-out cases (default: the preset's)")
    p.add_argument("--steps", type=int, default=None, help="learning steps per round")
    p.add_argument("--axis", type=int, default=None, choices=(0, 1, 2), help="annotation axis of --data cases")
    p.add_argument(
        "--variant",
        default=None,
        metavar="SPEC",
        help="derive every case in code, e.g. thick:4 (4 slices averaged into one along the annotation axis)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override any StreamConfig field, e.g. --set k=[3,2] --set eval_every=5 --set learn={'base_width':16}",
    )
    p.add_argument("--report", default=None, metavar="DIR", help="only (re)write the report of a run folder")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's choice, or 1 when the machine is busy: "
        "OpenMP threads that wait for a core held by another process cost seconds per step)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_command)
    return p


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def build_config(args: argparse.Namespace):
    """The :class:`StreamConfig` the arguments describe."""
    from ..errors import InputError
    from .presets import StreamConfig, preset

    cfg = preset(args.preset)
    if args.data is not None:
        cfg.data = str(Path(args.data).resolve())
    if args.cases is not None:
        cfg.n_train = args.cases
        cfg.warm_cases = min(cfg.warm_cases, max(0, args.cases - 1))
    if args.test_cases is not None:
        cfg.n_test = args.test_cases
    if args.steps is not None:
        cfg.steps = args.steps
    if args.axis is not None:
        cfg.axis = args.axis
    if args.variant is not None:
        cfg.variant = args.variant
    names = {f for f in StreamConfig.__dataclass_fields__}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or key not in names:
            raise InputError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {sorted(names)}")
        v = _parse_value(value)
        if key == "phantom_shape":
            v = tuple(v)
        setattr(cfg, key, v)
    if args.methods:
        cfg.methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    return cfg


def run_command(args: argparse.Namespace) -> int:
    from ..errors import DilsegError

    try:
        if args.report:
            from .report import write_report

            for path in write_report(args.report):
                print(path)
            return 0
        return _run(args)
    except DilsegError as exc:
        print(f"dilseg run: {exc}", file=sys.stderr)
        return 2


def _threads(requested, device: str):
    """Torch CPU threads: as asked; else 1 on a CPU run when the load average already
    exceeds half the cores (measured on the shared 2-core machine: a training step took
    0.18 s with one thread and 5 s with two while other jobs ran); else torch's default."""
    import os

    if requested is not None:
        return max(1, int(requested))
    if device != "cpu":
        return None
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        return None
    if cores > 1 and load > cores / 2:
        print(f"threads: 1 (load average {load:.1f} on {cores} cores; --threads N to override)", flush=True)
        return 1
    return None


def _run(args: argparse.Namespace) -> int:
    import torch

    from .stream import load_stream_data, run_stream

    cfg = build_config(args)
    cfg.validate()
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    threads = _threads(args.threads, device)
    if threads is not None:
        torch.set_num_threads(threads)
    data = load_stream_data(cfg)
    if args.preset == "demo" and data.kind == "phantom":
        print(
            "demo: the shared left-atrium data was not found (use --data DIR or DILSEG_DATA); "
            "using a generated phantom stream",
            flush=True,
        )
    elif args.preset == "demo":
        print(f"demo: using the {data.kind} data in {data.where}", flush=True)
    suffix = "" if cfg.variant == "none" else "-" + cfg.variant.replace(":", "")
    out = Path(args.out) if args.out else Path("runs") / f"{cfg.name}-{data.kind}{suffix}"
    t0 = time.perf_counter()
    run_stream(cfg, out, device=device, progress=not args.no_progress)
    report = out / "report.md"
    if report.exists():
        text = report.read_text()
        start = text.find("## Headline")
        end = text.find("## Per round")
        print()
        print(text[start:end].strip() if start >= 0 else text)
    print(f"\nwall time {time.perf_counter() - t0:.0f}s; report: {report}")
    return 0
