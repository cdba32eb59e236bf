"""The worker's announcement: a Redis key with a TTL, renewed while the engine is up.

It says which model, adapters and queue this worker serves
(``shared.records.WorkerAnnouncement``); it exists only once the engine has loaded and
vanishes within STRUCTQ_HEARTBEAT_TTL_S of the worker dying, so readiness checks (tests, the
demo, probes), the served-model list and the janitor can rely on it. Its adapters are also
recorded for longer (``shared.keys.ADAPTERS``, with each beat), so the gateway routes their
jobs while the pool has no worker. After Redis comes back from an outage it is written again
within a few seconds (redis-py's own retries, then a new try every half second).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from typing import cast

import redis
from pydantic import ValidationError

from shared.jobs import utcnow
from shared.keys import ADAPTERS, WORKERS_INDEX, queue_name, worker_key
from shared.records import AdapterRecord, WorkerAnnouncement
from worker.fencing import Fence
from worker.settings import WorkerSettings

__all__ = ["Heartbeat"]

log = logging.getLogger(__name__)

# How soon a heartbeat not written (Redis away) is tried again.
_RETRY_S = 0.5


class Heartbeat:
    def __init__(
        self, client: redis.Redis, settings: WorkerSettings, fence: Fence | None = None
    ) -> None:
        self._redis = client
        self._fence = fence
        self._ttl_ms = max(1, int(settings.heartbeat_ttl_s * 1000))
        self._worker_id = settings.worker_id
        self._key = worker_key(settings.worker_id)
        self._model = settings.model
        self._adapters = {name: str(folder) for name, folder in settings.lora_modules.items()}
        self._value = WorkerAnnouncement(
            worker_id=settings.worker_id,
            model=settings.model,
            queue=queue_name(settings.model),
            max_model_len=settings.max_model_len,
            adapters=self._adapters,
            pid=os.getpid(),
            ready_at=utcnow(),
        ).model_dump_json()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="structq-heartbeat", daemon=True)

    def start(self) -> None:
        self._forget_dropped_adapters()
        self.beat()
        self._thread.start()

    def _forget_dropped_adapters(self) -> None:
        """Take out of the adapter record (``shared.keys.ADAPTERS``) the adapters of this pool
        that this worker no longer declares: the gateway then refuses their jobs (404) rather
        than queueing them for a pool that fails them. (While a pool rolls to a new list, a
        worker still on the old one writes its adapters back with its next beat.)"""
        try:
            records = cast(dict[bytes, bytes], self._redis.hgetall(ADAPTERS))
            dropped = []
            for name, raw in records.items():
                try:
                    parent = AdapterRecord.model_validate_json(raw).parent
                except ValidationError:
                    continue
                if parent == self._model and name.decode() not in self._adapters:
                    dropped.append(name)
            if dropped:
                log.info("adapters no longer declared: %s", b", ".join(dropped).decode())
                self._redis.hdel(ADAPTERS, *dropped)
        except redis.RedisError as exc:  # the record just stays; the gateway's TTL ages it out
            log.warning("could not tidy the adapter record: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=2)
        # Else the key expires by itself.
        with contextlib.suppress(redis.RedisError), self._redis.pipeline() as pipe:
            pipe.delete(self._key)
            pipe.zadd(WORKERS_INDEX, {self._worker_id: 0})
            pipe.execute()

    def beat(self) -> float:
        """Write the announcement now; the ``time.monotonic()`` it was sent at (the key lives
        at least the TTL from then). Raises what Redis raised."""
        sent_at = time.monotonic()
        self._announce()
        if self._fence is not None:
            self._fence.beat(sent_at, time.monotonic())
        return sent_at

    def _announce(self) -> None:
        with self._redis.pipeline() as pipe:
            pipe.set(self._key, self._value, px=self._ttl_ms)
            pipe.zadd(WORKERS_INDEX, {self._worker_id: int(time.time() * 1000) + self._ttl_ms})
            if self._adapters:
                now = time.time()
                records = {
                    name: AdapterRecord(parent=self._model, root=root, seen=now).model_dump_json()
                    for name, root in self._adapters.items()
                }
                pipe.hset(ADAPTERS, mapping=records)  # type: ignore[arg-type]
            pipe.execute()

    def _beat(self) -> None:
        wait = self._ttl_ms / 3000
        while not self._stop.wait(wait):
            try:
                self.beat()
                wait = self._ttl_ms / 3000
            except redis.RedisError as exc:
                log.warning("heartbeat not written: %s", exc)
                wait = _RETRY_S
            except Exception:  # never let the announcement die with the worker still up
                log.exception("heartbeat not written")
                wait = _RETRY_S
