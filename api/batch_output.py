"""A batch's last step: its output and error files, written from its job records in input
order, streaming (a chunk of lines read, answered and written at a time), then its final
status. One line in one of the two files per non-empty input line (``api.batch_lines``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import cast

import redis.asyncio as aioredis

from api import batch_lines
from api.batches import Batches
from api.files import Files
from shared.async_store import AsyncJobStore
from shared.batches import Batch, BatchStatus
from shared.errors import ErrorCode
from shared.jobs import JobPublic
from shared.keys import BATCH_LINES_PREFIX, BATCH_PREFIX, BATCHES_ACTIVE

__all__ = ["BatchOutput"]

log = logging.getLogger(__name__)

# Input lines answered per round trip.
_CHUNK = 200


class BatchOutput:
    def __init__(
        self, client: aioredis.Redis, store: AsyncJobStore, batches: Batches, files: Files
    ) -> None:
        self._redis = client
        self._store = store
        self._batches = batches
        self._files = files

    async def finalize(self, batch: Batch) -> None:
        """Write the output and error files, streaming; the batch's final status."""
        final_raw = cast(bytes | None, await self._redis.hget(BATCH_PREFIX + batch.id, "final"))
        final = BatchStatus((final_raw or b"completed").decode())
        never_ran = (
            ErrorCode.BATCH_EXPIRED if final is BatchStatus.EXPIRED else ErrorCode.BATCH_CANCELLED
        )
        output = self._files.produce(f"{batch.id}_output.jsonl", "batch_output", batch.owner)
        errors = self._files.produce(f"{batch.id}_error.jsonl", "batch_output", batch.owner)
        async for good, line in self._answers(batch, never_ran):
            await (output if good else errors).write(line + b"\n")
        output_file, error_file = await output.finish(), await errors.finish()
        stamp = {
            BatchStatus.COMPLETED: "completed_at",
            BatchStatus.CANCELLED: "cancelled_at",
            BatchStatus.EXPIRED: "expired_at",
        }[final]
        done = batch.model_copy(
            update={
                "status": final,
                stamp: int(time.time()),
                "output_file_id": None if output_file is None else output_file.id,
                "error_file_id": None if error_file is None else error_file.id,
            }
        )
        if await self._batches.update(done, (BatchStatus.FINALIZING,)) is None:
            await self._redis.zrem(BATCHES_ACTIVE, batch.id)
            log.info("batch %s %s", batch.id, final.value)
        else:  # finalized meanwhile by another driver: drop this one's files
            for produced in (output_file, error_file):
                if produced is not None:
                    await self._files.delete(produced.id, None)

    async def _answers(
        self, batch: Batch, never_ran: ErrorCode
    ) -> AsyncIterator[tuple[bool, bytes]]:
        """Per non-empty input line, in order: (is it an output line, the line)."""
        pending: list[tuple[int, bytes]] = []
        number = -1
        async for raw in self._files.lines(batch.input_file_id):
            number += 1
            if raw.strip():
                pending.append((number, raw))
            if len(pending) == _CHUNK:
                for item in await self._answer_chunk(batch, pending, never_ran):
                    yield item
                pending.clear()
        if pending:
            for item in await self._answer_chunk(batch, pending, never_ran):
                yield item

    async def _answer_chunk(
        self, batch: Batch, pending: list[tuple[int, bytes]], never_ran: ErrorCode
    ) -> list[tuple[bool, bytes]]:
        numbers = [str(n) for n, _ in pending]
        entries = cast(
            list[bytes | None], await self._redis.hmget(BATCH_LINES_PREFIX + batch.id, numbers)
        )
        parsed = [None if e is None else json.loads(e) for e in entries]
        ids = [i for p in parsed if p for i in p.get("j", [])]
        records = dict(zip(ids, await self._store.get_many_raw(ids), strict=True))
        out = []
        for (_, raw), entry in zip(pending, parsed, strict=True):
            if entry is None:
                out.append((False, batch_lines.never_ran(raw, never_ran)))
            elif "e" in entry:
                out.append((False, batch_lines.refused_line(entry["c"], entry["e"])))
            else:
                found = [records.get(i) for i in entry["j"]]
                jobs = [None if r is None else JobPublic.model_validate_json(r) for r in found]
                out.append(batch_lines.answer(batch.endpoint, entry["c"], jobs, entry["n"]))
        return out
