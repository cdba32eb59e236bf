"""Stopping the gateway's background tasks (the completion listener, the batch driver) at
shutdown, however they take the cancel."""

from __future__ import annotations

import asyncio
import logging

__all__ = ["stop_tasks"]

log = logging.getLogger(__name__)

# A cancel is sent again this often while a task runs on, this many times, then it is left.
_RETRY_S = 2.0
_TRIES = 5


async def stop_tasks(*tasks: asyncio.Task[object] | None) -> None:
    """Cancel ``tasks`` and wait for them to end. A cancel can be lost: one that lands inside
    redis-py's handling of a read timeout comes out as a Redis error, which a loop that rides
    out Redis errors catches and goes on. So the cancel is sent again until the task ends (it
    lands the next time the loop waits), and a task still running after that is abandoned with
    a warning rather than holding up the shutdown."""
    pending = {task for task in tasks if task is not None and not task.done()}
    for _ in range(_TRIES):
        if not pending:
            break
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=_RETRY_S)
    for task in pending:
        log.warning("background task %s did not stop; leaving it", task.get_name())
    for ended in tasks:
        if ended is not None and ended.done() and not ended.cancelled():
            ended.exception()  # retrieved: an error it ended with is not reported again
