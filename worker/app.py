"""The Celery app of the worker, and the lifecycle of its resident engine.

The engine is built once, in ``worker_init`` (before the worker consumes anything), and shut
down in ``worker_shutdown``, so Celery's shutdown signals also stop vLLM's EngineCore process.
The pool must be ``threads`` (or ``solo``): vLLM spawns its EngineCore process, which a
prefork child cannot host. ``python -m worker`` starts it with the right options.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal

import redis
from celery import Celery
from celery.signals import worker_init, worker_shutdown, worker_shutting_down

from shared.keys import queue_name
from shared.store import JobStore
from worker.heartbeat import Heartbeat
from worker.settings import WorkerSettings

__all__ = ["app", "runner", "settings"]

log = logging.getLogger(__name__)

settings = WorkerSettings.load()

app = Celery("structq", broker=settings.redis_url, include=["worker.tasks"])
app.conf.update(
    task_default_queue=queue_name(settings.model),
    task_ignore_result=True,
    # A job's message is acknowledged once the job has run, not when it is received.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # Each thread holds at most one reserved message beyond what it runs.
    worker_prefetch_multiplier=1,
    worker_pool="threads",
    worker_concurrency=settings.max_inflight,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

_state: dict[str, object] = {}


def runner():  # -> worker.runner.JobRunner (imported lazily: it pulls in the engine module)
    try:
        return _state["runner"]
    except KeyError:
        raise RuntimeError("the engine is not started in this process") from None


def _engine_died(exc: BaseException) -> None:
    # Stop consuming: Celery's warm shutdown lets in-flight tasks record their failure.
    log.critical("engine died (%r); shutting the worker down", exc)
    os.kill(os.getpid(), signal.SIGTERM)


@worker_init.connect
def _start_engine(**_: object) -> None:
    from worker.engine import Engine
    from worker.model import prepare_default_model
    from worker.runner import JobRunner

    try:
        model_path = settings.model_path or prepare_default_model(settings.cache_dir)
        engine = Engine.start(settings, model_path, on_dead=_engine_died)
    except Exception:
        log.exception("could not start the engine")
        # Celery logs and swallows exceptions from signal handlers; a worker without an engine
        # must not consume jobs, so leave now.
        raise SystemExit(1) from None
    # One connection per task thread at most, plus the heartbeat: a burst never runs out.
    pool = redis.BlockingConnectionPool.from_url(
        settings.redis_url, max_connections=settings.max_inflight + 4, timeout=30
    )
    client = redis.Redis(connection_pool=pool)
    _state["engine"] = engine
    _state["runner"] = JobRunner(JobStore(client, settings.job_ttl_s), engine, settings.worker_id)
    heartbeat = Heartbeat(client, settings.worker_id, settings.model)
    heartbeat.start()
    _state["heartbeat"] = heartbeat
    log.info("engine ready; consuming %s", queue_name(settings.model))


@worker_shutdown.connect
def _stop_engine(**_: object) -> None:
    """Warm shutdown (SIGTERM, first SIGINT): in-flight tasks are done; free the engine."""
    heartbeat = _state.pop("heartbeat", None)
    if heartbeat is not None:
        heartbeat.stop()  # type: ignore[attr-defined]
    engine = _state.pop("engine", None)
    if engine is not None:
        log.info("shutting the engine down")
        engine.shutdown()  # type: ignore[attr-defined]


@worker_shutting_down.connect
def _cold_stop(how: str = "", **_: object) -> None:
    # Celery's cold shutdown (SIGQUIT, a second SIGINT) never sends worker_shutdown, and would
    # leave vLLM's EngineCore process running without its parent.
    if how == "Cold":
        _stop_engine()


# Any other way out of the interpreter (an exception, sys.exit) still frees the engine.
atexit.register(_stop_engine)
