"""Redis outages while the worker is busy: a clean restart, 20 s down, a SIGKILL; and jobs left
stranded on purpose (a lost task message, a claim its worker does not know). Every job that
Redis still has finishes, once.

Each test leaves the stack as it found it: Redis up on its port with its data, the worker
serving.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import httpx
import pytest

from shared import lifecycle
from shared.jobs import DEFAULT_PRIORITY
from shared.keys import bell_key, job_key, queue_list
from shared.redis_pools import sync_client
from shared.settings import DEFAULT_MODEL
from shared.store import JobStore
from shared.workers import live_workers_sync
from tests.e2e.conftest import ORPHAN_GRACE_S, RECONCILE_INTERVAL_S, submit

pytestmark = pytest.mark.e2e

_TOKENS = 24


def _body(i: int) -> dict[str, Any]:
    return {
        "prompt": f"Write about the harbour, part {i}.",
        "sampling": {"max_tokens": _TOKENS, "ignore_eos": True},
    }


def _burst(api: httpx.Client, n: int) -> list[str]:
    response = api.post("/v1/jobs/batch", json={"jobs": [_body(i) for i in range(n)]})
    assert response.status_code == 200, response.text
    assert all(row["status"] == 202 for row in response.json()["data"])
    return [row["id"] for row in response.json()["data"]]


def _running_soon(api: httpx.Client, ids: list[str], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if api.get(f"/v1/jobs/{ids[0]}").json()["status"] in ("running", "succeeded"):
            return
        time.sleep(0.05)
    raise AssertionError("the burst did not start")


def _finished(api: httpx.Client, ids: list[str], timeout_s: float = 300) -> dict[str, Any]:
    """Every job's final record (None: the store does not have it), waiting through outages:
    503s and dropped connections are retried, as a client should."""
    done: dict[str, Any] = {}
    deadline = time.monotonic() + timeout_s
    while len(done) < len(ids):
        assert time.monotonic() < deadline, f"not finished: {[i for i in ids if i not in done]}"
        pending = [i for i in ids if i not in done]
        try:
            response = api.post("/v1/jobs/wait", json={"ids": pending[:1000], "timeout_s": 10})
        except httpx.TransportError:
            time.sleep(0.5)
            continue
        if response.status_code == 503:
            time.sleep(float(response.headers.get("retry-after", "1")))
            continue
        assert response.status_code == 200, response.text
        body = response.json()
        for job in body["data"]:
            done[job["id"]] = job
        for job_id in body["unknown"]:
            done[job_id] = None
    return done


def _once(job: dict[str, Any]) -> None:
    """Ran to completion exactly once: one run, its whole result."""
    assert job["status"] == "succeeded", job.get("error")
    assert job["attempts"] == 1, job
    assert job["result"]["usage"]["completion_tokens"] == _TOKENS
    assert job["finished_at"] and job["engine"]["worker"]


def test_a_redis_restart_mid_burst_fails_no_job_and_runs_each_once(stack, api):
    ids = _burst(api, 60)
    _running_soon(api, ids)
    stack.restart_redis()  # SIGTERM: Redis writes its append-only file; back at once
    jobs = _finished(api, ids)
    for job in jobs.values():
        _once(job)


def test_redis_down_20s_mid_burst_results_wait_and_are_written_once(stack, api):
    ids = _burst(api, 60)
    _running_soon(api, ids)
    stack.restart_redis(down_s=20)
    jobs = _finished(api, ids)
    for job in jobs.values():
        _once(job)
    # The worker went on: it is announced again (its heartbeat retries on its own clock, so
    # it may trail the result writes by a beat or two), and takes new jobs.
    client = sync_client(stack.redis_url)
    deadline = time.monotonic() + 5
    while not any(w.pid == stack.worker.proc.pid for w in live_workers_sync(client)):
        assert time.monotonic() < deadline, "the worker did not announce itself again"
        time.sleep(0.2)
    assert _finished(api, _burst(api, 2))


def test_a_redis_sigkill_mid_burst_every_job_it_kept_finishes(stack, api):
    ids = _burst(api, 60)
    _running_soon(api, ids)
    submitted_by = time.monotonic()
    time.sleep(2)
    stack.restart_redis(kill=True)
    killed_at = time.monotonic()
    jobs = _finished(api, ids)
    # With appendfsync everysec, what a crash can lose is the last second of writes (docs/
    # lifecycle.md): every job acknowledged more than that before the kill is still there...
    assert killed_at - submitted_by > 1.5
    assert all(job is not None for job in jobs.values()), "a job acknowledged >1 s before is gone"
    # ...and finishes with one whole result; a run whose result write was lost runs again.
    for job in jobs.values():
        assert job["status"] == "succeeded", job.get("error")
        assert job["result"]["usage"]["completion_tokens"] == _TOKENS
        assert job["attempts"] <= 2


def _paused_worker(stack):
    """The worker process stopped (SIGSTOP) for a moment: what the test writes meanwhile is
    not taken at once."""

    class Paused:
        def __enter__(self) -> None:
            os.kill(stack.worker.proc.pid, signal.SIGSTOP)

        def __exit__(self, *exc: object) -> None:
            os.kill(stack.worker.proc.pid, signal.SIGCONT)

    return Paused()


def test_a_queued_job_whose_message_is_lost_is_sent_again_once(stack, api):
    client = sync_client(stack.redis_url)
    with _paused_worker(stack):
        job_id = submit(api, _body(0))
        # Its task message vanishes (as when a worker dies right after taking it).
        assert client.delete(queue_list(DEFAULT_MODEL, DEFAULT_PRIORITY)) == 1
        client.delete(bell_key(DEFAULT_MODEL))
    started = time.monotonic()
    job = _finished(api, [job_id], timeout_s=120)[job_id]
    recovered_s = time.monotonic() - started
    _once(job)
    # Within the documented bound: seen lost in two looks RECONCILE_INTERVAL_S apart, once
    # older than STRUCTQ_ORPHAN_GRACE_S (plus the run itself, a few seconds here).
    assert recovered_s < ORPHAN_GRACE_S + 3 * RECONCILE_INTERVAL_S + 30, recovered_s
    assert client.hget(job_key(job_id), "msg").decode() != job_id  # a fresh message ran it


def test_a_claim_its_live_worker_does_not_know_is_given_back_once(stack, api):
    client = sync_client(stack.redis_url)
    store = JobStore(client, ttl_s=3600)
    [worker] = [w for w in live_workers_sync(client) if w.pid == stack.worker.proc.pid]
    with _paused_worker(stack):
        job_id = submit(api, _body(0))
        client.delete(queue_list(DEFAULT_MODEL, DEFAULT_PRIORITY))
        client.delete(bell_key(DEFAULT_MODEL))
        # Redis says this worker runs the job; the worker never heard of it.
        assert store.apply(lifecycle.claim(store.get(job_id), worker.worker_id, job_id))
    job = _finished(api, [job_id], timeout_s=120)[job_id]
    assert job["status"] == "succeeded", job.get("error")
    assert job["attempts"] == 2  # the phantom run counts; the real one ran once
    assert job["result"]["usage"]["completion_tokens"] == _TOKENS
