"""Batches end to end: the real openai SDK's Files and Batch calls against the gateway, the
lines running as jobs on the real worker, the output and error files read back.

Every line of every batch must be answered exactly once, in one of the two files.
"""

from __future__ import annotations

import io
import json
import signal
import time
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from standardwebhooks import Webhook

from api.auth import hash_key
from scripts.receiver import Receiver
from shared.settings import DEFAULT_MODEL
from tests.e2e.conftest import NO_WORKERS, WEBHOOK_SECRET, restart_worker, submit, wait_for

pytestmark = pytest.mark.e2e

ALICE, BOB = "sq_batch-alice", "sq_batch-bob"

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def receiver():
    with Receiver() as receiver:
        yield receiver


def _batch_event(receiver: Receiver, path: str) -> dict[str, Any]:
    """The one signed event the batch's webhook got at ``path``."""
    [received] = receiver.wait(path, 1, timeout_s=30)
    time.sleep(1.0)
    assert receiver.to(path) == [received]  # once
    return Webhook(WEBHOOK_SECRET).verify(received.body, received.headers)


@pytest.fixture
def client(stack):
    with openai.OpenAI(base_url=f"{stack.api_url}/v1", api_key="unused") as c:
        yield c


def _jsonl(lines: list[Any]) -> bytes:
    return b"".join(
        (line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines
    )


def _chat_line(custom_id: str, text: str, max_tokens: int = 8) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": DEFAULT_MODEL,
            "messages": [{"role": "user", "content": text}],
            "max_tokens": max_tokens,
            "temperature": 0,
        },
    }


def _job_line(custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/jobs", "body": body}


def _finished(client: openai.OpenAI, batch_id: str, timeout_s: float = 240) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}: {batch}"
        time.sleep(0.5)


def _lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    text = client.files.content(file_id).read().decode()
    return [json.loads(line) for line in text.splitlines()]


def _answered_once(outputs: list[dict], errors: list[dict], custom_ids: list[str]) -> None:
    answered = [line["custom_id"] for line in outputs + errors]
    assert sorted(answered) == sorted(custom_ids), (answered, custom_ids)


def test_a_chat_batch_through_the_openai_sdk_answers_every_line_once(client):
    lines = [_chat_line(f"q{i}", f"Say the number {i}.") for i in range(4)]
    uploaded = client.files.create(file=("in.jsonl", io.BytesIO(_jsonl(lines))), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes == len(_jsonl(lines))
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"run": "e2e"},
    )
    assert batch.status == "validating" and batch.metadata == {"run": "e2e"}
    done = _finished(client, batch.id)
    assert done.status == "completed", done
    assert done.request_counts.total == 4 and done.request_counts.completed == 4
    assert done.error_file_id is None and done.completed_at >= done.in_progress_at
    outputs = _lines(client, done.output_file_id)
    _answered_once(outputs, [], [line["custom_id"] for line in lines])
    for line in outputs:
        assert line["error"] is None and line["response"]["status_code"] == 200
        body = line["response"]["body"]
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"]
        assert body["usage"]["completion_tokens"] <= 8
    assert batch.id in [b.id for b in client.batches.list()]
    with pytest.raises(openai.ConflictError, match="only a batch still running"):
        client.batches.cancel(batch.id)


def test_a_native_batch_with_a_schema_and_bad_lines(client, stack):
    body = {
        "prompt": "A person as JSON:",
        "output_type": {"type": "json_schema", "json_schema": PERSON},
        "sampling": {"max_tokens": 40, "temperature": 0},
    }
    good = [
        _job_line(f"p{i}", {**body, "sampling": {**body["sampling"], "seed": i}}) for i in range(3)
    ]
    bad: list[Any] = [
        b"{not json",
        _job_line("p0", body),  # duplicate custom_id
        _job_line("big", {**body, "sampling": {"max_tokens": 100_000}}),  # over the limit
        _job_line("unknown-model", {**body, "model": "no-such-model"}),
    ]
    bare = {**body, "custom_id": "bare"}  # a bare native body, custom_id beside its fields
    data = _jsonl([*good, *bad, b"", bare])
    uploaded = client.files.create(file=("jobs.jsonl", io.BytesIO(data)), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/jobs", completion_window="24h"
    )
    done = _finished(client, batch.id)
    assert done.status == "completed", done
    assert done.request_counts.total == 8
    assert done.request_counts.completed == 4 and done.request_counts.failed == 4
    outputs, errors = _lines(client, done.output_file_id), _lines(client, done.error_file_id)
    assert len(outputs) == 4 and len(errors) == 4
    for line in outputs:
        job = line["response"]["body"]
        assert job["status"] == "succeeded"
        jsonschema.validate(job["result"]["value"], PERSON)
        assert line["response"]["request_id"] == job["id"]
    by_id = {line["custom_id"]: line for line in errors}
    assert "not JSON" in by_id["line-4"]["error"]["message"]
    assert by_id["p0"]["error"]["code"] == "duplicate_custom_id"
    assert "max_tokens" in by_id["big"]["error"]["message"]
    assert "unknown model" in by_id["unknown-model"]["error"]["message"]
    # The same message a single request gets.
    single = httpx.post(
        f"{stack.api_url}/v1/jobs", json={**body, "sampling": {"max_tokens": 100_000}}
    )
    assert single.status_code == 422
    assert by_id["big"]["error"]["message"] in single.json()["error"]["message"]


