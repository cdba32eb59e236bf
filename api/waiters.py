"""Long-polling without busy polling: wake waiting requests when their job finishes.

Each gateway process holds one Redis pub/sub subscription to ``DONE_CHANNEL`` (the script that
writes terminal statuses publishes the ids of the jobs it finished). A request that long-polls
registers an event for its job id *before* reading the record, so a completion that lands
between the read and the wait is never missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
import redis.exceptions

from api.background import stop_tasks
from shared.keys import DONE_CHANNEL

__all__ = ["CompletionWaiters", "Finished"]

log = logging.getLogger(__name__)


class Finished(asyncio.Event):
    """Set when a watched job finishes; remembers which ones did (``everything``: the listener
    lost Redis meanwhile, so any of them may have, unannounced)."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.everything = False

    def hit(self, job_id: str | None) -> None:
        if job_id is None:
            self.everything = True
        else:
            self.ids.add(job_id)
        self.set()


class CompletionWaiters:
    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._events: defaultdict[str, set[Finished]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="structq-done-listener")
        # Not fatal if Redis is down now: waits then end by their timeout, and the listener
        # keeps trying to subscribe.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), timeout=5)

    async def stop(self) -> None:
        await stop_tasks(self._task)

    @contextlib.asynccontextmanager
    async def watch(self, job_id: str) -> AsyncIterator[Finished]:
        """An event set when ``job_id`` reaches a terminal status, valid inside the block."""
        event = Finished()
        self._events[job_id].add(event)
        try:
            yield event
        finally:
            events = self._events.get(job_id)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._events[job_id]

    @contextlib.asynccontextmanager
    async def watch_any(self, job_ids: list[str]) -> AsyncIterator[Finished]:
        """One event set when any of ``job_ids`` reaches a terminal status, inside the block;
        it collects which."""
        event = Finished()
        for job_id in job_ids:
            self._events[job_id].add(event)
        try:
            yield event
        finally:
            for job_id in job_ids:
                events = self._events.get(job_id)
                if events is not None:
                    events.discard(event)
                    if not events:
                        del self._events[job_id]

    async def _listen(self) -> None:
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(DONE_CHANNEL)
                self._subscribed.set()
                async for message in pubsub.listen():
                    # One message per script call: the ids of every job it finished.
                    for job_id in message["data"].decode().split():
                        for event in self._events.get(job_id, ()):
                            event.hit(job_id)
            except (redis.exceptions.RedisError, OSError) as exc:
                self._subscribed.clear()
                log.warning("completion listener lost Redis (%s); resubscribing", exc)
                # Wake every waiter: each re-reads its job rather than miss a completion.
                for events in self._events.values():
                    for event in events:
                        event.hit(None)
                await asyncio.sleep(1)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
