"""Client and AsyncClient against a fake gateway: typed values, job handles, errors, retries."""

from __future__ import annotations

import asyncio
import enum
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import httpx
import pytest
from pydantic import BaseModel

import structq
from tests.client.fake import FakeGateway


class Character(BaseModel):
    name: str
    age: int
    skills: list[str]


@dataclass
class Person:
    name: str
    age: int
    skills: list[str]


class City(enum.Enum):
    PARIS = "Paris"
    ROME = "Rome"


def _sent(gw: FakeGateway, index: int = -1) -> dict:
    jobs = [r for r in gw.requests if r.method == "POST" and r.url.path == "/v1/jobs"]
    return json.loads(jobs[index].content)


def test_generate_returns_typed_values(client, gw):
    assert client.generate("Say hi", max_tokens=5) == "echo: Say hi"
    assert _sent(gw)["sampling"] == {"max_tokens": 5}
    assert client.generate("How many?", int) == 42
    assert client.generate("Pi?", float) == 3.14
    assert client.generate("Yes?", bool) is True
    assert client.generate("Capital?", Literal["Paris", "Rome"]) == "Rome"
    assert _sent(gw)["output_type"] == {"type": "choice", "choices": ["Paris", "Rome"]}
    assert client.generate("Capital?", City) is City.ROME
    character = client.generate([{"role": "user", "content": "Create a character."}], Character)
    assert isinstance(character, Character) and character.name == "Ada"
    assert _sent(gw)["messages"] == [{"role": "user", "content": "Create a character."}]
    assert _sent(gw)["output_type"]["schema"] == Character.model_json_schema()
    assert client.generate("Someone", Person) == Person("Ada", 36, ["math"])


def test_generate_sends_the_job_fields(client, gw):
    deadline = datetime(2030, 1, 1, tzinfo=UTC)
    client.generate(
        "x",
        model="m",
        metadata={"team": "a"},
        priority=2,
        deadline=deadline,
        webhook="https://example.com/hook",
        idempotency_key="k-1",
        temperature=0,
        stop=("a",),
    )
    request = [r for r in gw.requests if r.url.path == "/v1/jobs"][-1]
    assert request.headers["idempotency-key"] == "k-1"
    assert request.headers["prefer"] == "wait=60"
    body = json.loads(request.content)
    assert body["model"] == "m" and body["metadata"] == {"team": "a"} and body["priority"] == 2
    assert body["deadline"] == deadline.isoformat()
    assert body["webhook"] == {"url": "https://example.com/hook"}
    assert body["sampling"] == {"temperature": 0, "stop": ["a"]}
    with pytest.raises(ValueError, match="timezone"):
        client.generate("x", deadline=datetime(2030, 1, 1))
    with pytest.raises(TypeError, match="unknown sampling"):
        client.generate("x", temprature=0)


def test_every_submission_has_an_idempotency_key(client, gw):
    client.submit("a")
    client.submit("a")
    keys = [r.headers["idempotency-key"] for r in gw.requests if r.url.path == "/v1/jobs"]
    assert len(set(keys)) == 2 and all(keys)


def test_config_from_the_environment(monkeypatch, gw, sleeps):
    monkeypatch.setenv("STRUCTQ_URL", "http://env.test:9000/")
    monkeypatch.setenv("STRUCTQ_API_KEY", "sk-env")
    with structq.Client(transport=httpx.MockTransport(gw)) as client:
        assert client.base_url == "http://env.test:9000"
        client.generate("x")
    request = gw.requests[-1]
    assert request.url.host == "env.test" and request.url.port == 9000
    assert request.headers["authorization"] == "Bearer sk-env"
    with structq.Client(
        "http://arg.test", api_key="sk-arg", transport=httpx.MockTransport(gw)
    ) as c:
        c.generate("x")
    assert gw.requests[-1].headers["authorization"] == "Bearer sk-arg"


