"""One webhook delivery attempt, and the move of due retries back onto the queue.

Used by the webhook worker (``worker.webhooks``); see there for the policy.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import random
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal, TypeVar, cast

import httpx
import redis

from shared.celery_message import task_message
from shared.errors import UnsafeUrl
from shared.jobs import WebhookAttempt
from shared.keys import (
    WEBHOOK_QUEUE,
    WEBHOOK_SCHEDULE,
    WEBHOOK_TASK_NAME,
    delivery_key,
    hooks_key,
)
from shared.records import WebhookDelivery
from shared.redis_pools import retrying
from shared.webhooks import resolve_checked, sign
from worker import webhook_metrics
from worker.settings import WebhookSettings

__all__ = ["Deliverer"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
Outcome = Literal["delivered", "retrying", "gave_up"]

# How long a delivery waits, each time, for the job's previous delivery to be attempted.
_ORDER_WAIT_S = 0.2

# KEYS: 1 schedule. ARGV: 1 now (epoch s), 2 queue, 3 delivery key prefix. Moves every due
# delivery's prepared message onto the queue; returns how many.
_MOVE_DUE = """#!lua
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 200)
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  local message = redis.call('HGET', ARGV[3] .. id, 'message')
  if message then redis.call('LPUSH', ARGV[2], message) end
