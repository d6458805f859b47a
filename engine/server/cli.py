"""``dilseg serve`` and ``dilseg keys`` (registered by :mod:`engine.cli`; nothing
heavy is imported until a command runs)."""

from __future__ import annotations

import argparse
import ipaddress
import sys


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def add_serve_parser(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve one engine over HTTP (docs/server.md)",
        description="Serve one engine behind the /v1 HTTP API and a MONAI Label compatible subset.",
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--state", default=None, help="state folder: loaded at start, saved after every commit and at exit")
    p.add_argument("--keys", default=None, help="keys file from `dilseg keys add` (no file: no auth, loopback only)")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback bind without keys")
    p.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a limit (max_body_bytes, max_voxels, max_slices_per_request, max_steps_per_call, "
        "max_sessions, idle_timeout_s, lease_timeout_s, max_wait_s); repeatable",
    )
    p.add_argument("--device", default=None, help="engine device for a fresh engine (auto, cpu, cuda)")
    p.add_argument("--steps", type=int, default=None, help="default learning steps per round for a fresh engine")
    p.add_argument(
        "--web",
        nargs="?",
        const="",
        default=None,
        metavar="DIR",
        help="also serve the annotation page at /web/ (docs/web.md) from DIR "
        "(default: clients/web/dist of this checkout, built by `make web`)",
    )
    p.add_argument("--log-level", default="warning")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    if not is_loopback(args.host) and not args.keys and not args.insecure:
        print(
            f"dilseg serve: refusing to bind {args.host} (not loopback) without --keys; "
            "add keys with `dilseg keys add`, or pass --insecure",
            file=sys.stderr,
        )
        return 2
    from .limits import Limits

    try:
        limits = Limits.from_items(args.limit)
    except ValueError as exc:
        print(f"dilseg serve: {exc}", file=sys.stderr)
        return 2
    keys = None
    if args.keys:
        from .auth import KeyStore

        try:
            keys = KeyStore.load(args.keys)
        except ValueError as exc:
            print(f"dilseg serve: {exc}", file=sys.stderr)
            return 2
        if len(keys) == 0:
            print(f"dilseg serve: {args.keys} holds no key; every request but health will get 401", file=sys.stderr)
    web = None
    if args.web is not None:
        from .web import WebBuildMissing, check_dir

        try:
            web = check_dir(args.web or None)
        except WebBuildMissing as exc:
            print(f"dilseg serve --web: {exc}", file=sys.stderr)
            return 2
    import uvicorn

    from .. import errors as E
    from .app import create_app

    config = None
    if args.device or args.steps is not None:
        from ..api import Config

        config = Config()
        if args.device:
            config.device = args.device
        if args.steps is not None:
            config.steps = args.steps
    try:
        app = create_app(args.state, keys=keys, limits=limits, config=config, web=web)
    except E.DilsegError as exc:
        print(f"dilseg serve: {exc}", file=sys.stderr)
        return 2
    srv = app.state.srv
    print(
        f"dilseg serve: http://{args.host}:{args.port}  device {srv.engine.device}  "
        f"cases {srv.engine.counters['cases']}  state {args.state or '-'}  "
        f"auth {'on (' + str(len(keys)) + ' keys)' if keys is not None else 'off'}",
        flush=True,
    )
    if web is not None:
        print(f"dilseg serve: the annotation page is at http://{args.host}:{args.port}/web/", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=10)
    return 0


def add_keys_parser(sub) -> None:
    p = sub.add_parser("keys", help="manage the server's bearer keys")
    ks = p.add_subparsers(dest="keys_command", required=True)
    a = ks.add_parser("add", help="create a key; prints it once, stores only its hash")
    a.add_argument("name")
    a.add_argument("--role", choices=("annotator", "admin"), default="annotator")
    a.add_argument("--file", required=True, help="keys file (created, mode 0600)")
    a.set_defaults(func=_keys_add)
    ls = ks.add_parser("list", help="names and roles in a keys file")
    ls.add_argument("--file", required=True)
    ls.set_defaults(func=_keys_list)
    rm = ks.add_parser("remove", help="remove a key by name")
    rm.add_argument("name")
    rm.add_argument("--file", required=True)
    rm.set_defaults(func=_keys_remove)


def _keys_add(args: argparse.Namespace) -> int:
    from .auth import KeyStore

    try:
        store = KeyStore.load(args.file)
        token = store.add(args.name, args.role)
    except ValueError as exc:
        print(f"dilseg keys: {exc}", file=sys.stderr)
        return 2
    print(token)
    print(f"dilseg keys: {args.name} ({args.role}) added to {args.file}; the key is shown only now", file=sys.stderr)
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    from .auth import KeyStore

    try:
        store = KeyStore.load(args.file)
    except ValueError as exc:
        print(f"dilseg keys: {exc}", file=sys.stderr)
        return 2
    for e in store._entries:
        print(f"{e['name']}\t{e['role']}\t{e.get('created', '')}")
    return 0


def _keys_remove(args: argparse.Namespace) -> int:
    from .auth import KeyStore

    store = KeyStore.load(args.file)
    if not store.remove(args.name):
        print(f"dilseg keys: no key named {args.name!r}", file=sys.stderr)
        return 1
    return 0
