"""A worker that was stalled or cut off past its heartbeat (real Redis, a stand-in engine): it
checks its claims before anything else, aborts the runs that are no longer its own and writes
nothing of them, keeps the others, and a job's old and new runs on one worker do not trip each
other (the old run's end once dropped the new run, which the ledger check then declared lost,
round after round, until max_attempts)."""

from __future__ import annotations

import dataclasses
import time
from typing import cast

import redis

from shared import lifecycle
from shared.jobs import Job, JobStatus
from shared.keys import worker_jobs_key, worker_key
from shared.store import JobStore
from worker.engine import Engine
from worker.engine_types import AbortReason, Done, Generation, Request
from worker.fencing import Fence
from worker.runner import JobRunner
from worker.settings import WorkerSettings


class _Engine:
    """Only what the runner calls: requests are held until a test finishes or aborts them."""

    alive = True

    def __init__(self) -> None:
        self.running: dict[str, Request] = {}
        self.aborted: dict[str, AbortReason] = {}
        self.done: list[Done] = []

    def submit(self, requests: list[Request]) -> None:
        self.running.update({r.request_id: r for r in requests})

    def abort(self, request_id: str, reason: AbortReason) -> None:
        if self.running.pop(request_id, None) is not None:
            self.aborted[request_id] = reason
            self.done.append(Done(request_id, _generation("par")))

    def take_done(self) -> list[Done]:
        done, self.done = self.done, []
        return done

    def render_chat(self, messages: object) -> str:
        return "chat"

    def finish(self, job_id: str) -> str:
        [request_id] = [r for r in self.running if r.startswith(f"{job_id}.")]
        del self.running[request_id]
        self.done.append(Done(request_id, _generation("done")))
        return request_id


def _generation(text: str) -> Generation:
    return Generation(text, "stop", 1, 1, 1, 1, 1)


def _runner(
    client: redis.Redis, fence: Fence | None = None, beat=time.monotonic, **kwargs: bool
) -> tuple[JobStore, _Engine, JobRunner]:
    store = JobStore(client, 100)
    engine = _Engine()
    settings = WorkerSettings(worker_id="w", model="m", max_attempts=3)
    runner = JobRunner(store, cast(Engine, engine), settings, fence=fence, beat=beat, **kwargs)
    return store, engine, runner


def _janitor_requeues(store: JobStore, job_id: str) -> None:
    """What the janitor does to a job of a worker it thinks gone."""
    job = store.get(job_id)
    run = store.redis.hget(worker_jobs_key("w"), job_id).decode()
    change = dataclasses.replace(lifecycle.requeue(job, run), unless_alive="w")
    assert store.apply_many([change]) == [None]


def test_a_jobs_new_run_beside_its_stale_one_on_one_worker_finishes_once(redis_client) -> None:
    store, engine, runner = _runner(redis_client)
    store.create(Job(id="j", model="m", prompt="x"))
    runner._claim(store.take("m", 10))
    [old] = engine.running
    _janitor_requeues(store, "j")  # the worker was frozen past its heartbeat
    runner._claim(store.take("m", 10))  # thawed, it takes the job's fresh message itself
    [new] = engine.running
    assert engine.aborted == {old: AbortReason.FENCED}  # no engine time on the stale run
    runner._record(engine.take_done())  # the stale run's end writes nothing...
    runner._check_ledger()  # ...and the new run is not taken for lost
    assert store.get("j").status is JobStatus.RUNNING
    assert engine.finish("j") == new
    runner._record(engine.take_done())
    job = store.get("j")
    assert (job.status, job.attempts, job.result.text) == (JobStatus.SUCCEEDED, 2, "done")
    assert runner.in_flight == 0