def test_cancel_mid_batch_keeps_what_finished(client, api, receiver):
    lines = [_chat_line(f"run{i}", f"Count to {i}.") for i in range(2)]
    stuck = {  # a model no worker serves: these stay queued until cancelled
        **_chat_line("stuck", "x"),
    }
    stuck["body"] = {**stuck["body"], "model": NO_WORKERS}
    more = [{**stuck, "custom_id": f"stuck{i}"} for i in range(3)]
    uploaded = client.files.create(
        file=("c.jsonl", io.BytesIO(_jsonl(lines + more))), purpose="batch"
    )
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        extra_body={"webhook": {"url": receiver.url("/cancelled")}},
    )
    deadline = time.monotonic() + 120
    while client.batches.retrieve(batch.id).request_counts.completed < 2:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    done = _finished(client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at
    outputs, errors = _lines(client, done.output_file_id), _lines(client, done.error_file_id)
    _answered_once(outputs, errors, [line["custom_id"] for line in lines + more])
    assert {line["custom_id"] for line in outputs} == {"run0", "run1"}
    assert all(line["error"]["code"] == "cancelled" for line in errors), errors
    # The stuck lines' jobs were cancelled, not left queued.
    job_ids = [line["response"]["request_id"] for line in errors]
    assert all(j["status"] == "cancelled" for j in wait_for(api, job_ids).values())
    event = _batch_event(receiver, "/cancelled")
    assert event["type"] == "batch.cancelled"
    assert event["data"]["id"] == batch.id and event["data"]["status"] == "cancelled"
    assert event["data"]["output_file_id"] == done.output_file_id


def test_a_batch_past_its_window_expires_with_what_finished(client, receiver):
    stuck = _chat_line("late", "x")
    stuck["body"] = {**stuck["body"], "model": NO_WORKERS}
    uploaded = client.files.create(file=("e.jsonl", io.BytesIO(_jsonl([stuck]))), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="10s",
        extra_body={"webhook": {"url": receiver.url("/expired")}},
    )
    done = _finished(client, batch.id, timeout_s=60)
    assert done.status == "expired" and done.expired_at
    [error] = _lines(client, done.error_file_id)
    # Its job carried the batch's window as its deadline, and expired with it.
    assert error["custom_id"] == "late" and error["error"]["code"] == "expired"
    event = _batch_event(receiver, "/expired")
    assert event["type"] == "batch.expired" and event["data"]["error_file_id"] == done.error_file_id


def test_an_interactive_job_overtakes_a_running_batch(client, api):
    # More lines than the worker runs at once (STRUCTQ_MAX_INFLIGHT, 256), each a few tokens.
    body = {"prompt": "Hi", "sampling": {"max_tokens": 2, "ignore_eos": True}}
    total = 1000
    lines = [_job_line(f"b{i}", body) for i in range(total)]
    uploaded = client.files.create(file=("big.jsonl", io.BytesIO(_jsonl(lines))), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/jobs", completion_window="24h"
    )
    deadline = time.monotonic() + 120
    while client.batches.retrieve(batch.id).request_counts.completed < 1:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    job_id = submit(api, {"prompt": "Hi", "sampling": {"max_tokens": 2}})
    job = wait_for(api, [job_id])[job_id]
    assert job["status"] == "succeeded"
    progress = client.batches.retrieve(batch.id).request_counts
    # It did not wait behind the batch's queued lines: a worker's worth of them at most ran
    # before it, besides those already running.
    assert progress.completed <= total - 256, progress
    assert _finished(client, batch.id).request_counts.completed == total


def test_the_batch_webhook_is_signed_sent_once_and_shown(client, api, receiver):
    lines = [_chat_line(f"w{i}", "Hi") for i in range(2)]
    uploaded = client.files.create(file=("w.jsonl", io.BytesIO(_jsonl(lines))), purpose="batch")
    create = {"input_file_id": uploaded.id, "endpoint": "/v1/chat/completions"}
    # Checked when the batch is created, as a job's webhook is: where it points, which events.
    for webhook, problem in (
        ({"url": "http://169.254.169.254/latest"}, "webhook"),
        ({"url": receiver.url("/w"), "events": ["started"]}, "one event"),
    ):
        refused = api.post("/v1/batches", json={**create, "webhook": webhook})
        assert refused.status_code == 422 and problem in refused.text, refused.text
    batch = client.batches.create(
        **create, completion_window="24h", extra_body={"webhook": {"url": receiver.url("/w")}}
    )
    done = _finished(client, batch.id)
    assert done.status == "completed"
    event = _batch_event(receiver, "/w")
    assert event["type"] == "batch.completed"
    data = event["data"]
    assert data["id"] == batch.id and data["status"] == "completed"
    assert data["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
    assert data["output_file_id"] == done.output_file_id and "webhook" not in data
    deliveries = api.get(f"/v1/batches/{batch.id}").json()["webhook_deliveries"]
    assert [(d["event"], d["outcome"], d["status_code"]) for d in deliveries] == [
        ("batch.completed", "delivered", 200)
    ]


def test_a_worker_sigkilled_mid_batch_still_answers_every_line_once(client, stack):
    # Lengths spread over 4..63 tokens: some lines finish early, the rest are running.
    body = {"prompt": "Hi", "sampling": {"ignore_eos": True}}
    lengths = {f"k{i}": 4 + i % 60 for i in range(120)}
    lines = [
        _job_line(cid, {**body, "sampling": {**body["sampling"], "max_tokens": n}})
        for cid, n in lengths.items()
    ]
    uploaded = client.files.create(file=("k.jsonl", io.BytesIO(_jsonl(lines))), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/jobs", completion_window="24h"
    )
    deadline = time.monotonic() + 120
    while client.batches.retrieve(batch.id).request_counts.completed < 5:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert stack.stop_worker(signal.SIGKILL) == -signal.SIGKILL
    killed_at = client.batches.retrieve(batch.id).request_counts
    assert killed_at.completed < len(lines), "the batch finished before the kill"
    restart_worker(stack)
    done = _finished(client, batch.id, timeout_s=300)
    assert done.status == "completed", done
    assert done.request_counts.completed == len(lines) and done.error_file_id is None
    outputs = _lines(client, done.output_file_id)
    _answered_once(outputs, [], list(lengths))
    for line in outputs:  # each line's own tokens, once: no second run's tokens added
        usage = line["response"]["body"]["result"]["usage"]
        assert usage["completion_tokens"] == lengths[line["custom_id"]], line
    # The lines running when the worker died ran again (their second attempt), once.
    attempts = [line["response"]["body"]["attempts"] for line in outputs]
    assert max(attempts) == 2 and min(attempts) == 1, attempts


@pytest.fixture(scope="module")
def keyed(stack):
    keys = [
        {"name": name, "sha256": hash_key(key)} for name, key in (("alice", ALICE), ("bob", BOB))
    ]
    env = {
        "STRUCTQ_INSECURE_NO_AUTH": "false",
        "STRUCTQ_API_KEYS": json.dumps(keys),
        "STRUCTQ_FILE_MAX_BYTES": "4000",
        "STRUCTQ_FILE_MAX_LINES": "5",
    }
    _, url = stack.start_extra_gateway(env, name="gateway-batches")
    return url


def test_files_and_batches_belong_to_their_key_and_limits_hold(keyed):
    alice = openai.OpenAI(base_url=keyed + "/v1", api_key=ALICE)
    bob = openai.OpenAI(base_url=keyed + "/v1", api_key=BOB)
    data = _jsonl([_chat_line("a", "hi")])
    mine = alice.files.create(file=("a.jsonl", io.BytesIO(data)), purpose="batch")
    with pytest.raises(openai.NotFoundError):
        bob.files.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        bob.files.content(mine.id)
    with pytest.raises(openai.NotFoundError):
        bob.batches.create(
            input_file_id=mine.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    batch = alice.batches.create(
        input_file_id=mine.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    with pytest.raises(openai.NotFoundError):
        bob.batches.retrieve(batch.id)
    assert mine.id not in [f.id for f in bob.files.list()]
    assert mine.id in [f.id for f in alice.files.list()]
    # Limits: 413 past the size, 422 past the line count; nothing stored either way.
    with pytest.raises(openai.APIStatusError) as too_big:
        alice.files.create(file=("big.jsonl", io.BytesIO(b"x" * 5000)), purpose="batch")
    assert too_big.value.status_code == 413
    with pytest.raises(openai.UnprocessableEntityError, match="more than 5 lines"):
        alice.files.create(file=("many.jsonl", io.BytesIO(b"{}\n" * 6)), purpose="batch")
    with pytest.raises(openai.UnprocessableEntityError, match="purpose"):
        alice.files.create(file=("p.jsonl", io.BytesIO(data)), purpose="fine-tune")
    assert len(alice.files.list().data) == 1
    deleted = alice.files.delete(mine.id)
    assert deleted.deleted
    with pytest.raises(openai.NotFoundError):
        alice.files.retrieve(mine.id)
