"""How job messages enter the worker: taken in bulk, without a Celery task per job.

Celery stays the queue: the messages are Celery task messages (``shared.celery_message``) on
Celery's queue lists, one per priority; a message the worker takes is registered exactly as
kombu's consumer registers one (its unacknowledged hash and index, under structq's names in
``shared.keys.JOBS_TRANSPORT``), so kombu restores it to its queue after the visibility timeout
if it is never acknowledged; acknowledging is removing it from there, which the job's claim
does in the same atomic write that marks the job running (``shared.scripts``). The worker is a
Celery worker (its start-up and shutdown signals, its warm and cold shutdown), whose Celery
consumer listens on a queue of its own (and runs kombu's restoring of overdue messages).

What changes is how messages are taken: not one BRPOP, one unacknowledged-hash write and one
task request per message, but one script call taking every message the worker has room for
(STRUCTQ_MAX_INFLIGHT), highest priority first, with their jobs' records (``JobStore.take``).
An idle worker does not poll: it blocks on its model's doorbell (``shared.keys.bell_key``),
which every script that queues a message rings.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import redis
from celery import bootsteps

from shared.keys import bell_key

__all__ = ["Doorbell", "DrainOnShutdown"]

log = logging.getLogger(__name__)

# A blueprint's state once it is shutting down (not a restart of its steps).
_CLOSE: int = bootsteps.CLOSE  # type: ignore[attr-defined]  # not in celery-types' stubs

# Longest a worker waits on its doorbell before looking at the queue anyway (a message that
# kombu restored after its visibility timeout rings no bell).
_LISTEN_S = 1


class Doorbell:
    """A thread blocked on the model's doorbell; each ring (or each second without one) tells
    the dispatcher that messages may be waiting."""

    def __init__(self, client: redis.Redis, model: str, ring: Callable[[], None]) -> None:
        self._redis = client
        self._key = bell_key(model)
        self._ring = ring
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="structq-doorbell", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=_LISTEN_S + 1)

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                self._redis.brpop([self._key], timeout=_LISTEN_S)
            except redis.RedisError as exc:
                log.warning("doorbell: %s", exc)
                self._stop.wait(0.5)
            except Exception:  # the dispatcher still looks every second; keep listening
                log.exception("doorbell")
                self._stop.wait(0.5)
            self._ring()


class DrainOnShutdown(bootsteps.StartStopStep):
    """A consumer step that, on a warm shutdown, waits until the jobs in flight are recorded
    (or re-queued at the drain timeout) before Celery closes its connection. On a reconnect (a
    restart of the consumer's steps, not a shutdown) it does not wait: jobs go on running."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def stop(self, c: Any) -> None:
        if c.blueprint.state != _CLOSE:
            return
        from worker.app import drain_wait_s, runner

        try:
            job_runner = runner()
        except RuntimeError:
            return
        if not job_runner.wait_idle(drain_wait_s()):
            log.warning("jobs still in flight after the drain; leaving them to the janitor")
