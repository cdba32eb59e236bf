"""Webhook delivery attempts against a real receiver on localhost and a real Redis: the
event a status change makes due, signatures, the retry policy, and the SSRF guard at delivery
time. (The webhook worker process around this is exercised end to end in tests/e2e.)"""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from scripts.receiver import Receiver
from shared import lifecycle
from shared.jobs import Job, JobStatus, WebhookSpec
from shared.keys import WEBHOOK_QUEUE, WEBHOOK_SCHEDULE, delivery_key, hooks_key
from shared.store import JobStore
from worker.settings import WebhookSettings
from worker.webhook_delivery import Deliverer

SECRET = "whsec_" + base64.b64encode(b"structq-test-secret-0123456789ab").decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"structq-old-secret-0123456789abc").decode()


@pytest.fixture
def receiver():
    with Receiver() as receiver:
        yield receiver


def _settings(redis_url: str, **extra) -> WebhookSettings:
    fields = {
        "webhook_secret": SECRET,
        "webhook_timeout_s": 1,
        "webhook_schedule_s": [0, 0.3, 0.3],
        "webhook_allowed_networks": ["127.0.0.0/8"],
        **extra,
    }
    return WebhookSettings(redis_url=redis_url, **fields)


def _due_delivery(redis_client, url: str, events=("completed",)) -> tuple[str, Job]:
    """A job with a webhook, cancelled while queued: its `completed` event is now due."""
    job = Job(
        id=f"j-{time.monotonic_ns()}",
        model="m",
        prompt="x",
        webhook=WebhookSpec(url=url, events=list(events)),
    )
    store = JobStore(redis_client, ttl_s=60)
    redis_client.hset(f"structq:job:{job.id}", mapping={"status": "queued", "job": "{}"})
    assert store.apply(lifecycle.cancel_queued(job, "test"))
    message = json.loads(redis_client.rpop(WEBHOOK_QUEUE))
    delivery_id = message["headers"]["id"]
    return delivery_id, job


def _attempts(redis_client, job_id: str) -> list[dict]:
    return [json.loads(raw) for raw in redis_client.lrange(hooks_key(job_id), 0, -1)]


def test_a_delivery_is_signed_and_verifies_and_a_change_breaks_it(
    redis_client, redis_url, receiver
):
    url = receiver.url("/ok")
    delivery_id, job = _due_delivery(redis_client, url)
    deliverer = Deliverer(redis_client, _settings(redis_url))
    assert deliverer.attempt(delivery_id) == "delivered"
    [got] = receiver.to("/ok")
    payload = Webhook(SECRET).verify(got.body, got.headers)
    assert payload["type"] == "job.completed"
    assert payload["data"]["id"] == job.id and payload["data"]["status"] == "cancelled"
    assert got.headers["webhook-id"] == delivery_id
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(got.body.replace(b"cancelled", b"cancelleD"), got.headers)
    stale = {**got.headers, "webhook-timestamp": str(int(time.time()) - 301)}
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(SECRET).verify(got.body, stale)
    [attempt] = _attempts(redis_client, job.id)
    assert (attempt["outcome"], attempt["status_code"], attempt["attempt"]) == ("delivered", 200, 1)
    # Delivered once: a re-delivered task message sends nothing.
    assert deliverer.attempt(delivery_id) is None
    assert len(receiver.to("/ok")) == 1


def test_during_a_rotation_both_secrets_sign(redis_client, redis_url, receiver):
    delivery_id, _ = _due_delivery(redis_client, receiver.url("/rotate"))
    until = datetime.now(UTC) + timedelta(hours=1)
    settings = _settings(
        redis_url, webhook_previous_secret=OLD_SECRET, webhook_previous_secret_until=until
    )
    Deliverer(redis_client, settings).attempt(delivery_id)
    [got] = receiver.to("/rotate")
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    Webhook(SECRET).verify(got.body, got.headers)
    Webhook(OLD_SECRET).verify(got.body, got.headers)


def test_500_500_200_is_three_attempts_under_one_webhook_id(redis_client, redis_url, receiver):
    delivery_id, job = _due_delivery(redis_client, receiver.url("/flaky", 500, 500, 200))
    deliverer = Deliverer(redis_client, _settings(redis_url))
    outcomes = [deliverer.attempt(delivery_id)]
    while outcomes[-1] == "retrying":
        # Not due before its backoff; then the scheduler's move puts it back on the queue.
        assert redis_client.zscore(WEBHOOK_SCHEDULE, delivery_id) > time.time()
        assert deliverer.move_due() == 0
        time.sleep(0.4)
        assert deliverer.move_due() == 1
        message = json.loads(redis_client.rpop(WEBHOOK_QUEUE))
        assert message["headers"]["id"].startswith(f"{delivery_id}~")
        outcomes.append(deliverer.attempt(delivery_id))
    assert outcomes == ["retrying", "retrying", "delivered"]
    got = receiver.to("/flaky")
    assert {r.headers["webhook-id"] for r in got} == {delivery_id}
    assert got[1].at - got[0].at >= 0.3 * 0.8 and got[2].at - got[1].at >= 0.3 * 0.8
    assert [a["status_code"] for a in _attempts(redis_client, job.id)] == [500, 500, 200]