def test_a_cut_off_worker_checks_its_claims_first_and_fences_only_the_lost_ones(
    redis_client,
) -> None:
    fence = Fence(heartbeat_ttl_s=0.2)
    beats: list[float] = []

    def beat() -> float:
        beats.append(time.monotonic())
        return beats[-1]

    store, engine, runner = _runner(redis_client, fence, beat)
    for job_id in ("kept", "lost"):
        store.create(Job(id=job_id, model="m", prompt="x"))
    runner._claim(store.take("m", 10))
    assert len(engine.running) == 2
    _janitor_requeues(store, "lost")
    time.sleep(0.3)  # no heartbeat Redis took for longer than its life
    assert fence.cut_off()
    engine.finish("kept")
    engine.finish("lost")  # the stale run finished too, while the worker was away
    runner._round()
    assert beats, "the worker announces itself before reading its claims"
    assert not fence.cut_off()
    kept = store.get("kept")
    assert (kept.status, kept.attempts, kept.result.text) == (JobStatus.SUCCEEDED, 1, "done")
    # The stale run's result was not written; the job's fresh message started a new run here.
    lost = store.get("lost")
    assert (lost.status, lost.attempts, lost.result) == (JobStatus.RUNNING, 2, None)
    [new_run] = engine.running
    assert new_run.startswith("lost.2.")
    assert redis_client.hgetall(worker_jobs_key("w")) == {b"lost": new_run[5:].encode()}


def test_a_cut_off_worker_aborts_a_fenced_run_still_in_the_engine(redis_client) -> None:
    fence = Fence(heartbeat_ttl_s=0.2)
    store, engine, runner = _runner(redis_client, fence)
    store.create(Job(id="slow", model="m", prompt="x"))
    runner._claim(store.take("m", 10))
    [request_id] = engine.running
    _janitor_requeues(store, "slow")
    time.sleep(0.3)
    runner._verify_claims()  # the run is aborted; its end comes back in the next round
    runner._record(engine.take_done())
    assert engine.aborted == {request_id: AbortReason.FENCED}
    job = store.get("slow")
    assert (job.status, job.attempts, job.error) == (JobStatus.QUEUED, 1, None)
    assert runner.in_flight == 0


def test_the_fence_trusts_only_beats_taken_while_the_last_one_lived() -> None:
    fence = Fence(heartbeat_ttl_s=10)
    now = time.monotonic()
    fence.beat(now, now + 0.01)
    assert not fence.cut_off(now + 9)
    assert fence.cut_off(now + 10.5)  # a stall: no beat for longer than the TTL
    # A beat that Redis took after the key may have lapsed does not restore trust...
    fence.beat(now + 11, now + 11.01)
    assert fence.cut_off(now + 11.5)
    # ...only the dispatcher's check of its claims does.
    fence.verified(now + 11)
    assert not fence.cut_off(now + 12)
    fence.fence("1.abc")
    assert fence.fenced("1.abc") and not fence.fenced("2.def")


def test_a_worker_whose_heartbeat_lapsed_claims_nothing_until_it_announced_itself(
    redis_client,
) -> None:
    """A take that waited out a partition returns the job's fresh message while the worker's
    heartbeat key is gone and the janitor still counts it gone: a claim then would be re-queued
    by the janitor as the gone worker's, costing the job its last attempt (seen in CI)."""
    fence = Fence(heartbeat_ttl_s=0.2)

    def beat() -> float:
        sent_at = time.monotonic()
        redis_client.set(worker_key("w"), "{}", px=200)
        return sent_at

    store, engine, runner = _runner(redis_client, fence, beat, claims_need_heartbeat=True)
    store.create(Job(id="j", model="m", prompt="x"))
    beat()
    runner._claim(store.take("m", 10))
    [old] = engine.running
    time.sleep(0.3)  # cut off: the key lapsed
    _janitor_requeues(store, "j")
    runner._claim(store.take("m", 10))  # the fresh message, taken while still cut off
    assert store.get("j").status is JobStatus.QUEUED  # not claimed without a heartbeat
    assert list(engine.running) == [old]
    assert fence.cut_off()
    runner._round()  # announces itself, checks its claims, then claims what it holds
    assert engine.aborted == {old: AbortReason.FENCED}
    [new] = engine.running
    assert new.startswith("j.2.")
    job = store.get("j")
    assert (job.status, job.attempts) == (JobStatus.RUNNING, 2)
    assert engine.finish("j") == new
    runner._record(engine.take_done())
    runner._record(engine.take_done())
    assert store.get("j").status is JobStatus.SUCCEEDED