def test_job_handle(client, gw):
    gw.auto_finish = False
    job = client.submit("Pick", Literal["a", "b"], stream=True, timeout_s=30)
    assert _sent(gw)["stream"] is True and _sent(gw)["timeout_s"] == 30
    assert job.status == "queued" and not job.finished
    gw.finish(job.id)
    assert job.refresh().status == "succeeded"
    assert job.result() == "b"
    again = client.job(job.id, Literal["a", "b"])
    assert again.result() == "b"
    assert client.list_jobs().jobs[0].id == job.id


def test_wait_long_polls(client, gw):
    gw.auto_finish = False
    job = client.submit("x")
    reads = 0

    def finish_on_second_read(request: httpx.Request):
        nonlocal reads
        reads += 1
        if reads == 2:
            gw.finish(job.id)
        return None

    handler = gw.__call__
    gw_calls = []

    def spy(request):
        if request.method == "GET":
            gw_calls.append(request.url.params.get("wait"))
            finish_on_second_read(request)
        return handler(request)

    client._http._transport = httpx.MockTransport(spy)
    assert job.wait(timeout=300).status == "succeeded"
    assert gw_calls == ["60", "60"]


def test_wait_times_out(client, gw):
    gw.auto_finish = False
    job = client.submit("x")
    with pytest.raises(structq.JobTimeout) as caught:
        job.wait(timeout=0.05)
    assert caught.value.code == "timeout" and caught.value.retryable
    assert caught.value.job is not None and caught.value.job.status == "queued"


def test_cancel_retry_delete(client, gw):
    gw.auto_finish = False
    job = client.submit("x")
    assert job.cancel().status == "cancelled"
    with pytest.raises(structq.JobFailed) as caught:
        job.result()
    assert caught.value.code == "cancelled"
    gw.auto_finish = True
    assert job.retry().status == "succeeded" and job.record.retries == 1
    with pytest.raises(structq.ConflictError) as conflict:
        job.cancel()
    assert conflict.value.status == 409 and conflict.value.body["status"] == "succeeded"


def test_job_failure_is_an_exception_with_its_code(client, gw):
    gw.outcome = lambda body: ("failed", "output_truncated", "max_tokens reached")
    with pytest.raises(structq.JobFailed) as caught:
        client.generate("x", Character)
    error = caught.value
    assert error.code == "output_truncated" and not error.retryable
    assert error.message.endswith("max_tokens reached") and error.job.status == "failed"
    gw.outcome = lambda body: ("failed", "max_attempts_exceeded", "worker died")
    with pytest.raises(structq.JobFailed) as again:
        client.generate("x")
    assert again.value.retryable


def test_value_that_does_not_validate(client, gw):
    gw.outcome = lambda body: ("succeeded", "{}", {"name": 3})
    with pytest.raises(structq.OutputValidationError) as caught:
        client.generate("x", Character)
    assert caught.value.code == "output_invalid"


@pytest.mark.parametrize(
    ("status", "code", "kind", "retryable"),
    [
        (422, "invalid_request", structq.InvalidRequest, False),
        (401, "unauthorized", structq.AuthenticationError, False),
        (403, "forbidden", structq.PermissionDenied, False),
        (404, "job_not_found", structq.NotFound, False),
        (409, "conflict", structq.ConflictError, False),
        (429, "rate_limited", structq.RateLimited, True),
        (503, "queue_full", structq.ServiceUnavailable, True),
        (500, "internal_error", structq.ServerError, False),
    ],
)
def test_api_errors(client, gw, status, code, kind, retryable):
    detail = [{"loc": ["body", "prompt"], "msg": "empty", "type": "value_error"}]
    for _ in range(4):  # 429/503: the first try and every retry
        gw.can("/v1/jobs", status, {"error": {"code": code, "message": "nope"}, "detail": detail})
    with pytest.raises(kind) as caught:
        client.submit("x")
    error = caught.value
    assert isinstance(error, structq.APIError) and isinstance(error, structq.StructqError)
    assert (error.code, error.message, error.status, error.retryable) == (
        code,
        "nope",
        status,
        retryable,
    )
    assert error.detail == detail
    assert str(error) == f"[{code}] nope"


