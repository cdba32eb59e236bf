"""Hears cancel requests: the gateway publishes the id of each running job a client
cancels on ``CANCEL_CHANNEL``; the worker that runs it aborts its engine request."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

from shared.keys import CANCEL_CHANNEL

__all__ = ["CancelListener"]

log = logging.getLogger(__name__)

# Longest one read of the subscription waits.
_READ_S = 1.0


class CancelListener:
    """``silent_s``: how long the subscription may go without a reply to its pings before the
    connection counts as dead (a black hole sends no reset) and is made anew."""

    def __init__(
        self, client: redis.Redis, on_cancel: Callable[[str], None], silent_s: float = 5.0
    ) -> None:
        self._redis = client
        self._on_cancel = on_cancel
        self._silent_s = silent_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="structq-cancels", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=2)

    def _listen(self) -> None:
        while not self._stop.is_set():
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(CANCEL_CHANNEL)
                self._receive(pubsub)
            except (redis.RedisError, OSError) as exc:
                # A cancel missed meanwhile is still seen: a running job re-checks its flag.
                log.warning("cancel listener lost Redis (%s); resubscribing", exc)
                self._stop.wait(1.0)
            finally:
                pubsub.close()

    def _receive(self, pubsub: redis.client.PubSub) -> None:
        """Hand on each cancel; ping when idle, and give up on a connection that stops
        answering (half a ``silent_s`` idle, then a ping, then half of it without a pong)."""
        heard_at = pinged_at = time.monotonic()
        while not self._stop.is_set():
            message = pubsub.get_message(timeout=_READ_S)
            now = time.monotonic()
            if message is not None:
                heard_at = now
                if message["type"] == "message":
                    self._on_cancel(message["data"].decode())
                continue
            if now - heard_at > self._silent_s:
                raise redis.ConnectionError(
                    f"no reply on the subscription for {now - heard_at:.1f} s"
                )
            if now - max(heard_at, pinged_at) > self._silent_s / 2:
                pubsub.ping()
                pinged_at = now
