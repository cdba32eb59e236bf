"""The job scripts' arguments, laid out as ``shared.scripts`` documents them, and their
replies read back: shared by both job stores (``shared.store`` for the worker,
``shared.async_store`` for the gateway), so the two never disagree on a layout.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shared.celery_message import task_message
from shared.jobs import Job, join_record
from shared.keys import (
    ALL_INDEX,
    CLIENT_INDEX_PREFIX,
    DEAD_LETTER,
    DEADLINES,
    DONE_CHANNEL,
    JOBS_TRANSPORT,
    MODEL_QUEUED_PREFIX,
    STATUS_INDEX_PREFIX,
    WEBHOOK_QUEUE,
    WEBHOOK_TASK_NAME,
    WORKER_CANCELS_PREFIX,
    WORKER_JOBS_PREFIX,
    bell_key,
    delivery_key,
    idempotency_key,
    job_key,
    model_queued_index,
    worker_key,
)
from shared.lifecycle import Change, enqueue_message

__all__ = [
    "Created",
    "NewJob",
    "ScriptCalls",
    "created",
    "decode",
    "outcomes",
    "public_record",
]


def public_record(spec: bytes, state: bytes, hooks: Sequence[bytes]) -> bytes:
    """The stored job as the API returns it (``JobPublic``): spec, state and webhook attempts."""
    return join_record(spec, state)[:-1] + b',"webhook_deliveries":[' + b",".join(hooks) + b"]}"


def decode(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job to create, with its Idempotency-Key: (client, key, body hash)."""

    job: Job
    idempotency: tuple[str, str, str] | None = None


@dataclass(frozen=True, slots=True)
class Created:
    """What creating a job did: stored it, found the idempotency key's job, or hit a cap."""

    record: bytes | None  # the public record JSON, when created
    earlier_id: str | None = None  # the job an Idempotency-Key already names
    earlier_hash: str | None = None  # the body hash that key was used with
    refused: tuple[str, int] | None = None  # (cap, current count): a cap refused the job


class ScriptCalls:
    """Script arguments, laid out as ``shared.scripts`` documents them."""

    def __init__(self, ttl_s: int) -> None:
        self.ttl_s = ttl_s

    def create(
        self, new: Sequence[NewJob], caps: tuple[int, int], idempotency_ttl_s: int
    ) -> tuple[list[str], list[Any], list[bytes]]:
        keys: list[str] = []
        args: list[Any] = [
            _now_ms(),
            self.ttl_s,
            idempotency_ttl_s,
            caps[0],
            caps[1],
            STATUS_INDEX_PREFIX,
            CLIENT_INDEX_PREFIX,
            ALL_INDEX,
            DEADLINES,
        ]
        records = []
        for item in new:
            job = item.job
            spec, state = job.spec_json(), job.state_json()
            records.append(public_record(spec.encode(), state.encode(), []))
            message = enqueue_message(job)
            idem_key, idem_value = "", ""
            if item.idempotency is not None:
                client, key, body_hash = item.idempotency
                idem_key, idem_value = idempotency_key(client, key), f"{body_hash} {job.id}"
            deadline = job.deadline_ts()
            keys += [
                job_key(job.id),
                message.queue_list,
                idem_key,
                model_queued_index(job.model),
                bell_key(job.model),
            ]
            args += [
                job.id,
                spec,
                state,
                job.client or "",
                job.model,
                message.tag,
                message.body,
                "" if deadline is None else deadline,
                idem_value,
            ]
        return keys, args, records

    def transition(self, changes: Sequence[Change]) -> tuple[list[str], list[Any]]:
        keys: list[str] = []
        args: list[Any] = [
            _now_ms(),
            self.ttl_s,
            STATUS_INDEX_PREFIX,
            CLIENT_INDEX_PREFIX,
            MODEL_QUEUED_PREFIX,
            DEADLINES,
            DEAD_LETTER,
            DONE_CHANNEL,
            WEBHOOK_QUEUE,
            JOBS_TRANSPORT["unacked_key"],
            JOBS_TRANSPORT["unacked_index_key"],
            WORKER_JOBS_PREFIX,
            WORKER_CANCELS_PREFIX,
        ]
        for change in changes:
            job = change.job
            if job is None:
                keys += ["", "", "", ""]
                args += [""] * 14 + [change.release or "", "", ""]
                continue
            state = job.state_json()
            delivery = change.delivery(state)
            message = change.message
            deadline: str | float = ""
            if change.deadline_changed:
                due = job.deadline_ts()
                deadline = "-" if due is None else due
            keys += [
                job_key(job.id),
                "" if message is None else message.queue_list,
                "" if delivery is None else delivery_key(delivery.id),
                "" if message is None else bell_key(job.model),
            ]
            args += [
                job.id,
                job.status.value,
                "" if change.keep_state else state,
                " ".join(status.value for status in change.allowed),
                change.expected_run or "",
                change.new_run or "",
                change.owner or "",
                change.expected_tag or "",
                "" if message is None else message.tag,
                "" if message is None else message.body,
                deadline,
                "1" if change.dead else "",
                "" if delivery is None else delivery.model_dump_json(),
                ""
                if delivery is None
                else task_message(delivery.id, WEBHOOK_QUEUE, task=WEBHOOK_TASK_NAME),
                change.release or "",
                "" if change.held_after_ms is None else change.held_after_ms,
                _heartbeat_guard(change),
            ]
        return keys, args


def _heartbeat_guard(change: Change) -> str:
    """The transition's heartbeat guard: refuse while (-) or unless (+) a worker is alive."""
    if change.unless_alive is not None and change.if_alive is not None:
        raise ValueError("a change is guarded by one worker's heartbeat at most")
    if change.unless_alive is not None:
        return "-" + worker_key(change.unless_alive)
    if change.if_alive is not None:
        return "+" + worker_key(change.if_alive)
    return ""


def outcomes(results: list[Any]) -> list[str | None]:
    """Per change: None when applied, else the job's current status ('' when it does not
    exist, 'held' when its message was taken meanwhile, 'alive' when the worker it names is,
    'cut_off' when the claiming worker's heartbeat is absent)."""
    return [None if result == 1 else (decode(result) or "") for result in results]


def created(results: list[Any], records: list[bytes]) -> list[Created]:
    out = []
    for result, record in zip(results, records, strict=True):
        if result == 0:
            out.append(Created(record))
        elif isinstance(result, list):
            out.append(Created(None, refused=(decode(result[0]) or "", int(result[1]))))
        else:
            body_hash, _, job_id = (decode(result) or "").partition(" ")
            out.append(Created(None, earlier_id=job_id, earlier_hash=body_hash))
    return out
