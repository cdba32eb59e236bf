"""A worker frozen (SIGSTOP of its whole process group: the worker, its EngineCore, its
watchdog) or cut off from Redis (a proxy between it and Redis, reset or black-holed, while the
gateway, its janitor and the webhook worker keep their direct connection) past its heartbeat's
life loses no job: each costs at most one attempt, its result is written once, one `completed`
webhook goes out per job, and a stream followed to its end gives exactly the final text.

Settings (the e2e stack's, ``tests/e2e/conftest.py``): STRUCTQ_HEARTBEAT_TTL_S=3,
STRUCTQ_ORPHAN_GRACE_S=5, STRUCTQ_JANITOR_INTERVAL_S=0.5, STRUCTQ_MAX_ATTEMPTS=2; the worker
behind the proxy has STRUCTQ_REDIS_SOCKET_TIMEOUT_S=2. A long fault lasts twice the TTL plus
the grace (16 s); a short one 4 s, less than the grace.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from scripts.partition import Partition
from scripts.receiver import Receiver
from scripts.stack import Stack
from tests.e2e.conftest import (
    ORPHAN_GRACE_S,
    completed_once,
    restart_worker,
    submit,
    wait_for,
)

pytestmark = pytest.mark.e2e

HEARTBEAT_TTL_S = 3
LONG_FAULT_S = 2 * (HEARTBEAT_TTL_S + ORPHAN_GRACE_S)
SHORT_FAULT_S = 4
_TOKENS = 160


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def partition(stack: Stack) -> Iterator[Partition]:
    """The stack's worker, now behind a partition proxy; a plain worker again afterwards."""
    proxy = Partition(stack.redis_port)
    stack.stop_worker()
    stack.start_worker({"STRUCTQ_REDIS_URL": proxy.url(), "STRUCTQ_REDIS_SOCKET_TIMEOUT_S": "2"})
    yield proxy
    proxy.restore()
    stack.stop_worker()
    proxy.close()
    restart_worker(stack)


class _Load:
    """Jobs, a /v1/jobs/batch, and a streaming job followed to its end, all with webhooks."""

    def __init__(self, api: httpx.Client, receiver: Receiver, name: str) -> None:
        hook = {"url": receiver.url(f"/{name}")}
        self.path = f"/{name}"
        self.ids = [submit(api, _job(i, webhook=hook)) for i in range(6)]
        response = api.post(
            "/v1/jobs/batch", json={"jobs": [_job(10 + i, webhook=hook) for i in range(4)]}
        )
        assert response.status_code == 200, response.text
        self.ids += [row["id"] for row in response.json()["data"]]
        self.stream_id = submit(api, _job(20, webhook=hook, stream=True))
        self.ids.append(self.stream_id)
        self.streamed: list[str] = []
        self.stream_done: dict[str, Any] = {}
        self.stream_events: list[str] = []  # event names and lost connections, for a failure
        self._follower = threading.Thread(target=self._follow, args=(api.base_url,), daemon=True)
        self._follower.start()

    def _follow(self, base_url: httpx.URL) -> None:
        """Follow the stream to its ``done``. The gateway ends a stream after MAX_WAIT_S with
        ``timeout`` (a slow machine's faulted job may take longer): connect again, as a client
        does; each connection sends the deltas so far from the start."""
        deadline = time.monotonic() + 600
        with httpx.Client(base_url=base_url, timeout=None) as client:
            while not self.stream_done and time.monotonic() < deadline:
                self.streamed.clear()
                name = None
                try:
                    with client.stream("GET", f"/v1/jobs/{self.stream_id}/stream") as response:
                        for line in response.iter_lines():
                            if line.startswith("event: "):
                                name = line.removeprefix("event: ")
                                self.stream_events.append(name)
                            elif line.startswith("data: "):
                                data = json.loads(line.removeprefix("data: "))
                                if name == "delta":
                                    self.streamed.append(data["text"])
                                elif name == "reset":  # a re-run wrote otherwise: start again
                                    self.streamed.clear()
                                elif name == "done":
                                    self.stream_done = data
                except httpx.TransportError as exc:
                    self.stream_events.append(f"connection lost: {exc!r}")
                    time.sleep(1)

    def running_soon(self, api: httpx.Client) -> None:
        wait_for(api, self.ids[:1], timeout_s=120, statuses={"running"})
        time.sleep(1)  # a few tokens in

    def check(
        self, api: httpx.Client, receiver: Receiver, max_attempts: int
    ) -> dict[str, dict[str, Any]]:
        jobs = wait_for(api, self.ids, timeout_s=240)
        for job in jobs.values():
            brief = {key: job.get(key) for key in ("id", "status", "error", "attempts", "worker")}
            assert job["status"] == "succeeded", brief
            assert 1 <= job["attempts"] <= max_attempts, brief
            assert job["result"]["usage"]["completion_tokens"] == _TOKENS
        self._follower.join(60)
        events = Counter(self.stream_events)
        assert self.stream_done.get("status") == "succeeded", (self.stream_done, events)
        assert "".join(self.streamed) == jobs[self.stream_id]["result"]["text"]
        # One `completed` event per job.
        completed_once(receiver, self.path, self.ids, timeout_s=60)
        return jobs


