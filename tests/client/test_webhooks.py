"""``verify_webhook`` against signatures made as the webhook worker makes them."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest

import structq
from shared.webhooks import sign

SECRET = "whsec_" + base64.b64encode(b"client-test-secret-0123456789abc").decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"the-previous-secret-0123456789ab").decode()

RECORD = {
    "id": "job-1",
    "status": "succeeded",
    "model": "SmolLM2-135M-Instruct",
    "prompt": "hi",
    "messages": None,
    "output_type": {"type": "text"},
    "sampling": {"max_tokens": 4},
    "metadata": {},
    "priority": 1,
    "created_at": "2025-01-01T00:00:00+00:00",
    "attempts": 1,
    "retries": 0,
    "result": {
        "text": "hello",
        "value": "hello",
        "finish_reason": "stop",
        "usage": {"prompt_tokens": 2, "completion_tokens": 1},
    },
    "error": None,
    "webhook_deliveries": [],
    "a_field_of_a_newer_gateway": 1,
}


def _delivery(body: str, at: datetime, secrets=(SECRET,), msg_id="msg_1") -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "Webhook-Id": msg_id,
        "Webhook-Timestamp": str(int(at.timestamp())),
        "Webhook-Signature": sign(list(secrets), msg_id, at, body),
    }


def _body(event_type="job.completed", data=RECORD) -> str:
    return json.dumps({"type": event_type, "timestamp": "2025-01-01T00:00:02+00:00", "data": data})


def test_a_signed_job_event_verifies():
    body = _body()
    now = datetime.now(UTC)
    event = structq.verify_webhook(body.encode(), _delivery(body, now), SECRET)
    assert isinstance(event, structq.JobEvent) and event.type == "job.completed"
    assert isinstance(event.data, structq.JobRecord)
    assert event.data.status == structq.JobStatus.SUCCEEDED and event.data.result.value == "hello"
    assert event.timestamp.year == 2025


def test_rotation_and_batch_events():
    body = _body("batch.completed", {"id": "batch_1", "status": "completed"})
    headers = _delivery(body, datetime.now(UTC), secrets=(SECRET, OLD_SECRET))
    event = structq.verify_webhook(body, headers, OLD_SECRET)
    assert isinstance(event, structq.BatchEvent) and event.data["id"] == "batch_1"
    assert structq.verify_webhook(body, headers, [b"nope", SECRET]).type == "batch.completed"


@pytest.mark.parametrize(
    "forge",
    [
        lambda body, headers: (body.replace("hello", "HELLO"), headers),
        lambda body, headers: (body, {**headers, "Webhook-Id": "msg_2"}),
        lambda body, headers: (
            body,
            {k: v for k, v in headers.items() if k != "Webhook-Signature"},
        ),
        lambda body, headers: (body, {**headers, "Webhook-Signature": "v1,AAAA"}),
        lambda body, headers: (body, {**headers, "Webhook-Timestamp": "soon"}),
    ],
)
def test_forged_or_changed_webhooks_are_refused(forge):
    body = _body()
    sent_body, headers = forge(body, _delivery(body, datetime.now(UTC)))
    with pytest.raises(structq.WebhookVerificationError) as caught:
        structq.verify_webhook(sent_body, headers, SECRET)
    assert caught.value.code == "invalid_signature"


def test_wrong_secret_and_stale_timestamps():
    body = _body()
    headers = _delivery(body, datetime.now(UTC))
    with pytest.raises(structq.WebhookVerificationError):
        structq.verify_webhook(body, headers, OLD_SECRET)
    for skew in (timedelta(minutes=-6), timedelta(minutes=6)):
        stale = _delivery(body, datetime.now(UTC) + skew)
        with pytest.raises(structq.WebhookVerificationError, match="too old or too new"):
            structq.verify_webhook(body, stale, SECRET)
    recent = _delivery(body, datetime.now(UTC) - timedelta(minutes=4))
    assert structq.verify_webhook(body, recent, SECRET).data.id == "job-1"


def test_a_signed_body_that_is_no_event():
    body = json.dumps({"hello": "world"})
    with pytest.raises(structq.WebhookVerificationError, match="not a structq event"):
        structq.verify_webhook(body, _delivery(body, datetime.now(UTC)), SECRET)
