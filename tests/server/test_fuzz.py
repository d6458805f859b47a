"""OpenAPI fuzzing (schemathesis, bounded): no generated request gets a 5xx."""

from __future__ import annotations

import pytest

import engine
from engine.server import Limits, create_app

from .conftest import tiny_config

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402

EXAMPLES = 10  # per operation (36 operations): a few hundred requests, ~30 s

_engine = engine.Engine(tiny_config())
_app = create_app(_engine, limits=Limits(max_voxels=4096, max_body_bytes=1 << 20, max_sessions=256))
schema = schemathesis.openapi.from_asgi("/openapi.json", _app)
CALLS: list[tuple[str, int]] = []


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    if CALLS:
        worst = max(code for _, code in CALLS)
        print(f"\nschemathesis: {len(CALLS)} requests over {len({op for op, _ in CALLS})} operations, "
              f"highest status {worst}")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@pytest.mark.filterwarnings("ignore")
def test_no_server_errors(case):
    response = case.call()
    CALLS.append((f"{case.method} {case.path}", response.status_code))
    assert response.status_code < 500, f"{case.method} {case.formatted_path} -> {response.status_code}: " \
                                       f"{response.text[:300]}"
