"""``dilseg`` command line.

dilseg info                         which backends loaded, and why others did not
dilseg run --preset demo|paper      the main job: a stream of cases with a simulated annotator
dilseg propagate IMAGE DRAWN -o P   proxy mask from a few drawn slices
dilseg data la2018 --to DIR         download + convert the public left-atrium data
dilseg serve [--host H] [--port P] [--state DIR] [--keys FILE] [--web]   the HTTP server (--web: the page)
dilseg keys add NAME --role annotator|admin --file FILE           a new server key
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


def _cmd_info(args: argparse.Namespace) -> int:
    import torch

    import engine

    print(f"dilseg {engine.__version__}  torch {torch.__version__}")
    for status in engine.backends().values():
        print(f"  {status}")
    from engine import _backends
    from engine.ops import backend_table

    cpu = _backends.load("cpu")
    if cpu is not None and hasattr(cpu, "cpu_isa"):
        print(f"  CPU vector kernels: {cpu.cpu_isa()}")
    print("  op                 backends                       serves CPU  serves CUDA")
    for name, row in backend_table().items():
        print(f"  {name:<18} {', '.join(row['backends']):<30} {row['cpu']:<11} {row['cuda']}")
    return 0


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="report the compute backends")
    p.set_defaults(func=_cmd_info)


def _add_run(sub) -> None:
    from .eval import cli as eval_cli

    eval_cli.add_run_parser(sub)


def _add_propagate(sub) -> None:
    from .propagate import cli as prop_cli

    prop_cli.add_parser(sub)


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="download public data sets")
    dsub = p.add_subparsers(dest="dataset", required=True)
    la = dsub.add_parser("la2018", help="2018 Atrial Segmentation Challenge (UA-MT preprocessing), halved")
    la.add_argument("--to", required=True, help="destination folder")
    la.add_argument("--cases", default=None, help="comma-separated case numbers (default: all 100)")
    la.add_argument("--base-url", default=None, help="override the download location (mirrors, tests)")
    la.add_argument("--timeout", type=float, default=60.0)

    def run(args: argparse.Namespace) -> int:
        from .errors import DilsegError
        from .io import download

        cases = [int(c) for c in args.cases.split(",")] if args.cases else None
        kwargs = {"cases": cases, "timeout": args.timeout}
        if args.base_url:
            kwargs["base_url"] = args.base_url
        try:
            written = download.download_la2018(args.to, **kwargs)
        except DilsegError as exc:
            print(f"dilseg data: {exc}", file=sys.stderr)
            return 2
        print(f"{len(written)} cases in {args.to}")
        return 0

    la.set_defaults(func=run)


def _add_server(sub) -> None:
    from .server import cli as server_cli  # argparse only: FastAPI loads when `serve` runs

    server_cli.add_serve_parser(sub)
    server_cli.add_keys_parser(sub)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="dilseg", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="command", required=True)
    _add_info(sub)
    _add_run(sub)
    _add_propagate(sub)
    _add_data(sub)
    _add_server(sub)
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