def test_retry_after_is_obeyed(client, gw, sleeps):
    gw.can(
        "/v1/jobs",
        429,
        {"error": {"code": "rate_limited", "message": "slow"}},
        {"Retry-After": "7"},
    )
    gw.can(
        "/v1/jobs", 503, {"error": {"code": "queue_full", "message": "full"}}, {"Retry-After": "2"}
    )
    assert client.generate("x") == "echo: x"
    assert sleeps == [7.0, 2.0]
    keys = {r.headers["idempotency-key"] for r in gw.requests if r.url.path == "/v1/jobs"}
    assert len(keys) == 1  # the same submission, retried


def test_retries_give_up(client, gw, sleeps):
    for _ in range(10):
        gw.can(
            "/v1/jobs",
            429,
            {"error": {"code": "too_many_queued", "message": "m"}},
            {"Retry-After": "5"},
        )
    with pytest.raises(structq.RateLimited) as caught:
        client.submit("x")
    assert caught.value.retry_after == 5.0 and caught.value.code == "too_many_queued"
    assert sleeps == [5.0, 5.0, 5.0]  # max_retries=3


def test_connection_errors(sleeps):
    attempts = 0

    def down(request):
        nonlocal attempts
        attempts += 1
        raise httpx.ConnectError("refused", request=request)

    transport = httpx.MockTransport(down)
    with (
        structq.Client("http://gw.test", transport=transport, max_retries=2) as c,
        pytest.raises(structq.APIConnectionError) as caught,
    ):
        c.generate("x")
    assert attempts == 3 and caught.value.retryable and caught.value.code == "connection_error"


def _sse(*events: tuple[str, object]) -> list[str]:
    return [f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events]


def test_stream_reconnects_without_repeating(client, gw):
    gw.auto_finish = False
    job = client.submit("story", stream=True)
    gw.finish(job.id)
    record = gw._public(gw.jobs[job.id])
    gw.stream_events = [
        [": keep-alive\n\n", *_sse(("delta", {"text": "Once "}), ("delta", {"text": "upon"}))]
        + ["event: timeout\ndata: {}\n\n"],
        _sse(("delta", {"text": "Once upon"}), ("delta", {"text": " a time"}), ("done", record)),
    ]
    assert list(job.stream()) == ["Once ", "upon", " a time"]
    assert job.status == "succeeded"


def test_a_stream_reset_raises_after_the_text_handed_out(client, gw):
    # A re-run wrote otherwise than what was streamed: the client cannot take text back.
    gw.auto_finish = False
    job = client.submit("story", stream=True)
    gw.stream_events = [_sse(("delta", {"text": "Once "}), ("reset", {}), ("delta", {"text": "A"}))]
    got = []
    with pytest.raises(structq.StreamReset) as caught:
        for text in job.stream():
            got.append(text)
    assert got == ["Once "]
    assert caught.value.job_id == job.id and caught.value.retryable


def test_async_client(aclient, gw, sleeps):
    async def main():
        async with aclient as client:
            character = await client.generate("c", Character)
            gw.auto_finish = False
            job = await client.submit("x", int)
            gw.finish(job.id)
            value = await job.result(timeout=10)
            gw.auto_finish = True
            gw.can(
                "/v1/jobs",
                429,
                {"error": {"code": "rate_limited", "message": "m"}},
                {"Retry-After": "3"},
            )
            text = await client.generate("y")
            gw.auto_finish = False
            other = await client.submit("z")
            await other.cancel()
            with pytest.raises(structq.JobFailed):
                await other.result()
            gw.finish(other.id)
            gw.stream_events = [
                _sse(("delta", {"text": "hi"}), ("done", gw._public(gw.jobs[other.id])))
            ]
            chunks = [c async for c in other.stream()]
            return character, value, text, chunks

    character, value, text, chunks = asyncio.run(main())
    assert isinstance(character, Character) and value == 42 and text == "echo: y"
    assert sleeps == [3.0] and chunks == ["hi"]


def test_deadline_as_a_timedelta_is_a_timeout(client, gw):
    client.generate("x", deadline=timedelta(seconds=5))
    assert _sent(gw)["timeout_s"] == 5.0 and "deadline" not in _sent(gw)
    with pytest.raises(ValueError, match="at most one"):
        client.generate("x", deadline=timedelta(seconds=5), timeout_s=3)
