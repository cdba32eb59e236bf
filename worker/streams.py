"""Publishes streaming jobs' output as it is generated: one Redis stream per job.

The engine thread must never wait on Redis, so it only puts deltas on a queue; this module's
thread writes whatever has piled up in one pipeline. A delta lost to a Redis hiccup is not
lost to the client: the gateway's relay ends every stream from the job's final record.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

import redis

from shared.keys import STREAM_TTL_S, stream_key

__all__ = ["DeltaPublisher"]

log = logging.getLogger(__name__)

# Most entries written in one pipeline; the rest wait for the next round.
_BATCH = 512
# A stream longer than this drops its oldest entries (the relay falls back to the record).
_MAXLEN = 20_000


class DeltaPublisher:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._queue: queue.SimpleQueue[tuple[str, str, str | None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._publish, name="structq-streams", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def delta(self, job_id: str, run: str, text: str) -> None:
        """Called on the engine thread: never blocks. ``run`` tags one run of the job."""
        if text:
            self._queue.put((job_id, run, text))

    def end(self, job_id: str, run: str) -> None:
        """The job's terminal status is written: nothing more comes."""
        self._queue.put((job_id, run, None))

    def _publish(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < _BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._write(batch)
                    return
                batch.append(item)
            self._write(batch)

    def _write(self, batch: list[tuple[str, str, str | None]]) -> None:
        for attempt in range(2):
            try:
                with self._redis.pipeline(transaction=False) as pipe:
                    for job_id, run, text in batch:
                        fields: dict[Any, Any] = (
                            {"a": run, "d": text} if text is not None else {"a": run, "end": 1}
                        )
                        pipe.xadd(stream_key(job_id), fields, maxlen=_MAXLEN, approximate=True)
                    for job_id in {job_id for job_id, _, _ in batch}:
                        pipe.expire(stream_key(job_id), STREAM_TTL_S)
                    pipe.execute()
                return
            except redis.RedisError as exc:
                if attempt:
                    log.warning("%d stream entries not written: %s", len(batch), exc)
                else:
                    time.sleep(0.2)
