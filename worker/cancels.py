"""Hears cancel requests: the gateway publishes the id of each running job a client
cancels on ``CANCEL_CHANNEL``; the worker that runs it aborts its engine request."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis

from shared.keys import CANCEL_CHANNEL

__all__ = ["CancelListener"]

log = logging.getLogger(__name__)


class CancelListener:
    def __init__(self, client: redis.Redis, on_cancel: Callable[[str], None]) -> None:
        self._redis = client
        self._on_cancel = on_cancel
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
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._on_cancel(message["data"].decode())
            except (redis.RedisError, OSError) as exc:
                # A cancel missed meanwhile is still seen: a running job re-checks its flag.
                log.warning("cancel listener lost Redis (%s); resubscribing", exc)
                self._stop.wait(1.0)
            finally:
                pubsub.close()
