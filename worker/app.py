"""The Celery app of the worker, and the lifecycle of its resident engine.

The engine is built once, in ``worker_init`` (before the worker consumes anything), and shut
down in ``worker_shutdown``, so Celery's shutdown signals also stop vLLM's EngineCore process.
The pool must be ``threads`` (or ``solo``): vLLM spawns its EngineCore process, which a
prefork child cannot host. ``python -m worker`` starts it with the right options.

Ways out, and what happens to the jobs:

- SIGTERM (warm shutdown): Celery stops consuming; running jobs get STRUCTQ_DRAIN_TIMEOUT_S
  to finish, then the rest are aborted and re-queued; the engine is shut down; exit 0.
- The engine dies: running jobs are re-queued (within max_attempts), the worker stops
  consuming and exits 1 so that its supervisor starts a fresh one.
- SIGKILL: nothing runs here; the gateway's janitor re-queues this worker's running jobs once
  its heartbeat key expires, and vLLM's EngineCore exits on its own (see ``worker.orphans``).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading

from celery import Celery
from celery.signals import worker_init, worker_shutdown, worker_shutting_down

from shared.keys import QUEUE_SEP, kombu_priority_steps, queue_name
from shared.redis_pools import sync_client
from shared.store import JobStore
from worker.celery_config import reliable_threads_worker
from worker.settings import WorkerSettings

__all__ = ["app", "celery_config", "exit_code", "runner", "settings"]

log = logging.getLogger(__name__)

settings = WorkerSettings.load()

# vLLM forks its engine processes by default where it can; forking a process that runs
# hundreds of task threads is unsafe. (On CPU vLLM spawns anyway.)
os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")


def celery_config(settings: WorkerSettings) -> dict[str, object]:
    """The GPU worker's Celery settings; any other Celery client of its queues must use these
    too (the visibility timeout and priority steps must agree wherever Celery reads them)."""
    transport = {
        # A message unacknowledged this long is handed out again: longer than any job runs.
        "visibility_timeout": settings.visibility_timeout_s,
        # Job priorities: one Redis list per step, popped highest priority first.
        "priority_steps": kombu_priority_steps(),
        "sep": QUEUE_SEP,
        "queue_order_strategy": "priority",
    }
    return reliable_threads_worker(queue_name(settings.model), settings.max_inflight, transport)


app = Celery("structq", broker=settings.redis_url, include=["worker.tasks"])
app.conf.update(celery_config(settings))

_state: dict[str, object] = {}


def runner():  # -> worker.runner.JobRunner (imported lazily: it pulls in the engine module)
    try:
        return _state["runner"]
    except KeyError:
        raise RuntimeError("the engine is not started in this process") from None


def _engine_died(exc: BaseException) -> None:
    # Stop consuming and exit 1 (Celery's warm shutdown with a failure code): the jobs that
    # were running have been failed over to the queue by their task threads.
    from celery.worker import state

    log.critical("engine died (%r); shutting the worker down with exit code 1", exc)
    _state["exit_code"] = 1
    state.should_stop = 1


def exit_code() -> int:
    """The worker process's exit code once Celery has stopped (``python -m worker`` exits with
    it: Celery's ``worker_main`` drops the code of a shutdown it did not start)."""
    return int(_state.get("exit_code", 0))  # type: ignore[call-overload]


@worker_init.connect
def _start_engine(**_: object) -> None:
    from worker.cancels import CancelListener
    from worker.engine import Engine
    from worker.heartbeat import Heartbeat
    from worker.model import prepare_default_model
    from worker.orphans import guard_engine_processes
    from worker.runner import JobRunner
    from worker.streams import DeltaPublisher

    try:
        model_path = settings.model_path or prepare_default_model(settings.cache_dir)
        engine = Engine.start(settings, model_path, on_dead=_engine_died)
        guard_engine_processes()
    except Exception:
        log.exception("could not start the engine")
        # Celery logs and swallows exceptions from signal handlers; a worker without an engine
        # must not consume jobs, so leave now.
        raise SystemExit(1) from None
    # One connection per task thread at most, plus the heartbeat, cancel listener and streams.
    client = sync_client(settings.redis_url, max_connections=settings.max_inflight + 5)
    streams = DeltaPublisher(client)
    streams.start()
    _state["streams"] = streams
    job_runner = JobRunner(JobStore(client, settings.job_ttl_s), engine, settings, streams)
    _state["engine"] = engine
    _state["runner"] = job_runner
    cancels = CancelListener(client, job_runner.cancel)
    cancels.start()
    _state["cancels"] = cancels
    heartbeat = Heartbeat(
        client,
        settings.worker_id,
        settings.model,
        settings.heartbeat_ttl_s,
        max_model_len=settings.max_model_len,
    )
    heartbeat.start()
    _state["heartbeat"] = heartbeat
    log.info("engine ready; consuming %s", queue_name(settings.model))


@worker_shutting_down.connect
def _shutting_down(how: str = "", **_: object) -> None:
    job_runner = _state.get("runner")
    if how == "Warm" and job_runner is not None:
        # Celery now waits for the running tasks; give them the drain timeout, then re-queue.
        job_runner.drain()  # type: ignore[attr-defined]
        log.info("draining: running jobs get %.0f s to finish", settings.drain_timeout_s)
        timer = threading.Timer(settings.drain_timeout_s, job_runner.requeue_running)  # type: ignore[attr-defined]
        timer.daemon = True
        timer.start()
    elif how == "Cold":
        # Celery's cold shutdown (SIGQUIT, a second SIGINT) never sends worker_shutdown, and
        # would leave vLLM's EngineCore process running without its parent.
        _stop_engine()


@worker_shutdown.connect
def _stop_engine(**_: object) -> None:
    """Warm shutdown: in-flight tasks are done (finished or re-queued); free the engine."""
    for name in ("heartbeat", "cancels", "streams"):
        part = _state.pop(name, None)
        if part is not None:
            part.stop()  # type: ignore[attr-defined]
    engine = _state.pop("engine", None)
    if engine is not None:
        log.info("shutting the engine down")
        engine.shutdown()  # type: ignore[attr-defined]


# Any other way out of the interpreter (an exception, sys.exit) still frees the engine.
atexit.register(_stop_engine)
