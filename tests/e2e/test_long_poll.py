"""Long-polling a job answers as soon as the worker has written its result."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.e2e.conftest import submit

pytestmark = pytest.mark.e2e


def test_long_poll_returns_within_100ms_of_completion(api):
    job_id = submit(api, {"prompt": "Tell me a story.", "sampling": {"max_tokens": 24}})
    response = api.get(f"/v1/jobs/{job_id}", params={"wait": 30})
    answered = datetime.now(UTC)
    job = response.json()
    assert job["status"] == "succeeded"
    finished = datetime.fromisoformat(job["finished_at"])
    assert 0 <= (answered - finished).total_seconds() < 0.1
