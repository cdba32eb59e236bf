"""``GET /v1/jobs/{id}/stream``: a job's output as server-sent events, token by token."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.e2e.conftest import submit

pytestmark = pytest.mark.e2e


def _events(api: httpx.Client, job_id: str) -> list[tuple[str, dict]]:
    events = []
    with api.stream("GET", f"/v1/jobs/{job_id}/stream") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
    return events


def test_a_streaming_job_sends_deltas_then_its_record(api):
    job_id = submit(
        api,
        {
            "prompt": "Once upon a time",
            "stream": True,
            "sampling": {"max_tokens": 24, "ignore_eos": True, "seed": 1},
        },
    )
    events = _events(api, job_id)
    deltas = [data["text"] for name, data in events if name == "delta"]
    name, job = events[-1]
    assert name == "done" and job["status"] == "succeeded"
    assert len(deltas) > 3 and "".join(deltas) == job["result"]["text"]


def test_a_job_submitted_without_stream_sends_its_text_at_the_end(api):
    job_id = submit(api, {"prompt": "Hello", "sampling": {"max_tokens": 8, "ignore_eos": True}})
    events = _events(api, job_id)
    assert [name for name, _ in events] == ["delta", "done"]
    assert events[0][1]["text"] == events[1][1]["result"]["text"]


def test_streaming_an_unknown_job_is_a_404(api):
    assert api.get("/v1/jobs/no-such-job/stream").status_code == 404
