"""``map``: order, bounded in flight, idempotency keys from the inputs, resuming, refusals."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from pydantic import BaseModel

import structq
from structq._core import derive_keys
from tests.client.fake import FakeGateway


class Sentiment(BaseModel):
    label: str


def _outcome(body):
    prompt = body["prompt"]
    if prompt.startswith("bad"):
        return "failed", "output_truncated", "cut"
    return "succeeded", prompt.upper(), prompt.upper()


class Stop(Exception):
    pass


def test_results_in_input_order_with_failures_in_place(client, gw):
    gw.outcome = _outcome
    inputs = [f"item {i}" for i in range(50)] + ["bad one"] + ["item 50"]
    results = client.map(inputs, concurrency=7, batch_size=3, progress=False, max_tokens=4)
    assert results[:50] == [f"ITEM {i}" for i in range(50)]
    assert isinstance(results[50], structq.JobFailed) and results[50].code == "output_truncated"
    assert results[51] == "ITEM 50"
    assert 0 < gw.max_unfinished <= 7 or gw.max_unfinished == 0
    batches = [json.loads(r.content) for r in gw.requests if r.url.path == "/v1/jobs/batch"]
    assert max(len(b["jobs"]) for b in batches) == 3
    assert all(job["sampling"] == {"max_tokens": 4} for b in batches for job in b["jobs"])


def test_in_flight_is_bounded(client, gw):
    gw.auto_finish = False  # jobs finish one per wait call
    results = client.map([f"p{i}" for i in range(40)], concurrency=5, progress=False)
    assert len(results) == 40 and gw.max_unfinished == 5


def test_keys_are_derived_from_the_inputs():
    bodies = [{"prompt": "a"}, {"prompt": "b"}, {"prompt": "a"}]
    keys = derive_keys(bodies)
    assert keys[0] != keys[2] and keys[2] == keys[0] + "-1"
    assert derive_keys(list(reversed(bodies)))[1] == keys[1]  # order does not matter
    assert derive_keys(bodies, "run7:")[0] == "run7:" + keys[0]
    assert all(len(k) <= 255 for k in keys)


def test_an_interrupted_map_resumes_without_duplicates(client, gw):
    gw.auto_finish = False
    inputs = [f"q{i}" for i in range(120)]
    seen: list[structq.MapItem] = []

    def stop_after_30(item: structq.MapItem) -> None:
        seen.append(item)
        if len(seen) == 30:
            raise Stop

    with pytest.raises(Stop):
        client.map(inputs, concurrency=50, batch_size=20, progress=False, on_result=stop_after_30)
    first_jobs = len(gw.jobs)
    assert 30 <= first_jobs < 120  # interrupted midway, some jobs still unfinished
    first_ids = {job["prompt"]: job_id for job_id, job in gw.jobs.items()}

    items = client.map(inputs, concurrency=50, batch_size=20, progress=False, return_items=True)
    assert [item.value for item in items] == [f"echo: {p}" for p in inputs]
    assert len(gw.jobs) == 120  # exactly one job per input
    for item in items:
        if item.input in first_ids:
            assert item.job_id == first_ids[item.input] and item.resumed
        else:
            assert not item.resumed


def test_item_refusals_are_retried_after_a_pause(client, gw, sleeps):
    gw.refuse_items = 4
    results = client.map([f"r{i}" for i in range(10)], batch_size=10, progress=False)
    assert results == [f"echo: r{i}" for i in range(10)]
    assert len(gw.jobs) == 10 and sleeps  # it sat out a back-off before resubmitting


def test_item_errors_are_reported_per_item(client, gw):
    results = client.map(["ok", [], "fine"], progress=False)  # an empty chat: refused
    assert results[0] == "echo: ok" and results[2] == "echo: fine"
    error = results[1]
    assert isinstance(error, structq.InvalidRequest) and error.code == "invalid_request"
    assert error.detail and error.status == 422


def test_single_jobs_where_there_is_no_batch_route(client, gw):
    gw.batch_route = False
    gw.wait_route = False
    gw.outcome = lambda body: ("succeeded", "{}", {"label": body["prompt"]})
    results = client.map([f"s{i}" for i in range(12)], Sentiment, concurrency=4, progress=False)
    assert results == [Sentiment(label=f"s{i}") for i in range(12)]
    paths = gw.paths()
    assert paths.count("POST /v1/jobs/batch") == 1 and paths.count("POST /v1/jobs") == 12
    assert paths.count("POST /v1/jobs/wait") == 1


def test_retry_failed_on_resume(client, gw):
    failing = {"on": True}

    def outcome(body):
        if failing["on"]:
            return "failed", "deadline_exceeded", "late"
        return "succeeded", "ok", "ok"

    gw.outcome = outcome
    first = client.map(["a", "b"], progress=False)
    assert all(isinstance(r, structq.JobFailed) for r in first)
    failing["on"] = False
    again = client.map(["a", "b"], progress=False)
    assert [r.job_id for r in again] == [r.job_id for r in first]  # the same failed jobs
    assert client.map(["a", "b"], progress=False, retry_failed=True) == ["ok", "ok"]
    assert len(gw.jobs) == 2


def test_progress_bar(client, gw):
    class Bar:
        n = 0

        def update(self, k):
            self.n += k

    bar = Bar()
    client.map(["a", "b", "c"], progress=bar)
    assert bar.n == 3
    assert client.map(["a"], progress=True) == ["echo: a"]  # tqdm


def test_async_map(aclient, gw):
    gw.outcome = _outcome

    async def main():
        async with aclient as client:
            return await client.map([f"x{i}" for i in range(30)], concurrency=8, progress=False)

    assert asyncio.run(main()) == [f"X{i}" for i in range(30)]


def test_async_map_can_be_cancelled_and_resumed(gw):
    gw.auto_finish = False
    inputs = [f"c{i}" for i in range(60)]

    async def handler(request):
        await asyncio.sleep(0)  # a real network round trip lets other tasks run
        return gw(request)

    async def main():
        transport = httpx.MockTransport(handler)
        async with structq.AsyncClient("http://gw.test", transport=transport) as client:
            done = asyncio.Event()
            count = 0

            def on_result(item):
                nonlocal count
                count += 1
                if count == 10:
                    done.set()

            task = asyncio.create_task(
                client.map(inputs, concurrency=20, progress=False, on_result=on_result)
            )
            await done.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            interrupted = len(gw.jobs)
            return interrupted, await client.map(inputs, concurrency=20, progress=False)

    interrupted, results = asyncio.run(main())
    assert interrupted < 60
    assert results == [f"echo: {p}" for p in inputs]
    assert len(gw.jobs) == 60


def test_fake_gateway_sanity():
    gw = FakeGateway()
    assert gw.unfinished() == 0
