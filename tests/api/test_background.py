"""Stopping background tasks at shutdown, even one that swallows its first cancel (as a loop
riding out Redis errors does when the cancel lands in redis-py's read-timeout handling)."""

from __future__ import annotations

import asyncio

from api.background import stop_tasks


async def _swallows_one_cancel(log: list[str]) -> None:
    swallowed = False
    while True:
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            if swallowed:
                log.append("stopped")
                raise
            swallowed = True  # turned into an error and caught, as the loop would
            log.append("swallowed")


def test_a_task_that_loses_a_cancel_is_cancelled_again_and_stops() -> None:
    async def main() -> list[str]:
        log: list[str] = []
        task = asyncio.create_task(_swallows_one_cancel(log))
        plain = asyncio.create_task(asyncio.sleep(60))
        await asyncio.sleep(0.01)
        await asyncio.wait_for(stop_tasks(task, plain, None), timeout=10)
        assert task.done() and plain.done()
        return log

    assert asyncio.run(main()) == ["swallowed", "stopped"]
