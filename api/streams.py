"""Relays streaming jobs' output from their Redis streams (written by ``worker.streams``).

The relay never trusts the stream to be complete: when a job ends, whatever its final
record holds beyond what was relayed is sent too, so a delta lost on the way (or a job that
finished before anyone read its stream) still reaches the client whole. Deltas are numbered
within their run: a duplicate (a write the worker retried) is skipped, and after a gap the
relay sends no more deltas of that job, so what it sent stays a prefix of the final text.

A job re-run after its worker died or was cut off streams again from the start, under a new
run token. The relay follows the newest run and sends only what goes beyond the text already
sent, so a re-run that writes the same text (greedy and seeded, mostly) continues the stream
seamlessly. A re-run that writes otherwise (the engine's numerics change with the batch's
shape, so even a greedy pick can flip) gets a ``Reset``: what was sent is void, and the deltas
that follow spell the text from its start. Entries of a run the relay has left are never sent.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis

from shared.async_store import AsyncJobStore
from shared.jobs import JobPublic
from shared.keys import stream_key

__all__ = ["Delta", "Finished", "Reset", "job_events", "relay"]


@dataclass(frozen=True, slots=True)
class Delta:
    index: int
    text: str


@dataclass(frozen=True, slots=True)
class Reset:
    """What was sent of job ``index`` is void: a re-run wrote otherwise; its text follows."""

    index: int


@dataclass(frozen=True, slots=True)
class Finished:
    """Job ``index`` ended (``job``: its record, None if gone) or was still unfinished at the
    relay's timeout (``job.status`` not terminal). ``relayed``: the text sent as deltas."""

    index: int
    job: JobPublic | None
    relayed: str


async def relay(
    streams: aioredis.Redis,
    store: AsyncJobStore,
    job_ids: list[str],
    timeout_s: float,
    poll_s: float = 1.0,
    keepalive_s: float | None = None,
) -> AsyncIterator[Delta | Reset | Finished | None]:
    """Each job's deltas as they are published, then its ``Finished``; in arrival order.
    With ``keepalive_s``, a None after that long without anything else to yield."""
    keys = [stream_key(job_id) for job_id in job_ids]
    index = {key.encode(): i for i, key in enumerate(keys)}
    last = ["0-0"] * len(keys)
    run: list[bytes | None] = [None] * len(keys)  # the run whose deltas are relayed
    left: list[set[bytes]] = [set() for _ in keys]  # runs it followed before: never again
    written = [""] * len(keys)  # the text of that run so far
    number = [0] * len(keys)  # the number of its last delta read
    relayed = [""] * len(keys)  # what the client has, since the last reset
    ended = [False] * len(keys)
    done = [False] * len(keys)
    deadline = time.monotonic() + timeout_s
    checked = yielded = time.monotonic()
    while not all(done):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        reading: dict[Any, Any] = {
            keys[i]: last[i] for i in range(len(keys)) if not (done[i] or ended[i])
        }
        if reading:
            block_ms = max(1, int(min(poll_s, remaining) * 1000))
            # [(stream key, [(entry id, {field: value})])], all bytes (replies are not decoded).
            answer = cast(
                list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]] | None,
                await streams.xread(reading, count=512, block=block_ms),
            )
            for key, entries in answer or []:
                i = index[key]
                for entry_id, fields in entries:
                    last[i] = entry_id.decode()
                    token = fields[b"a"]
                    if token in left[i]:
                        continue  # a late entry of a run given up on
                    previous = run[i]
                    if token != previous:  # the first run heard of, or a re-run
                        if previous is not None:
                            left[i].add(previous)
                        run[i], written[i], number[i] = token, "", 0
                    if b"end" in fields:
                        ended[i] = True
                        break
                    if b"n" in fields:  # numbered deltas (workers before them: not)
                        n = int(fields[b"n"])
                        if n <= number[i]:
                            continue  # a write the worker retried
                        if n != number[i] + 1:  # a delta was never written: the record ends it
                            ended[i] = True
                            break
                        number[i] = n
                    written[i] += fields[b"d"].decode()
                    sent = relayed[i]
                    if written[i].startswith(sent):
                        new = written[i][len(sent) :]
                    elif sent.startswith(written[i]):
                        continue  # a re-run catching up with what was sent
                    else:
                        yield Reset(i)  # a re-run that wrote otherwise
                        new = written[i]
                    if new:
                        relayed[i] = written[i]
                        yielded = time.monotonic()
                        yield Delta(i, new)
        else:
            await asyncio.sleep(min(poll_s / 10, remaining))
        now = time.monotonic()
        if keepalive_s is not None and now - yielded >= keepalive_s:
            yielded = now
            yield None
        if not any(ended[i] and not done[i] for i in range(len(keys))) and now - checked < poll_s:
            continue
        checked = now
        pending = [i for i in range(len(keys)) if not done[i]]
        raws = await store.get_many_raw([job_ids[i] for i in pending])
        for i, raw in zip(pending, raws, strict=True):
            job = None if raw is None else JobPublic.model_validate_json(raw)
            if job is None or job.status.terminal:
                done[i] = True
                yield Finished(i, job, relayed[i])
    pending = [i for i in range(len(keys)) if not done[i]]
    raws = await store.get_many_raw([job_ids[i] for i in pending])
    for i, raw in zip(pending, raws, strict=True):
        yield Finished(i, None if raw is None else JobPublic.model_validate_json(raw), relayed[i])


async def job_events(
    streams: aioredis.Redis,
    store: AsyncJobStore,
    job_id: str,
    timeout_s: float,
    keepalive_s: float,
) -> AsyncIterator[str]:
    """One job's relay as server-sent events (``GET /v1/jobs/{id}/stream``): ``delta`` events
    (``{"text": ...}``), then ``done`` with its record, or ``timeout`` if it is unfinished after
    ``timeout_s``; a comment after ``keepalive_s`` without any."""
    async for event in relay(streams, store, [job_id], timeout_s, keepalive_s=keepalive_s):
        if event is None:
            yield ": keep-alive\n\n"
            continue
        if isinstance(event, Delta):
            yield _delta(event.text)
            continue
        if isinstance(event, Reset):
            yield _RESET
            continue
        job = event.job
        if job is None or not job.status.terminal:
            yield "event: timeout\ndata: {}\n\n"
            return
        text = job.result.text if job.result else (job.error.text if job.error else None)
        if text is not None and not text.startswith(event.relayed):
            yield _RESET  # the final record holds otherwise than the deltas sent
            if text:
                yield _delta(text)
        elif text and len(text) > len(event.relayed):
            yield _delta(text[len(event.relayed) :])
        yield f"event: done\ndata: {job.model_dump_json()}\n\n"


_RESET = "event: reset\ndata: {}\n\n"


def _delta(text: str) -> str:
    return f"event: delta\ndata: {json.dumps({'text': text})}\n\n"
