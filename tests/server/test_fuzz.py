"""OpenAPI fuzzing (schemathesis, bounded): no generated request gets a 5xx."""

from __future__ import annotations

import pytest

import engine
from engine.server import Limits, create_app

from .conftest import tiny_case, tiny_config

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402

EXAMPLES = 10  # per operation (36 operations): a few hundred requests, ~30 s

_engine = engine.Engine(tiny_config())
_app = create_app(
    _engine, limits=Limits(max_voxels=4096, max_body_bytes=1 << 20, max_sessions=256, max_steps_per_call=3)
)
schema = schemathesis.openapi.from_asgi("/openapi.json", _app)
CALLS: list[tuple[str, int]] = []
_live: dict[str, str] = {}


def live_session() -> str:
    """An open session with two drawn slices, reopened when a fuzzed call closed it, so
    that generated requests reach the engine and not only the 404 of an unknown id."""
    from fastapi.testclient import TestClient

    from engine.server import codecs as C

    c = TestClient(_app)
    sid = _live.get("sid")
    if sid is None or c.get(f"/v1/sessions/{sid}").status_code != 200:
        image, label = tiny_case(0, shape=(8, 16, 16))
        r = c.post("/v1/sessions", params={"shape": "8,16,16"}, content=image.tobytes())
        sid = r.json()["session_id"]
        c.post(f"/v1/sessions/{sid}/slices", params={"indices": "2,5"}, content=C.encode_masks([label[2], label[5]]))
        _live["sid"] = sid
    return sid


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    if CALLS:
        worst = max(code for _, code in CALLS)
        from collections import Counter

        codes = dict(sorted(Counter(code for _, code in CALLS).items()))
        print(
            f"\nschemathesis: {len(CALLS)} requests over {len({op for op, _ in CALLS})} operations, "
            f"highest status {worst}, statuses {codes}"
        )


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@pytest.mark.filterwarnings("ignore")
def test_no_server_errors(case):
    if case.path_parameters and "sid" in case.path_parameters:
        case.path_parameters["sid"] = live_session()
    response = case.call()
    CALLS.append((case.operation.label, response.status_code))
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
    )
