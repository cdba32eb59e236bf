"""Publishes streaming jobs' output as it is generated: one Redis stream per job.

The engine thread must never wait on Redis, so it only puts deltas on a queue; this module's
thread writes whatever has piled up in one pipeline, retried in order while Redis is away.
Deltas are numbered within their run: the relay skips a duplicate, and after a gap (a delta
never written) relays no more deltas of the job but ends its stream from the final record. While the
worker is cut off (``worker.fencing``) nothing is written, and a fenced run's deltas never are:
a stalled worker's late output does not reach the readers of a job another run has taken over.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from shared.keys import STREAM_TTL_S, stream_key
from worker.fencing import Fence

__all__ = ["DeltaPublisher"]

log = logging.getLogger(__name__)

# Most entries written in one pipeline; the rest wait for the next round.
_BATCH = 512
# A stream longer than this drops its oldest entries (the relay falls back to the record).
_MAXLEN = 20_000
# How often a publisher holding its writes (the worker is cut off) looks again.
_HOLD_S = 0.05

# A stream entry to write: job id, run token, delta text (None: the run's end), its number.
_Entry = tuple[str, str, str | None, int]


class DeltaPublisher:
    """``outage_s``: how long a write is retried while Redis is unreachable (in order: the
    engine thread only queues, so nothing waits on it)."""

    def __init__(
        self, client: redis.Redis, fence: Fence | None = None, outage_s: float = 60.0
    ) -> None:
        self._redis = client
        self._fence = fence
        self._outage_s = outage_s
        self._stopping = threading.Event()
        self._queue: queue.SimpleQueue[_Entry | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._publish, name="structq-streams", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._queue.put(None)
        self._thread.join(timeout=5)

    def writer(self, job_id: str, run: str) -> Callable[[str], None]:
        """The delta callback of one run (``run``: its token), called on the engine thread: it
        never blocks. Each delta is numbered within its run, so the relay skips a duplicate (a
        write retried after its reply was lost) and notices a gap."""
        numbers = itertools.count(1)

        def delta(text: str) -> None:
            if text:
                self._queue.put((job_id, run, text, next(numbers)))

        return delta

    def end(self, job_id: str, run: str) -> None:
        """The job's terminal status is written: nothing more comes."""
        self._queue.put((job_id, run, None, 0))

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

    def _unfenced(self, batch: list[_Entry]) -> list[_Entry]:
        """``batch`` without fenced runs' entries, once the worker is not cut off."""
        fence = self._fence
        if fence is None:
            return batch
        while fence.cut_off() and not self._stopping.wait(_HOLD_S):
            pass  # until the dispatcher has checked the claims
        return [entry for entry in batch if not fence.fenced(entry[1])]

    def _write(self, batch: list[_Entry]) -> None:
        started = time.monotonic()
        delay = 0.05
        while batch := self._unfenced(batch):
            try:
                with self._redis.pipeline(transaction=False) as pipe:
                    for job_id, run, text, number in batch:
                        fields: dict[Any, Any] = (
                            {"a": run, "d": text, "n": number}
                            if text is not None
                            else {"a": run, "end": 1}
                        )
                        pipe.xadd(stream_key(job_id), fields, maxlen=_MAXLEN, approximate=True)
                    for job_id in {entry[0] for entry in batch}:
                        pipe.expire(stream_key(job_id), STREAM_TTL_S)
                    pipe.execute()
                return
            except redis.RedisError as exc:
                if time.monotonic() - started >= self._outage_s or self._stopping.is_set():
                    log.warning("%d stream entries not written: %s", len(batch), exc)
                    return
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
