"""The worker's announcement: a Redis key with a TTL, renewed while the engine is up.

It says which model and queue this worker serves; it exists only once the engine has loaded
and vanishes within STRUCTQ_HEARTBEAT_TTL_S of the worker dying, so readiness checks (tests, the
demo, probes) and the served-model list can rely on it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time

import redis

from shared.jobs import utcnow
from shared.keys import queue_name, worker_key

__all__ = ["Heartbeat"]

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(
        self,
        client: redis.Redis,
        worker_id: str,
        model: str,
        ttl_s: float,
        max_model_len: int | None = None,
    ) -> None:
        self._redis = client
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._key = worker_key(worker_id)
        self._value = json.dumps(
            {
                "worker_id": worker_id,
                "model": model,
                "queue": queue_name(model),
                "max_model_len": max_model_len,
                "pid": os.getpid(),
                "ready_at": utcnow().isoformat(),
            }
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="structq-heartbeat", daemon=True)

    def start(self) -> None:
        self._redis.set(self._key, self._value, px=self._ttl_ms)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        with contextlib.suppress(redis.RedisError):  # else the key expires by itself
            self._redis.delete(self._key)

    def _beat(self) -> None:
        while not self._stop.wait(self._ttl_ms / 3000):
            try:
                self._redis.set(self._key, self._value, px=self._ttl_ms)
            except redis.RedisError as exc:
                log.warning("heartbeat not written: %s", exc)
                time.sleep(1)
