"""The worker's hot path: take job messages, claim the jobs, run them on the engine, record them.

A job's way through this process, and what each step costs it:

1. **take** (the dispatcher thread, here; see ``worker.intake``): one script call takes every
   job message there is room for, with each one's job record. No Celery task per job, no
   thread per job.
2. **claim** (the dispatcher thread; the changes and requests from ``worker.claims``): one
   script call claims them all (``queued → running``, guarded by the message tag, so a stale
   duplicate claims nothing, and acknowledging each message in the same write); each becomes
   an engine request, handed over in one batch.
3. **generate** (the engine thread, ``worker.engine``): vLLM's continuous batch.
4. **record** (the dispatcher thread; the changes from ``worker.outcomes``): every job the
   engine finished since the last round has its output checked and parsed, and all of them
   are written in one script call (status, result, indexes, webhook event, completion notice,
   this worker's ledger).

So a round of many jobs costs two script calls to start them and one to record them, and each
job's record is parsed once and its small state serialized twice.

Every outcome is one guarded status change (``shared.lifecycle``): a job that fails does so with
a code and a reason; a run that ends through no fault of the job (the engine died, the worker
is draining) goes back to the queue. A worker that was stalled or cut off from Redis past its
heartbeat's life (``worker.fencing``) checks its claims before anything else: runs whose job was
given to another run meanwhile are aborted and write nothing; the others go on.

While Redis is unreachable, writes are retried with backoff for up to STRUCTQ_REDIS_OUTAGE_S
and results wait in memory; past that the worker gives up and exits (its jobs are re-queued by
the janitor once Redis is back).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from shared.errors import RedisGone
from shared.jobs import Job, JobStatus
from shared.lifecycle import Change
from shared.logs import job_fields
from shared.redis_pools import retrying
from shared.store import JobStore, Stored, read_job
from worker import claims, outcomes
from worker.engine import Engine
from worker.engine_types import AbortReason, Done, Request
from worker.fencing import Fence
from worker.metrics import JobMetrics
from worker.settings import WorkerSettings
from worker.streams import DeltaPublisher

__all__ = ["FAULT_KEY", "JobRunner"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# Job metadata key read when STRUCTQ_FAULT_INJECTION is on (tests of crash recovery only).
FAULT_KEY = "structq.fault"
# How often running jobs are checked against their deadlines.
_DEADLINE_CHECK_S = 0.1
# How often the worker reads its ledger in Redis: cancels it missed (the pub/sub message is lost
# across a reconnect), jobs Redis says it runs that it does not, and runs it has that are no
# longer its own.
_LEDGER_CHECK_S = 5.0

# Longest the dispatcher goes without looking at the queue while it has room.
_TAKE_EVERY_S = 1.0


@dataclass(slots=True)
class _Active:
    """A job this worker runs."""

    job: Job  # as claimed
    run: str  # the claim's run token
    request_id: str
    limit: float  # epoch s: its deadline, or STRUCTQ_MAX_RUN_S after it started
    spec: bytes | None = None  # the stored spec, kept for its webhook payloads
    aborting: AbortReason | None = None


class JobRunner:
    def __init__(
        self,
        store: JobStore,
        engine: Engine,
        settings: WorkerSettings,
        streams: DeltaPublisher | None = None,
        on_fatal: Callable[[BaseException], None] = lambda exc: None,
        metrics: JobMetrics | None = None,
        fence: Fence | None = None,
        beat: Callable[[], float] = time.monotonic,
        claims_need_heartbeat: bool = False,
    ) -> None:
        """``fence`` is shared with the heartbeat (and the stream publisher); ``beat`` writes
        the heartbeat and returns when it was sent (the default, for tests: writes nothing).
        ``claims_need_heartbeat``: Redis refuses this worker's claims while its heartbeat key
        is absent (the worker's own setting; off for tests without a heartbeat)."""
        self._store = store
        self._fence = fence if fence is not None else Fence(settings.heartbeat_ttl_s)
        self._beat = beat
        self._claims_need_heartbeat = claims_need_heartbeat
        self._metrics = metrics
        self._engine = engine
        self._streams = streams
        self._settings = settings
        self._on_fatal = on_fatal
        self._worker_id = settings.worker_id
        self._model = settings.model
        self._may_take = threading.Event()  # the doorbell rang, or the last take was full
        self._taken_at = 0.0
        self._active: dict[str, _Active] = {}  # by engine request id
        # By job id: the job's current run here (an older, fenced run may still be in _active).
        self._by_job: dict[str, _Active] = {}
        self._early: list[Done] = []  # claimed, but refused before reaching the engine
        # Taken, but their claim was refused while the heartbeat had lapsed: claimed again
        # once this worker has announced itself (their messages stay taken meanwhile).
        self._unclaimed: list[tuple[str, Stored]] = []
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._draining = threading.Event()
        self._stopped = threading.Event()
        self._deadlines_at = self._ledger_at = 0.0
        self._thread = threading.Thread(target=self._loop, name="structq-dispatcher", daemon=True)

    # -- called from other threads ----------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=5)

    def wake(self) -> None:
        self._wake.set()

    def ring(self) -> None:
        """Job messages may be waiting (the doorbell rang, or it is time to look)."""
        self._may_take.set()
        self._wake.set()

    def cancel(self, job_id: str) -> None:
        """A client cancelled ``job_id``: abort its request if this worker runs it."""
        active = self._by_job.get(job_id)
        if active is not None and active.aborting is None:
            active.aborting = AbortReason.CANCELLED
            self._engine.abort(active.request_id, AbortReason.CANCELLED)

    def drain(self) -> None:
        """Take no new job; those running go on until ``requeue_running``."""
        self._draining.set()
        self._wake.set()

    def requeue_running(self) -> None:
        """The drain ran out of time: stop every running request; each job is re-queued."""
        self._engine.abort_all(AbortReason.DRAIN)

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until nothing is taken, running or waiting to be written (or the dispatcher
        stopped); whether it got there in time."""
        self._wake.set()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._idle.wait(0.1) or not self._thread.is_alive():
                return True
        return False

    @property
    def in_flight(self) -> int:
        return len(self._active)

    # -- the dispatcher thread ----------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopped.is_set():
            self._wake.wait(_DEADLINE_CHECK_S)
            self._wake.clear()
            try:
                self._round()
            except RedisGone as exc:
                log.critical("%s; the worker stops (its jobs are re-queued)", exc)
                self._on_fatal(exc)
                return
            except Exception:  # a bug of ours: log it and go on with the next round
                log.exception("dispatcher round failed")
                time.sleep(0.1)

    def _round(self) -> None:
        if self._fence.cut_off():
            self._verify_claims()
        if self._unclaimed:
            held, self._unclaimed = self._unclaimed, []
            self._claim(held)
        now = time.monotonic()
        room = self._settings.max_inflight - len(self._active)
        taking = not self._draining.is_set() and self._engine.alive
        if (
            taking
            and room > 0
            and (self._may_take.is_set() or now - self._taken_at >= _TAKE_EVERY_S)
        ):
            self._may_take.clear()
            self._taken_at = now
            self._idle.clear()
            taken = self._retrying(lambda: self._store.take(self._model, room))
            if len(taken) == room:
                self._may_take.set()  # there may be more, for the next round
            if taken:
                if self._fence.cut_off():  # the take waited out a stall or a partition
                    self._verify_claims()
                self._claim(taken)
        done = self._early + self._engine.take_done()
        self._early = []
        if done:
            self._record(done)
        now = time.monotonic()
        if now - self._deadlines_at >= _DEADLINE_CHECK_S:
            self._deadlines_at = now
            self._enforce_deadlines()
        if now - self._ledger_at >= _LEDGER_CHECK_S:
            self._ledger_at = now
            self._check_ledger()
        taking_done = self._draining.is_set() or not self._may_take.is_set()
        if not self._active and not self._early and not self._unclaimed and taking_done:
            self._idle.set()

    def _claim(self, taken: list[tuple[str, Stored]]) -> None:
        changes = [claims.claim(tag, row, self._worker_id) for tag, row in taken]
        if self._claims_need_heartbeat:
            changes = [
                change
                if change.new_run is None
                else dataclasses.replace(change, if_alive=self._worker_id)
                for change in changes
            ]
        written = self._retrying(lambda: self._store.apply_many(changes))
        requests = []
        for (tag, row), change, current in zip(taken, changes, written, strict=True):
            if current == "cut_off":  # this worker's heartbeat lapsed: announce it first
                self._unclaimed.append((tag, row))
                self._fence.distrust()
                continue
            if change.new_run is None or current is not None:
                if change.new_run is not None:
                    log.info(
                        "job of message %s changed before it could start (%s)",
                        tag,
                        current,
                        extra=job_fields(change.job) if change.job else None,
                    )
                continue
            request = self._start(change, row.spec)
            if request is not None:
                requests.append(request)
        self._engine.submit(requests)

    def _start(self, claim: Change, spec: bytes | None) -> Request | None:
        """A claimed job's engine request (None: it failed before reaching the engine)."""
        job, run = claim.job, claim.new_run
        if job is None or run is None:
            raise ValueError("not a claim")
        if self._settings.fault_injection and job.metadata.get(FAULT_KEY) == "kill-worker":
            log.critical(
                "job %s asks for this worker's death (fault injection)",
                job.id,
                extra=job_fields(job),
            )
            os.kill(os.getpid(), signal.SIGKILL)
        limit = claims.run_limit(job, self._settings.max_run_s)
        request_id = f"{job.id}.{run}"
        active = _Active(job, run, request_id, limit, spec if job.webhook is not None else None)
        earlier = self._by_job.get(job.id)
        if earlier is not None:  # this claim succeeded: the earlier run here is not current
            self._fence_run(earlier, "a new run of it started here")
        self._active[request_id] = active
        self._by_job[job.id] = active
        on_delta = None
        if job.stream and self._streams is not None:
            on_delta = self._streams.writer(job.id, run)
        request = claims.engine_request(job, request_id, self._engine.render_chat, on_delta)
        if isinstance(request, Done):
            self._early.append(request)
            return None
        return request

    def _record(self, done: list[Done]) -> None:
        changes: list[Change] = []
        recorded: list[tuple[_Active, Done]] = []
        for item in done:
            active = self._active.pop(item.request_id, None)
            if active is None:
                continue
            if self._by_job.get(active.job.id) is active:
                del self._by_job[active.job.id]
            if self._fence.fenced(active.run):
                log.info(
                    "job %s's fenced run %s ended; nothing of it is written",
                    active.job.id,
                    active.run,
                    extra=job_fields(active.job),
                )
                continue
            try:
                change = outcomes.finished(
                    active.job, active.run, item, self._worker_id, self._settings.max_attempts
                )
            except Exception as exc:  # a bug of ours: the job still ends, with a reason
                log.exception(
                    "job %s failed unexpectedly", active.job.id, extra=job_fields(active.job)
                )
                change = outcomes.crashed(active.job, active.run, exc)
            if active.spec is not None:
                change = dataclasses.replace(change, spec=active.spec)
            changes.append(change)
            recorded.append((active, item))
        written = self._retrying(lambda: self._store.apply_many(changes))
        debug = log.isEnabledFor(logging.DEBUG)  # once per round: the hot path
        for (active, item), change, current in zip(recorded, changes, written, strict=True):
            job = change.job
            if job is None:
                continue
            if current is not None:
                log.info(
                    "job %s's run %s was not recorded: it is %s now",
                    job.id,
                    active.run,
                    current,
                    extra=job_fields(job),
                )
                continue
            if debug and job.status.terminal:
                log.debug(
                    "job finished: %s",
                    job.status.value,
                    extra={**job_fields(job), **_finished_fields(job)},
                )
            if self._metrics is not None:
                self._metrics.recorded(job, item.generation)
            if job.stream and self._streams is not None and job.status.terminal:
                self._streams.end(job.id, active.run)  # a re-queued job's next run goes on

    def _enforce_deadlines(self) -> None:
        now = time.time()
        for active in list(self._active.values()):
            if active.aborting is None and active.limit <= now:
                active.aborting = AbortReason.DEADLINE
                self._engine.abort(active.request_id, AbortReason.DEADLINE)

    def _verify_claims(self) -> None:
        """The heartbeat may have lapsed (a stall, a partition): announce this worker again,
        then read which claims are still its own (the janitor re-queues a worker's jobs only
        while its heartbeat is absent, so none is taken after the beat), and fence the rest."""
        if self._metrics is not None:
            self._metrics.cut_off()
        sent_at = self._retrying(self._beat)
        fenced = self._check_ledger()
        self._fence.verified(sent_at)
        log.warning(
            "claims checked after the cut-off: %d still this worker's, %d fenced",
            len(self._by_job),
            fenced,
        )

    def _fence_run(self, active: _Active, why: str) -> None:
        """``active``'s job is no longer this run's: abort it; nothing more of it is written."""
        self._fence.fence(active.run)
        if self._by_job.get(active.job.id) is active:
            del self._by_job[active.job.id]
        if self._metrics is not None:
            self._metrics.fenced()
        log.warning(
            "job %s: run %s is no longer this worker's (%s); aborted, nothing of it is written",
            active.job.id,
            active.run,
            why,
            extra=job_fields(active.job),
        )
        active.aborting = AbortReason.FENCED
        self._engine.abort(active.request_id, AbortReason.FENCED)

    def _check_ledger(self) -> int:
        """Read this worker's ledger: abort what was cancelled, fence the runs that are no
        longer its own, give back what it lost; how many runs it fenced."""
        jobs, cancels = self._retrying(lambda: self._store.ledger(self._worker_id))
        stale = [
            active
            for active in self._active.values()
            if jobs.get(active.job.id) != active.run and not self._fence.fenced(active.run)
        ]
        for active in stale:
            self._fence_run(active, "its claim was given to another run meanwhile")
        for job_id in cancels:
            self.cancel(job_id)
        lost = {job_id: run for job_id, run in jobs.items() if job_id not in self._by_job}
        if not lost:
            return len(stale)
        rows = self._retrying(lambda: self._store.read_many(list(lost)))
        changes = []
        for (job_id, run), row in zip(lost.items(), rows, strict=True):
            job = read_job(row)[0]
            if job is not None and job.status is JobStatus.RUNNING:
                log.warning(
                    "job %s is claimed by this worker but not running here",
                    job_id,
                    extra=job_fields(job),
                )
                max_attempts = self._settings.max_attempts
                changes.append(outcomes.lost(job, run, self._worker_id, max_attempts))
        self._retrying(lambda: self._store.apply_many(changes))
        return len(stale)

    def _retrying(self, call: Callable[[], _T]) -> _T:
        """``call()``, retried while Redis is unreachable (up to STRUCTQ_REDIS_OUTAGE_S), with
        deadlines enforced meanwhile (aborting needs no Redis)."""
        return retrying(call, self._settings.redis_outage_s, self._enforce_deadlines)


def _finished_fields(job: Job) -> dict[str, object]:
    """The "job finished" line's own fields: its status, error code and tokens."""
    fields: dict[str, object] = {"status": job.status.value}
    usage = job.result.usage if job.result is not None else None
    if job.error is not None:
        fields["code"] = job.error.code
        usage = job.error.usage
    if usage is not None:
        fields["prompt_tokens"] = usage.prompt_tokens
        fields["completion_tokens"] = usage.completion_tokens
    return fields