end
return #due
"""


class Deliverer:
    """Makes one attempt of a delivery at a time; shared by the task threads."""

    def __init__(self, client: redis.Redis, config: WebhookSettings) -> None:
        self._redis = client
        self._settings = config
        self._http = httpx.Client(follow_redirects=False, timeout=config.webhook_timeout_s)
        self._move_due = client.register_script(_MOVE_DUE)

    def close(self) -> None:
        self._http.close()

    def move_due(self) -> int:
        return int(
            self._move_due(
                keys=[WEBHOOK_SCHEDULE],
                args=[time.time(), WEBHOOK_QUEUE, delivery_key("")],
            )
        )

    def _retrying(self, call: Callable[[], _T]) -> _T:
        return retrying(call, self._settings.redis_outage_s)

    def attempt(self, delivery_id: str) -> str | None:
        """One attempt; the delivery's state after it (None: unknown or already finished).
        Its reads and writes ride out a Redis outage (STRUCTQ_REDIS_OUTAGE_S): an attempt made
        is recorded once Redis is back."""
        key = delivery_key(delivery_id)
        raw_spec, attempts, state, after, waits = self._retrying(
            lambda: cast(
                list[bytes | None],
                self._redis.hmget(key, ["spec", "attempts", "state", "after", "waits"]),
            )
        )
        if raw_spec is None or state in (b"delivered", b"gave_up"):
            return None
        number = int(attempts or 0) + 1
        if number == 1 and after is not None and self._waits_for(after, int(waits or 0)):
            self._retrying(lambda: self._defer(key, delivery_id))
            return "waiting"
        spec = WebhookDelivery.model_validate_json(raw_spec)
        self._retrying(
            lambda: self._redis.hset(key, mapping={"attempts": number, "state": "sending"})
        )
        started, at = time.perf_counter(), datetime.now(UTC)
        outcome: Outcome
        status_code, error, retry_after = None, None, None
        try:
            response = self._post(spec, at)
        except UnsafeUrl as exc:
            outcome, error = "gave_up", str(exc)
        except httpx.TimeoutException:
            outcome, error = "retrying", f"timed out after {self._settings.webhook_timeout_s:g}s"
        except httpx.HTTPError as exc:
            outcome, error = "retrying", f"{type(exc).__name__}: {exc}"
        else:
            status_code = response.status_code
            outcome = _outcome(status_code)
            retry_after = _retry_after(response.headers.get("retry-after"))
        schedule = self._settings.webhook_schedule_s
        if outcome == "retrying" and number >= len(schedule):
            outcome = "gave_up"
        webhook_metrics.attempted(spec.event, outcome, time.perf_counter() - started)
        record = WebhookAttempt(
            event=spec.event,
            webhook_id=delivery_id,
            attempt=number,
            at=at,
            status_code=status_code,
            error=error,
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
            outcome=outcome,
        )
        retry_message, due = None, 0.0
        if outcome == "retrying":
            delay = schedule[number] * random.uniform(0.8, 1.2)
            if retry_after is not None:
                delay = max(delay, retry_after)
            retry_message = _next_message(delivery_id)
            due = time.time() + delay

        def write() -> None:
            with self._redis.pipeline() as pipe:
                pipe.rpush(hooks_key(spec.job_id), record.model_dump_json())
                pipe.expire(hooks_key(spec.job_id), self._settings.job_ttl_s)
                if retry_message is not None:
                    pipe.hset(key, mapping={"state": "retrying", "message": retry_message})
                    pipe.zadd(WEBHOOK_SCHEDULE, {delivery_id: due})
                else:
                    pipe.hset(key, "state", outcome)
                pipe.execute()

        self._retrying(write)
        log.info(
            "webhook %s (%s of %s) attempt %d: %s %s",
            delivery_id,
            spec.event,
            spec.job_id,
            number,
            status_code or error,
            outcome,
            extra=_fields(spec),
        )
        return outcome

    def _waits_for(self, previous_key: bytes, waits: int) -> bool:
        """Whether a job's delivery should wait for the job's previous one (``started`` before
        ``completed``): until that one's first attempt is over, but no longer than one request
        timeout and a margin (its worker may have died mid-attempt)."""
        if waits >= round((self._settings.webhook_timeout_s + 5) / _ORDER_WAIT_S):
            return False
        state = self._retrying(lambda: self._redis.hget(previous_key, "state"))
        return state in (b"pending", b"sending")

    def _defer(self, key: str, delivery_id: str) -> None:
        """Back into the schedule for a moment, with no attempt made (it keeps its number)."""
        with self._redis.pipeline() as pipe:
            pipe.hset(key, "message", _next_message(delivery_id))
            pipe.hincrby(key, "waits", 1)
            pipe.zadd(WEBHOOK_SCHEDULE, {delivery_id: time.time() + _ORDER_WAIT_S})
            pipe.execute()

    def _post(self, spec: WebhookDelivery, at: datetime) -> httpx.Response:
        scheme, host, port, address = resolve_checked(
            spec.url, self._settings.webhook_allowed_networks
        )
        url = httpx.URL(spec.url)
        # Connect to the address just checked; the name travels in Host (and TLS SNI).
        literal = f"[{address}]" if address.version == 6 else str(address)
        pinned = url.copy_with(host=literal)
        body = spec.payload
        default_port = (scheme == "https" and port == 443) or (scheme == "http" and port == 80)
        headers = {
            "host": host if default_port else f"{host}:{port}",
            "content-type": "application/json",
            "user-agent": "structq-webhooks",
            "webhook-id": spec.id,
            "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": sign(self._settings.signing_secrets(at), spec.id, at, body),
        }
        extensions = {"sni_hostname": host} if scheme == "https" else {}
        return self._http.post(pinned, content=body, headers=headers, extensions=extensions)


def _next_message(delivery_id: str) -> str:
    """The task message of a delivery's next turn (a new tag: the current one is in flight)."""
    return task_message(
        delivery_id,
        WEBHOOK_QUEUE,
        task_id=f"{delivery_id}~{uuid.uuid4().hex[:12]}",
        task=WEBHOOK_TASK_NAME,
    )


def _fields(spec: WebhookDelivery) -> dict[str, str]:
    """``extra=`` of a delivery's log lines: its job (or batch), model and request id."""
    owner = "batch_id" if spec.event.startswith("batch.") else "job_id"
    fields = {owner: spec.job_id, "model": spec.model, "request_id": spec.request_id}
    return {k: v for k, v in fields.items() if v}


def _outcome(status_code: int) -> Outcome:
    if 200 <= status_code < 300:
        return "delivered"
    if 400 <= status_code < 500 and status_code not in (408, 429):
        return "gave_up"
    return "retrying"  # 3xx (not followed), 408, 429, 5xx


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(value))
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, (when - datetime.now(UTC)).total_seconds())
    return None