def test_410_gives_up_at_once(redis_client, redis_url, receiver):
    delivery_id, job = _due_delivery(redis_client, receiver.url("/gone", 410))
    assert Deliverer(redis_client, _settings(redis_url)).attempt(delivery_id) == "gave_up"
    assert redis_client.zscore(WEBHOOK_SCHEDULE, delivery_id) is None
    assert redis_client.hget(delivery_key(delivery_id), "state") == b"gave_up"


def test_a_receiver_hanging_past_the_timeout_is_a_failed_attempt(redis_client, redis_url, receiver):
    delivery_id, job = _due_delivery(redis_client, receiver.url("/hang", "hang"))
    started = time.monotonic()
    assert Deliverer(redis_client, _settings(redis_url)).attempt(delivery_id) == "retrying"
    assert time.monotonic() - started < 3
    [attempt] = _attempts(redis_client, job.id)
    assert attempt["status_code"] is None and "timed out" in attempt["error"]


def test_the_schedule_running_out_gives_up(redis_client, redis_url, receiver):
    delivery_id, job = _due_delivery(redis_client, receiver.url("/down", 503))
    deliverer = Deliverer(redis_client, _settings(redis_url, webhook_schedule_s=[0]))
    assert deliverer.attempt(delivery_id) == "gave_up"


def test_a_host_that_now_resolves_private_is_not_sent_to(redis_client, redis_url, receiver):
    # Accepted while the allow-list held 127.0.0.0/8; the deployment no longer allows it.
    delivery_id, job = _due_delivery(redis_client, receiver.url("/private"))
    settings = _settings(redis_url, webhook_allowed_networks=[])
    assert Deliverer(redis_client, settings).attempt(delivery_id) == "gave_up"
    assert receiver.to("/private") == []
    [attempt] = _attempts(redis_client, job.id)
    assert "loopback" in attempt["error"]


def _started_then_completed(redis_client, url: str) -> tuple[str, str]:
    """A job with both events that was claimed and finished before any delivery was attempted
    (a short job): the ids of its `started` and `completed` deliveries, in that order."""
    job = Job(
        id=f"j-{time.monotonic_ns()}",
        model="m",
        prompt="x",
        webhook=WebhookSpec(url=url, events=["started", "completed"]),
    )
    store = JobStore(redis_client, ttl_s=60)
    redis_client.hset(f"structq:job:{job.id}", mapping={"status": "queued", "msg": "t1"})
    claim = lifecycle.claim(job, "w1", "t1")
    assert store.apply(claim)
    done = lifecycle.finish(claim.job, claim.new_run, status=JobStatus.SUCCEEDED)
    assert store.apply(done)
    messages = [json.loads(redis_client.rpop(WEBHOOK_QUEUE)) for _ in range(2)]
    return messages[0]["headers"]["id"], messages[1]["headers"]["id"]


def test_a_jobs_completed_event_waits_for_its_started_event(redis_client, redis_url, receiver):
    started, completed = _started_then_completed(redis_client, receiver.url("/order"))
    deliverer = Deliverer(redis_client, _settings(redis_url))
    # Taken first (two task threads race): it steps aside, with no attempt counted.
    assert deliverer.attempt(completed) == "waiting"
    assert receiver.to("/order") == []
    assert redis_client.zscore(WEBHOOK_SCHEDULE, completed) is not None
    assert deliverer.attempt(started) == "delivered"
    time.sleep(0.25)
    assert deliverer.move_due() == 1
    message = json.loads(redis_client.rpop(WEBHOOK_QUEUE))
    assert message["headers"]["id"].startswith(f"{completed}~")
    assert deliverer.attempt(completed) == "delivered"
    types = [json.loads(r.body)["type"] for r in receiver.to("/order")]
    assert types == ["job.started", "job.completed"]
    # The wait was no attempt: the delivery's first attempt is number 1.
    assert redis_client.hget(delivery_key(completed), "attempts") == b"1"


def test_a_failed_first_attempt_of_started_lets_completed_go(redis_client, redis_url, receiver):
    started, completed = _started_then_completed(redis_client, receiver.url("/down", 503))
    deliverer = Deliverer(redis_client, _settings(redis_url))
    assert deliverer.attempt(started) == "retrying"
    assert deliverer.attempt(completed) == "retrying"


def test_completed_waits_for_started_no_longer_than_a_request_timeout(
    redis_client, redis_url, receiver
):
    # The worker attempting `started` died mid-attempt: it stays `sending` until redelivered.
    started, completed = _started_then_completed(redis_client, receiver.url("/late"))
    redis_client.hset(delivery_key(started), "state", "sending")
    deliverer = Deliverer(redis_client, _settings(redis_url, webhook_timeout_s=1))
    outcomes = [deliverer.attempt(completed) for _ in range(40)]
    assert outcomes[:30] == ["waiting"] * 30  # 1 s + 5 s margin, 0.2 s a wait
    assert outcomes[30] == "delivered"
