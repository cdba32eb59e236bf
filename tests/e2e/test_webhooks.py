"""Webhooks end to end: jobs through the real stack, a real webhook worker process, and a
real HTTP receiver on localhost (allowed by the stack's STRUCTQ_WEBHOOK_ALLOWED_NETWORKS)."""

from __future__ import annotations

import signal
import time

import pytest
from standardwebhooks import Webhook

from scripts.receiver import Receiver
from tests.e2e.conftest import NO_WORKERS, WEBHOOK_SECRET, run, submit

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def receiver():
    with Receiver() as receiver:
        yield receiver


def _verified(received) -> dict:
    return Webhook(WEBHOOK_SECRET).verify(received.body, received.headers)


def test_completed_arrives_signed_with_the_result_and_started_only_when_asked(api, receiver):
    body = {
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "output_type": {"type": "choice", "choices": ["Paris", "London"]},
        "sampling": {"max_tokens": 16},
    }
    plain = run(api, {**body, "webhook": {"url": receiver.url("/plain")}})
    both = run(
        api,
        {**body, "webhook": {"url": receiver.url("/both"), "events": ["started", "completed"]}},
    )
    assert plain["status"] == both["status"] == "succeeded", (plain["error"], both["error"])
    [completed] = receiver.wait("/plain", 1)
    payload = _verified(completed)
    assert payload["type"] == "job.completed"
    assert payload["data"]["id"] == plain["id"]
    assert payload["data"]["result"]["value"] == plain["result"]["value"]
    started, finished = receiver.wait("/both", 2)
    assert [_verified(r)["type"] for r in (started, finished)] == ["job.started", "job.completed"]
    assert _verified(started)["data"]["status"] == "running"
    assert receiver.to("/plain") == [completed]  # no `started` when not asked for
    # The job shows its delivery.
    deliveries = api.get(f"/v1/jobs/{plain['id']}").json()["webhook_deliveries"]
    assert [(d["event"], d["outcome"], d["status_code"]) for d in deliveries] == [
        ("completed", "delivered", 200)
    ]


def test_500_500_200_is_three_attempts_with_one_webhook_id(api, receiver):
    url = receiver.url("/flaky", 500, 500, 200)
    job_id = submit(api, {"prompt": "x", "model": NO_WORKERS, "webhook": {"url": url}})
    assert api.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    got = receiver.wait("/flaky", 3, timeout_s=30)
    assert len({r.headers["webhook-id"] for r in got}) == 1
    assert all(later.at - earlier.at >= 1.5 for earlier, later in zip(got, got[1:], strict=False))
    deliveries = _deliveries(api, job_id, 3)
    assert [d["status_code"] for d in deliveries] == [500, 500, 200]
    assert [d["outcome"] for d in deliveries] == ["retrying", "retrying", "delivered"]


def test_a_retry_survives_a_killed_webhook_worker(stack, api, receiver):
    url = receiver.url("/restart", 500, 200)
    job_id = submit(api, {"prompt": "x", "model": NO_WORKERS, "webhook": {"url": url}})
    api.post(f"/v1/jobs/{job_id}/cancel")
    [first] = receiver.wait("/restart", 1)
    _deliveries(api, job_id, 1)  # the failed attempt is recorded: the retry is scheduled
    stack.webhooks.proc.send_signal(signal.SIGKILL)
    assert stack.webhooks.proc.wait(30) == -signal.SIGKILL
    stack.start_webhooks()
    first_again, second = receiver.wait("/restart", 2, timeout_s=30)
    assert second.headers["webhook-id"] == first.headers["webhook-id"]
    assert [d["outcome"] for d in _deliveries(api, job_id, 2)] == ["retrying", "delivered"]


def _deliveries(api, job_id: str, count: int) -> list[dict]:
    """The job's recorded attempts, once there are ``count``."""
    deadline = time.monotonic() + 30
    while True:
        deliveries = api.get(f"/v1/jobs/{job_id}").json()["webhook_deliveries"]
        if len(deliveries) >= count:
            return deliveries
        assert time.monotonic() < deadline, deliveries
        time.sleep(0.05)
