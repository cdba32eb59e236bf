"""The stream relay against real Redis: a delta a worker wrote twice (its reply lost, the write
retried) is relayed once, and after a gap (a delta never written) no more deltas are relayed,
so what the client got stays a prefix of the final text, which the relay then completes."""

from __future__ import annotations

import asyncio
import json

import redis
import redis.asyncio as aioredis

from api.streams import Delta, Finished, Reset, job_events, relay
from shared import lifecycle
from shared.async_store import AsyncJobStore
from shared.jobs import Job, JobResult, JobStatus, Usage
from shared.keys import job_key, stream_key
from shared.store import JobStore


def _finished_job(client: redis.Redis, text: str) -> str:
    store = JobStore(client, 100)
    store.create(Job(id="s", model="m", prompt="x", stream=True))
    tag = client.hget(job_key("s"), "msg").decode()
    claim = lifecycle.claim(store.get("s"), "w", tag)
    assert store.apply(claim)
    result = JobResult(
        text=text,
        value=text,
        finish_reason="stop",
        usage=Usage(prompt_tokens=1, completion_tokens=1),
    )
    done = lifecycle.finish(claim.job, claim.new_run, status=JobStatus.SUCCEEDED, result=result)
    assert store.apply(done)
    return claim.new_run


def test_duplicates_are_skipped_and_a_gap_ends_the_deltas(redis_client, redis_url) -> None:
    run = _finished_job(redis_client, "abcdefgh")
    for n, text in [(1, "ab"), (1, "ab"), (2, "cd"), (4, "gh")]:  # 3 ("ef") was never written
        redis_client.xadd(stream_key("s"), {"a": run, "d": text, "n": n})

    async def relayed() -> tuple[list[object], list[str]]:
        client = aioredis.from_url(redis_url)
        store = AsyncJobStore(client, ttl_s=100)
        try:
            events = [e async for e in relay(client, store, ["s"], timeout_s=5, poll_s=0.2)]
            sse = [e async for e in job_events(client, store, "s", 5, 60)]
        finally:
            await client.aclose()
        return events, sse

    events, sse = asyncio.run(relayed())
    assert [e.text for e in events if isinstance(e, Delta)] == ["ab", "cd"]
    [finished] = [e for e in events if isinstance(e, Finished)]
    assert finished.relayed == "abcd"
    # As server-sent events: the relayed deltas, the rest of the final text, then done.
    deltas = [line for line in "".join(sse).splitlines() if line.startswith('data: {"text"')]
    assert deltas == ['data: {"text": "ab"}', 'data: {"text": "cd"}', 'data: {"text": "efgh"}']


def _relay_all(redis_url: str) -> tuple[list[object], str]:
    async def go() -> tuple[list[object], str]:
        client = aioredis.from_url(redis_url)
        store = AsyncJobStore(client, ttl_s=100)
        try:
            events = [e async for e in relay(client, store, ["s"], timeout_s=5, poll_s=0.2)]
            sse = "".join([e async for e in job_events(client, store, "s", 5, 60)])
        finally:
            await client.aclose()
        return events, sse

    return asyncio.run(go())


def _client_text(sse: str) -> tuple[str, int]:
    """What a client that honours `reset` ends up with, and how many resets it saw."""
    text, resets, name = "", 0, None
    for line in sse.splitlines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
            if name == "reset":
                text, resets = "", resets + 1
        elif line.startswith("data: ") and name == "delta":
            text += json.loads(line.removeprefix("data: "))["text"]
    return text, resets


def test_a_rerun_that_writes_the_same_text_continues_the_stream(redis_client, redis_url) -> None:
    run = _finished_job(redis_client, "abcdefgh")
    # A first run killed after "abcd"; the re-run writes the same text from the start.
    for n, text in [(1, "ab"), (2, "cd")]:
        redis_client.xadd(stream_key("s"), {"a": "old", "d": text, "n": n})
    for n, text in [(1, "a"), (2, "bc"), (3, "def"), (4, "gh")]:
        redis_client.xadd(stream_key("s"), {"a": run, "d": text, "n": n})
    events, sse = _relay_all(redis_url)
    assert not [e for e in events if isinstance(e, Reset)]
    assert [e.text for e in events if isinstance(e, Delta)] == ["ab", "cd", "ef", "gh"]
    assert _client_text(sse) == ("abcdefgh", 0)


def test_a_rerun_that_writes_otherwise_resets_the_stream(redis_client, redis_url) -> None:
    run = _finished_job(redis_client, "abXYZ")
    # The first run wrote "abcd"; the re-run's pick differs at its third character; a late
    # entry of the first run (a stalled worker) after the re-run started is never relayed.
    for n, text in [(1, "ab"), (2, "cd")]:
        redis_client.xadd(stream_key("s"), {"a": "old", "d": text, "n": n})
    for token, n, text in [(run, 1, "a"), (run, 2, "bX"), ("old", 3, "ef"), (run, 3, "YZ")]:
        redis_client.xadd(stream_key("s"), {"a": token, "d": text, "n": n})
    events, sse = _relay_all(redis_url)
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["Delta", "Delta", "Reset", "Delta", "Delta", "Finished"], events
    assert [e.text for e in events if isinstance(e, Delta)] == ["ab", "cd", "abX", "YZ"]
    assert _client_text(sse) == ("abXYZ", 1)


def test_a_final_record_unlike_the_deltas_resets_the_stream(redis_client, redis_url) -> None:
    # The record holds otherwise than the one run heard of streamed (its re-run's deltas lost).
    _finished_job(redis_client, "xyz")
    redis_client.xadd(stream_key("s"), {"a": "old", "d": "abc", "n": 1})
    events, sse = _relay_all(redis_url)
    [finished] = [e for e in events if isinstance(e, Finished)]
    assert finished.relayed == "abc"
    assert _client_text(sse) == ("xyz", 1)
