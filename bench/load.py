"""The benchmark's load client: several processes, each an aiohttp session, so that the client
never bounds what it measures (its own CPU time is reported beside the servers').

``batch``: jobs submitted with ``POST /v1/jobs/batch`` (500 a request) and collected with
``POST /v1/jobs/wait``, as a client with a dataset would. ``single``: one ``POST /v1/jobs`` a job
that waits for its result (``Prefer: wait``), as a client with one job at a time would.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
import uuid
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["run_load"]

Body = dict[str, Any]
_BATCH = 500


async def _retried(call: Any) -> Any:
    """``call()``, again when the server closed a kept-alive connection as it was reused (the
    requests carry idempotency keys: sending one twice makes one job)."""
    import aiohttp

    for attempt in range(4):
        try:
            return await call()
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            if attempt == 3:
                raise
            await asyncio.sleep(0.1)
    raise AssertionError("unreachable")


async def _post_json(session: Any, path: str, body: Any, **kwargs: Any) -> tuple[int, Any]:
    async def call() -> tuple[int, Any]:
        async with session.post(path, json=body, **kwargs) as r:
            return r.status, await r.json()

    result: tuple[int, Any] = await _retried(call)
    return result


async def _batch(session: Any, bodies: list[Body]) -> list[dict[str, Any]]:
    ids: list[str] = []
    keyed = [{**body, "idempotency_key": uuid.uuid4().hex} for body in bodies]
    for start in range(0, len(keyed), _BATCH):
        chunk = {"jobs": keyed[start : start + _BATCH]}
        rows = (await _post_json(session, "/v1/jobs/batch", chunk))[1]["data"]
        refused = [row for row in rows if row["status"] not in (200, 202)]
        if refused:
            raise RuntimeError(f"the gateway refused jobs: {refused[:2]}")
        ids += [row["id"] for row in rows]
    jobs: list[dict[str, Any]] = []
    pending = ids
    while pending:
        # A dataset's client is in no hurry for each result: fewer, fuller answers.
        wait = {"ids": pending[:1000], "timeout_s": 60, "linger_ms": 250}
        data = (await _post_json(session, "/v1/jobs/wait", wait))[1]
        jobs += data["data"]
        done = {job["id"] for job in data["data"]}
        pending = [job_id for job_id in pending if job_id not in done]
    return jobs


async def _single(session: Any, bodies: list[Body], connections: int) -> list[dict[str, Any]]:
    gate = asyncio.Semaphore(connections)

    async def one(body: Body) -> dict[str, Any]:
        async with gate:
            # Submit and wait in one request (Prefer: wait); long-poll on if it is not done.
            headers = {"Prefer": "wait=60", "Idempotency-Key": uuid.uuid4().hex}
            status, job = await _post_json(session, "/v1/jobs", body, headers=headers)
            if status not in (200, 202):
                raise RuntimeError(f"the gateway answered {status}: {job}")

            async def poll(job_id: str = job["id"]) -> Any:
                async with session.get(f"/v1/jobs/{job_id}", params={"wait": "60"}) as r:
                    return await r.json()

            while job["status"] in ("queued", "running"):
                job = await _retried(poll)
            return job

    return list(await asyncio.gather(*(one(body) for body in bodies)))


def _client(url: str, bodies: list[Body], mode: str, connections: int, conn: Connection) -> None:
    import aiohttp

    async def run() -> list[dict[str, Any]]:
        connector = aiohttp.TCPConnector(limit=connections)
        timeout = aiohttp.ClientTimeout(total=900)
        async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:
            conn.send("ready")
            conn.recv()  # the go
            cpu[0] = time.process_time()
            if mode == "batch":
                return await _batch(session, bodies)
            return await _single(session, bodies, connections)

    cpu = [0.0]
    try:
        jobs = asyncio.run(run())
    except Exception as exc:  # the parent raises it, with what went wrong
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        conn.close()
        return
    used = time.process_time() - cpu[0]
    # Only what the benchmark reads, to keep the pipe light.
    statuses = [(job["status"], (job.get("engine") or {}).get("max_batch", 0)) for job in jobs]
    conn.send((statuses, used))
    conn.close()


def run_load(
    url: str, bodies: list[Body], mode: str = "batch", processes: int = 2, connections: int = 256
) -> tuple[float, list[tuple[str, int]], float]:
    """Send ``bodies`` from ``processes`` client processes at once; (wall seconds from the go to
    the last result, each job's (status, max_batch), the client processes' CPU seconds)."""
    ctx = multiprocessing.get_context("fork")
    pipes, procs = [], []
    for i in range(processes):
        parent, child = ctx.Pipe()
        proc = ctx.Process(
            target=_client, args=(url, bodies[i::processes], mode, connections, child), daemon=True
        )
        proc.start()
        child.close()
        pipes.append(parent)
        procs.append(proc)
    for pipe in pipes:
        if pipe.recv() != "ready":
            raise RuntimeError("a load client did not start")
    started = time.perf_counter()
    for pipe in pipes:
        pipe.send("go")
    results: list[tuple[str, int]] = []
    cpu = 0.0
    for pipe in pipes:
        statuses, used = pipe.recv()
        if statuses == "error":
            raise RuntimeError(f"a load client failed: {used}")
        results += statuses
        cpu += used
    wall = time.perf_counter() - started
    for proc in procs:
        proc.join(30)
    return wall, results, cpu
