"""Several pools behind one gateway, and several workers in one pool, on the real stack: the
session's worker serves the bundled model; this module starts workers of a second model (two
layers of the bundled model's config, built once) beside it.

- Each job runs on a worker of its own model, and /v1/models, the queue metrics and the job
  records show both pools.
- Two workers of one pool share its queue; one SIGKILLed mid-burst loses nothing: every job
  succeeds, once (one `completed` webhook each).
- A bad STRUCTQ_ENGINE_ARGS stops a worker at once, naming the key, before any model loads.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from scripts.receiver import Receiver
from scripts.stack import Stack, _Child
from shared.records import WorkerAnnouncement
from shared.settings import DEFAULT_MODEL
from tests.e2e.conftest import completed_once, wait_for
from tests.e2e.models import SMALL_MODEL, make_small_model

pytestmark = pytest.mark.e2e

# The second pool's workers: a small KV cache (RAM on CPU) beside the session's engine, and a
# few jobs each at a time, so a burst spreads over both workers of the pool.
_POOL_ENV = {
    "STRUCTQ_MODEL": SMALL_MODEL,
    "STRUCTQ_ENGINE_ARGS": json.dumps({"kv_cache_memory_bytes": 256 * 2**20}),
    "STRUCTQ_MAX_INFLIGHT": "8",
}


@pytest.fixture(scope="module")
def small_model(stack: Stack) -> str:
    from worker.settings import WorkerSettings

    return str(make_small_model(WorkerSettings.load().cache_dir))


def _start(stack: Stack, path: str, name: str) -> tuple[_Child, WorkerAnnouncement]:
    env = {**_POOL_ENV, "STRUCTQ_MODEL_PATH": path, "STRUCTQ_WORKER_ID": name}
    child = stack.start_worker(env, name=name, wait=False)
    return child, stack.wait_worker_ready(child)


@pytest.fixture(scope="module")
def first(stack: Stack, small_model: str) -> Iterator[tuple[_Child, WorkerAnnouncement]]:
    child, announced = _start(stack, small_model, "e2e-small-1")
    yield child, announced
    if child.alive():
        child.stop(30)


def _bulk(api: httpx.Client, jobs: list[dict[str, Any]]) -> list[str]:
    response = api.post("/v1/jobs/batch", json={"jobs": jobs})
    assert response.status_code == 200, response.text
    rows = response.json()["data"]
    assert all(row["status"] == 202 for row in rows), rows
    return [row["id"] for row in rows]


def _on(api: httpx.Client, status: str, worker: str, ids: set[str]) -> int:
    """How many of ``ids`` are in ``status`` on ``worker`` (the newest 200 of that status)."""
    listed = api.get("/v1/jobs", params={"status": status, "limit": 200}).json()["data"]
    return sum(job["id"] in ids and job["worker"] == worker for job in listed)


def _burst_report(api: httpx.Client, ids: list[str], victim: _Child) -> str:
    """What the burst's jobs are doing (status and worker) and what the victim logged of its
    own (not vLLM's), for a test that never saw the victim mid-burst."""
    jobs = [api.get(f"/v1/jobs/{job_id}").json() for job_id in ids]
    states = Counter(f"{job['status']}@{job.get('worker')}" for job in jobs)
    own = [
        line[:300]
        for line in victim.log_path.read_text().splitlines()
        if '"logger": "worker' in line or '"logger": "shared' in line
    ]
    return f"{dict(states)}; the victim's log: " + "\n".join(own[-40:])


def _session_worker(stack: Stack, api: httpx.Client) -> str:
    assert stack.worker is not None
    job = wait_for(api, _bulk(api, [{"prompt": "Hi", "sampling": {"max_tokens": 2}}]))
    [record] = job.values()
    return record["worker"]


def test_a_bad_engine_argument_stops_the_worker_at_once_naming_it(stack: Stack) -> None:
    started = time.monotonic()
    env = {"STRUCTQ_ENGINE_ARGS": json.dumps({"tensor_paralel_size": 2, "max_num_seqs": "8"})}
    child = stack.start_worker(env, name="bad-engine-args", wait=False)
    code = child.proc.wait(120)
    took = time.monotonic() - started
    log = child.log_path.read_text()
    assert code != 0, log
    assert "STRUCTQ_ENGINE_ARGS" in log and "'tensor_paralel_size'" in log, log
    assert "did you mean 'tensor_parallel_size'" in log, log
    assert "'max_num_seqs': Input should be a valid integer" in log, log
    # Before any model loads: no engine was started.
    assert "starting vLLM engine" not in log and "Loading" not in log, log
    assert took < 60, took


def test_each_job_runs_on_a_worker_of_its_own_model(
    stack: Stack, api: httpx.Client, first: tuple[_Child, WorkerAnnouncement]
) -> None:
    _, small = first
    bundled_worker = _session_worker(stack, api)
    jobs = []
    for i in range(12):
        model = SMALL_MODEL if i % 2 else DEFAULT_MODEL
        jobs.append({"prompt": f"Count to {i}.", "model": model, "sampling": {"max_tokens": 8}})
    ids = _bulk(api, jobs)
    done = wait_for(api, ids)
    for job_id, body in zip(ids, jobs, strict=True):
        record = done[job_id]
        assert record["status"] == "succeeded", record
        assert record["model"] == body["model"] and "adapter" not in record
        expected = small.worker_id if body["model"] == SMALL_MODEL else bundled_worker
        assert record["worker"] == expected, record
        assert record["engine"]["worker"] == expected
    cards = {card["id"]: card for card in api.get("/v1/models").json()["data"]}
    assert cards[SMALL_MODEL]["workers"] == 1 and cards[SMALL_MODEL]["parent"] is None
    assert cards[DEFAULT_MODEL]["workers"] == 1
    # The OpenAI route takes the second model by name too.
    reply = api.post(
        "/v1/completions", json={"model": SMALL_MODEL, "prompt": "Hello", "max_tokens": 4}
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["model"] == SMALL_MODEL
    # The gateway's queue metrics have a series per pool.
    metrics = api.get("/metrics").text
    for model in (DEFAULT_MODEL, SMALL_MODEL):
        assert f'structq_queue_jobs{{model="{model}"}}' in metrics, metrics
        assert f'structq_workers_live{{model="{model}"}} 1.0' in metrics, metrics


def test_two_workers_of_one_pool_share_it_and_a_killed_one_loses_nothing(
    stack: Stack,
    api: httpx.Client,
    small_model: str,
    first: tuple[_Child, WorkerAnnouncement],
) -> None:
    victim, victim_announced = first
    survivor, survivor_announced = _start(stack, small_model, "e2e-small-2")
    try:
        cards = {card["id"]: card for card in api.get("/v1/models").json()["data"]}
        assert cards[SMALL_MODEL]["workers"] == 2
        with Receiver() as receiver:
            url = receiver.url("/done")
            jobs = [
                {
                    "prompt": f"Tell a long story number {i}.",
                    "model": SMALL_MODEL,
                    # A random model rarely ends a text early: every job runs its 96 tokens.
                    "sampling": {"max_tokens": 96, "seed": i},
                    "webhook": {"url": url},
                }
                for i in range(80)
            ]
            ids = _bulk(api, jobs)
            # Mid-burst: both workers have taken jobs of the burst and the victim runs some.
            # (Not "the victim has finished some": on a loaded machine one engine may be many
            # times slower than the other, and the survivor may empty the queue meanwhile.)
            deadline = time.monotonic() + 120
            mine = set(ids)
            survivor_id = survivor_announced.worker_id
            while True:
                running = _on(api, "running", victim_announced.worker_id, mine)
                survivor_took = _on(api, "running", survivor_id, mine) or _on(
                    api, "succeeded", survivor_id, mine
                )
                if running >= 1 and survivor_took >= 1:
                    break
                assert time.monotonic() < deadline, _burst_report(api, ids, victim)
                time.sleep(0.05)
            victim.proc.send_signal(signal.SIGKILL)
            assert victim.proc.wait(30) == -signal.SIGKILL
            done = wait_for(api, ids, timeout_s=300)
            assert all(job["status"] == "succeeded" for job in done.values()), [
                (job["id"], job["status"], job["error"]) for job in done.values()
            ]
            workers = {job["worker"] for job in done.values()}
            assert survivor_id in workers
            assert workers <= {victim_announced.worker_id, survivor_id}
            # What the victim was running finished on the survivor.
            rerun = [job for job in done.values() if job["attempts"] == 2]
            assert rerun and all(j["worker"] == survivor_id for j in rerun)
            # Once: one `completed` event per job, none more (the victim's runs wrote nothing).
            completed_once(receiver, "/done", ids)
    finally:
        survivor.stop(30)
