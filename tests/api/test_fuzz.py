"""A fuzz run of the gateway's own OpenAPI spec (schemathesis): whatever it sends, the gateway
answers without a 500 (a 503/504 are documented outcomes: a full queue, a job not done in time).

The gateway runs in this process under uvicorn, on the test Redis, with keys and a compile
check, and no worker: jobs it accepts stay queued."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings

from api.auth import hash_key
from api.main import create_app
from api.settings import ApiKey, ApiSettings
from scripts.stack import free_port

KEY = "sq_fuzz-admin"


@pytest.fixture(scope="module")
def live_gateway(redis_url: str) -> Iterator[str]:
    app = create_app(
        ApiSettings(
            redis_url=redis_url,
            api_keys=[ApiKey(name="fuzz", sha256=hash_key(KEY), admin=True)],
            rate_limit_per_s=0,
            openai_wait_s=0.5,
            compile_timeout_s=2,
        )
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the gateway did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(15)


def test_no_request_makes_the_gateway_fail(live_gateway: str):
    schema = schemathesis.openapi.from_url(f"{live_gateway}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10  # the jobs, OpenAI-compatible, admin and health routes

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=int(os.environ.get("STRUCTQ_FUZZ_EXAMPLES", "12")),
            deadline=None,
            database=None,
            # The same examples on every run (CI included); STRUCTQ_FUZZ_RANDOM=1 explores.
            derandomize=not os.environ.get("STRUCTQ_FUZZ_RANDOM"),
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case) -> None:
            response = case.call(headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
            assert response.status_code < 500 or response.status_code in (503, 504), (
                case.method,
                case.path,
                response.status_code,
                response.text[:500],
            )
            assert "Traceback" not in response.text

        fuzz()
