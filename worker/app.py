"""The Celery app of the worker, and the lifecycle of its resident engine.

The engine is built once, in ``worker_init`` (before the worker consumes anything), and shut
down in ``worker_shutdown``, so Celery's shutdown signals also stop vLLM's EngineCore process.
The pool must be ``threads`` (or ``solo``): vLLM spawns its EngineCore process, which a
prefork child cannot host. The pool runs nothing, though: the worker takes its model's job
messages itself, in bulk (``worker.intake``, ``worker.runner``), and its Celery consumer listens
on a queue of its own (``worker_queue``). ``python -m worker`` starts it with the right options.

Ways out, and what happens to the jobs:

- SIGTERM (warm shutdown): Celery stops consuming; running jobs get STRUCTQ_DRAIN_TIMEOUT_S
  to finish, then the rest are aborted and re-queued; the engine is shut down; exit 0.
- The engine dies, or Redis stays unreachable past STRUCTQ_REDIS_OUTAGE_S: running jobs are
  re-queued (within max_attempts; by the janitor, for Redis), the worker stops consuming and
  exits 1 so that its supervisor starts a fresh one.
- SIGKILL: nothing runs here; the gateway's janitor re-queues this worker's running jobs once
  its heartbeat key is gone, and vLLM's EngineCore exits on its own (see ``worker.orphans``).
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from celery import Celery
from celery.signals import (
    setup_logging,
    worker_init,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)

from shared import logs
from shared.keys import (
    JOBS_TRANSPORT,
    QUEUE_SEP,
    WORKER_QUEUE_PREFIX,
    kombu_priority_steps,
)
from shared.redis_pools import (
    celery_broker,
    celery_silent_connection_options,
    dead_connection_bound_s,
    sync_client,
)
from shared.store import JobStore
from worker.celery_config import reliable_threads_worker
from worker.intake import DrainOnShutdown
from worker.settings import WorkerSettings

if TYPE_CHECKING:
    from worker.cancels import CancelListener
    from worker.engine import Engine
    from worker.heartbeat import Heartbeat
    from worker.intake import Doorbell
    from worker.metrics import JobMetrics
    from worker.runner import JobRunner
    from worker.streams import DeltaPublisher

__all__ = [
    "app",
    "celery_config",
    "drain_wait_s",
    "exit_code",
    "runner",
    "settings",
    "worker_queue",
]

log = logging.getLogger(__name__)

settings = WorkerSettings.load()

# vLLM forks its engine processes by default where it can; forking a process that runs
# several threads is unsafe. (On CPU vLLM spawns anyway.)
os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")


def worker_queue(settings: WorkerSettings) -> str:
    """The Celery queue this worker's Celery consumer listens on (its own)."""
    return f"{WORKER_QUEUE_PREFIX}{settings.worker_id}"


def celery_config(settings: WorkerSettings) -> dict[str, object]:
    """The GPU worker's Celery settings; any other Celery client of its queues must use these
    too (the visibility timeout, priority steps and unacked keys must agree wherever Celery
    reads them)."""
    _, transport = celery_broker(settings.redis_url)
    transport.update(
        {
            **celery_silent_connection_options(settings.redis_socket_timeout_s),
            # A message unacknowledged this long is handed out again: longer than any job runs.
            "visibility_timeout": settings.visibility_timeout_s,
            # Job priorities: one Redis list per step, popped highest priority first.
            "priority_steps": kombu_priority_steps(),
            "sep": QUEUE_SEP,
            "queue_order_strategy": "priority",
            **JOBS_TRANSPORT,
        }
    )
    config = reliable_threads_worker(worker_queue(settings), 1, transport)
    # No task runs in this worker's pool (its jobs are not Celery tasks): nothing to cancel
    # when the connection drops, and Celery's warning about that default is moot.
    config["worker_cancel_long_running_tasks_on_connection_loss"] = True
    return config


app = Celery("structq", broker=celery_broker(settings.redis_url)[0])
app.conf.update(celery_config(settings))
app.steps["consumer"].add(DrainOnShutdown)


@setup_logging.connect
def _setup_logging(**_: object) -> None:
    """Celery leaves the process's logging to this (it configures none of its own then): every
    line through structq's handler (``shared.logs``), vLLM's too, in its engine processes as
    well. Done once, at ``worker_init`` (before the engine starts), which Celery sends first."""
    _setup_logs()


@functools.cache
def _setup_logs() -> None:
    applied = logs.setup(
        settings.log_format, settings.log_level, worker=settings.worker_id, model=settings.model
    )
    logs.vllm_config_file(applied)


@dataclass
class _Resident:
    """What the worker process holds while it runs."""

    engine: Engine | None = None
    runner: JobRunner | None = None
    doorbell: Doorbell | None = None
    heartbeat: Heartbeat | None = None
    cancels: CancelListener | None = None
    streams: DeltaPublisher | None = None
    metrics: JobMetrics | None = None
    exit_code: int = 0
    stopped: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


_resident = _Resident()


def runner() -> JobRunner:
    if _resident.runner is None:
        raise RuntimeError("the engine is not started in this process")
    return _resident.runner


def drain_wait_s() -> float:
    """How long a warm shutdown waits for the jobs in flight: the drain timeout, then the time
    to abort and re-queue what is left."""
    return settings.drain_timeout_s + 30