def _job(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "prompt": f"Story {i}: a lighthouse keeper finds",
        "sampling": {"max_tokens": _TOKENS, "ignore_eos": True, "temperature": 0, "seed": i},
        **extra,
    }


def _metric(url: str, name: str) -> float:
    text = httpx.get(url, timeout=5).text
    values = re.findall(rf"^{name}{{[^}}]*}} ([0-9.e+]+)$", text, re.MULTILINE)
    return sum(float(v) for v in values)


def _settled(api: httpx.Client, jobs: dict[str, dict[str, Any]], *metrics_urls: str) -> None:
    """Once the workers run nothing (their stale runs finished or aborted), every job reads as
    it did: the same result and finished_at."""
    deadline = time.monotonic() + 60
    while any(_metric(url, "structq_worker_inflight_jobs") > 0 for url in metrics_urls):
        assert time.monotonic() < deadline, "a worker still has runs in flight"
        time.sleep(0.5)
    time.sleep(1)
    for job_id, job in jobs.items():
        again = api.get(f"/v1/jobs/{job_id}").json()
        assert (again["result"], again["finished_at"]) == (job["result"], job["finished_at"])


def _freeze(stack: Stack, seconds: float, worker_pid: int | None = None) -> None:
    pgid = worker_pid or stack.worker.proc.pid  # its own session: the group is the worker's
    os.killpg(pgid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.killpg(pgid, signal.SIGCONT)


def test_a_worker_frozen_past_its_heartbeat_loses_nothing(stack, api, receiver, partition):
    load = _Load(api, receiver, "freeze")
    load.running_soon(api)
    fenced_before = _metric(stack.worker_metrics_url, "structq_worker_fenced_runs_total")
    _freeze(stack, LONG_FAULT_S)
    jobs = load.check(api, receiver, max_attempts=2)
    assert any(job["attempts"] == 2 for job in jobs.values())  # the janitor did re-queue
    _settled(api, jobs, stack.worker_metrics_url)
    fenced = _metric(stack.worker_metrics_url, "structq_worker_fenced_runs_total")
    assert fenced > fenced_before  # the thawed worker aborted its stale runs
    assert _metric(stack.worker_metrics_url, "structq_worker_cut_offs_total") >= 1


@pytest.mark.parametrize("cut", ["reset", "black_hole"])
def test_a_worker_cut_off_past_its_heartbeat_loses_nothing(stack, api, receiver, partition, cut):
    load = _Load(api, receiver, f"cut-{cut}")
    load.running_soon(api)
    getattr(partition, cut)()
    try:
        time.sleep(LONG_FAULT_S)
    finally:
        partition.restore()
    jobs = load.check(api, receiver, max_attempts=2)
    assert any(job["attempts"] == 2 for job in jobs.values())
    _settled(api, jobs, stack.worker_metrics_url)
    assert stack.worker.alive()


def test_a_short_partition_requeues_nothing(stack, api, receiver, partition):
    load = _Load(api, receiver, "short")
    load.running_soon(api)
    fenced_before = _metric(stack.worker_metrics_url, "structq_worker_fenced_runs_total")
    partition.black_hole()
    try:
        time.sleep(SHORT_FAULT_S)
    finally:
        partition.restore()
    jobs = load.check(api, receiver, max_attempts=1)
    _settled(api, jobs, stack.worker_metrics_url)
    assert _metric(stack.worker_metrics_url, "structq_worker_fenced_runs_total") == fenced_before


def test_a_frozen_workers_jobs_finish_on_the_other_worker(stack, api, receiver, partition):
    # A small KV cache: two engines at once within the machine's memory.
    small = {"STRUCTQ_ENGINE_ARGS": json.dumps({"kv_cache_memory_bytes": 256 * 2**20})}
    other = stack.start_worker(small, name="worker-b")
    try:
        load = _Load(api, receiver, "two")
        load.running_soon(api)
        busy = api.get(f"/v1/jobs/{load.ids[0]}").json()["worker"]
        pid = stack.worker.proc.pid
        if not busy.endswith(f"-{pid}"):
            pid = other.proc.pid
        _freeze(stack, LONG_FAULT_S, pid)
        jobs = load.check(api, receiver, max_attempts=2)
        moved = [job for job in jobs.values() if job["attempts"] == 2]
        assert moved and all(not job["worker"].endswith(f"-{pid}") for job in moved)
        _settled(api, jobs, stack.worker_metrics_url, other.metrics_url)
    finally:
        other.stop(60)
