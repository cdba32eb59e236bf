"""Jobs that fail at run time end `failed` with a reason; the worker and other jobs go on."""

from __future__ import annotations

import httpx
import pytest

from scripts.seed_jobs import CHARACTER_SCHEMA
from tests.e2e.conftest import run, submit, wait_for

pytestmark = pytest.mark.e2e


def test_engine_rejection_fails_that_job_and_the_next_one_succeeds(stack, api):
    # The gateway refuses a prompt longer than the context itself (tests/e2e/test_security.py);
    # one configured with a larger context than the worker serves lets it through to the
    # engine, which must reject it without harm to the next job.
    _, lax_url = stack.start_extra_gateway({"STRUCTQ_MAX_MODEL_LEN": "8192"}, name="gateway-lax")
    too_long = "word " * 3000  # longer than the worker's 2048-token context
    with httpx.Client(base_url=lax_url, timeout=30) as lax:
        rejected_id = submit(lax, {"prompt": too_long, "sampling": {"max_tokens": 4}})
    next_id = submit(api, {"prompt": "Hello", "sampling": {"max_tokens": 4}})
    jobs = wait_for(api, [rejected_id, next_id])
    rejected = jobs[rejected_id]
    assert rejected["status"] == "failed"
    assert rejected["error"]["code"] == "engine_rejected"
    assert "maximum context length" in rejected["error"]["message"]
    assert rejected["finished_at"]
    assert jobs[next_id]["status"] == "succeeded"


def test_structured_output_cut_by_max_tokens_fails_as_truncated(api):
    job = run(
        api,
        {
            "prompt": "Create a character.",
            "output_type": {"type": "json_schema", "schema": CHARACTER_SCHEMA},
            "sampling": {"max_tokens": 4},
        },
    )
    assert job["status"] == "failed"
    assert job["error"]["code"] == "output_truncated"
    assert job["error"]["text"].startswith("{")
    assert job["result"] is None


def test_worker_keeps_serving_after_failures(api):
    job = run(api, {"prompt": "Hi", "sampling": {"max_tokens": 3}})
    assert job["status"] == "succeeded"