def _fatal(exc: BaseException) -> None:
    # Stop consuming and exit 1 (Celery's warm shutdown with a failure code): the jobs that
    # were running have been failed over to the queue, or will be by the janitor.
    from celery.worker import state

    log.critical("stopping the worker with exit code 1: %r", exc)
    _resident.exit_code = 1
    if _resident.runner is not None:
        _resident.runner.drain()
    state.should_stop = 1  # type: ignore[assignment]  # celery-types says None; Celery takes a code


def exit_code() -> int:
    """The worker process's exit code once Celery has stopped (``python -m worker`` exits with
    it: Celery's ``worker_main`` drops the code of a shutdown it did not start)."""
    return _resident.exit_code


@worker_init.connect
def _start_engine(**_: object) -> None:
    from shared.metrics import serve as serve_metrics
    from worker.cancels import CancelListener
    from worker.engine import Engine
    from worker.fencing import Fence
    from worker.heartbeat import Heartbeat
    from worker.intake import Doorbell
    from worker.metrics import JobMetrics
    from worker.model import prepare_default_model
    from worker.orphans import guard_engine_processes
    from worker.runner import JobRunner
    from worker.streams import DeltaPublisher

    _setup_logs()

    def wake_runner() -> None:  # the engine finished something: the dispatcher records it
        if _resident.runner is not None:
            _resident.runner.wake()

    metrics = JobMetrics(settings.model)
    serve_metrics(settings.metrics_port)

    def engine_died(exc: BaseException) -> None:
        metrics.engine_died()
        _fatal(exc)

    try:
        model_path = settings.model_path or prepare_default_model(settings.cache_dir)
        engine = Engine.start(settings, model_path, on_dead=engine_died, on_done=wake_runner)
        guard_engine_processes()
    except Exception:
        log.exception("could not start the engine")
        # Celery logs and swallows exceptions from signal handlers; a worker without an engine
        # must not consume jobs, so leave now.
        raise SystemExit(1) from None
    client = sync_client(
        settings.redis_url, max_connections=16, socket_timeout_s=settings.redis_socket_timeout_s
    )
    fence = Fence(settings.heartbeat_ttl_s)
    streams = DeltaPublisher(client, fence, settings.redis_outage_s)
    streams.start()
    # Its own connections, quick to give up on a silent one: a worker back from a partition
    # announces itself within a beat's timeout and a retry interval of the heal.
    beats = sync_client(
        settings.redis_url,
        max_connections=2,
        socket_timeout_s=min(settings.redis_socket_timeout_s, settings.heartbeat_ttl_s / 3),
        retries=0,
    )
    heartbeat = Heartbeat(beats, settings, fence)
    store = JobStore(client, settings.job_ttl_s)
    job_runner = JobRunner(
        store,
        engine,
        settings,
        streams,
        _fatal,
        metrics,
        fence=fence,
        beat=heartbeat.beat,
        claims_need_heartbeat=True,
    )
    metrics.watch(lambda: job_runner.in_flight, lambda: engine.steps)
    _resident.metrics = metrics
    _resident.engine, _resident.runner, _resident.streams = engine, job_runner, streams
    _resident.cancels = CancelListener(
        client, job_runner.cancel, dead_connection_bound_s(settings.redis_socket_timeout_s)
    )
    _resident.heartbeat = heartbeat
    _resident.doorbell = Doorbell(client, settings.model, job_runner.ring)
    log.info("engine ready")


@worker_ready.connect
def _start_taking_jobs(**_: object) -> None:
    """Celery is up (its shutdown signals are handled from now on): take jobs, and announce
    this worker (its announcement is what readiness checks wait for)."""
    if _resident.runner is None:
        return
    for part in (_resident.runner, _resident.cancels, _resident.heartbeat, _resident.doorbell):
        if part is not None:
            part.start()
    log.info("taking jobs for %s", settings.model)


@worker_shutting_down.connect
def _shutting_down(how: str = "", **_: object) -> None:
    job_runner = _resident.runner
    if how == "Warm" and job_runner is not None:
        # Celery now stops consuming; the jobs running get the drain timeout, then are re-queued.
        job_runner.drain()
        if _resident.metrics is not None:
            _resident.metrics.drain()
        log.info("draining: running jobs get %.0f s to finish", settings.drain_timeout_s)
        timer = threading.Timer(settings.drain_timeout_s, job_runner.requeue_running)
        timer.daemon = True
        timer.start()
    elif how == "Cold":
        # Celery's cold shutdown (SIGQUIT, a second SIGINT) never sends worker_shutdown, and
        # would leave vLLM's EngineCore process running without its parent.
        _stop_engine()


@worker_shutdown.connect
def _stop_engine(**_: object) -> None:
    """Warm shutdown: the jobs in flight are recorded (or re-queued); free the engine."""
    with _resident.lock:
        if _resident.stopped:
            return
        _resident.stopped = True
    parts = (
        _resident.doorbell,
        _resident.heartbeat,
        _resident.cancels,
        _resident.runner,
        _resident.streams,
    )
    for part in parts:
        if part is not None:
            part.stop()
    if _resident.engine is not None:
        log.info("shutting the engine down")
        _resident.engine.shutdown()


# Any other way out of the interpreter (an exception, sys.exit) still frees the engine.
atexit.register(_stop_engine)
