"""`dilseg keys` and the refusals of `dilseg serve`."""

from __future__ import annotations

import json
import subprocess
import sys

from engine import cli
from engine.server.auth import KeyStore
from engine.server.cli import is_loopback

from .conftest import ROOT


def test_keys_add_prints_a_key_and_stores_only_its_hash(tmp_path, capsys):
    f = tmp_path / "keys.json"
    assert cli.main(["keys", "add", "ann", "--role", "annotator", "--file", str(f)]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("dsk_") and len(key) > 40
    text = f.read_text()
    assert key not in text
    entry = json.loads(text)["keys"][0]
    assert entry["name"] == "ann" and entry["role"] == "annotator" and len(entry["sha256"]) == 64
    assert (f.stat().st_mode & 0o777) == 0o600
    assert KeyStore.load(f).verify(key).name == "ann"
    assert KeyStore.load(f).verify(key[:-1] + "x") is None
    assert cli.main(["keys", "add", "ann", "--file", str(f)]) == 2  # names are unique
    assert cli.main(["keys", "add", "root", "--role", "admin", "--file", str(f)]) == 0
    capsys.readouterr()
    assert cli.main(["keys", "list", "--file", str(f)]) == 0
    assert "root\tadmin" in capsys.readouterr().out
    assert cli.main(["keys", "remove", "ann", "--file", str(f)]) == 0
    assert KeyStore.load(f).verify(key) is None


def test_serve_refuses_a_public_bind_without_keys(capsys):
    assert cli.main(["serve", "--host", "0.0.0.0", "--port", "9"]) == 2
    assert "refusing" in capsys.readouterr().err
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")


def test_serve_refuses_bad_limits(capsys):
    assert cli.main(["serve", "--limit", "max_nonsense=3"]) == 2
    assert cli.main(["serve", "--limit", "max_sessions=0"]) == 2


def test_cli_parser_imports_no_server_stack():
    code = (
        "import sys, engine.cli; engine.cli.build_parser(); "
        "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette', 'httpx') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=str(ROOT))
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
