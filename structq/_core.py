"""What ``Client`` and ``AsyncClient`` share: every operation written once, as a *plan*: a
generator that yields the HTTP calls (and pauses) it needs and receives their responses. The
sync client runs a plan with blocking I/O, the async one with ``await`` (a list of calls is
sent concurrently there), so both behave exactly alike."""

from __future__ import annotations

import email.utils
import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, Union

import httpx
import pydantic

from structq.errors import (
    APIError,
    JobFailed,
    JobTimeout,
    OutputValidationError,
    StreamReset,
    StructqError,
    api_error,
)
from structq.models import JobRecord, JobStatus
from structq.output import OutputSpec

__all__ = [
    "Call",
    "MapItem",
    "Sleep",
    "build_body",
    "derive_keys",
    "map_plan",
    "result_value",
    "retry_after",
]

T = TypeVar("T")

# Longest the gateway lets a request wait (long-poll, `Prefer: wait`, `POST /v1/jobs/wait`).
MAX_WAIT_S = 60.0
# Most job bodies or ids one batch request may carry.
MAX_BATCH = 1000
# Idempotency keys: at most this long (the gateway's limit).
MAX_KEY_CHARS = 255
# Longest a Retry-After is obeyed for, per wait.
MAX_RETRY_AFTER_S = 120.0

SAMPLING_FIELDS = frozenset(
    {
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "seed",
        "stop",
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
        "ignore_eos",
    }
)


@dataclass(frozen=True)
class Call:
    """One HTTP request of a plan. ``wait_s``: how long the server may hold it (long-polls),
    added to the read timeout."""

    method: str
    path: str
    json: Any = None
    params: Mapping[str, Any] | None = None
    headers: Mapping[str, str] | None = None
    wait_s: float = 0.0


@dataclass(frozen=True)
class Sleep:
    seconds: float


Step = Union[Call, list[Call], Sleep]  # noqa: UP007 - a runtime alias
Plan = Generator[Step, Any, T]


def retry_after(response: httpx.Response) -> float | None:
    """The ``Retry-After`` of a response in seconds (delta-seconds or an HTTP date)."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _body_of(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def check(response: httpx.Response) -> Any:
    """The JSON of a successful response; the APIError of any other."""
    if response.is_success:
        return _body_of(response)
    raise api_error(response.status_code, _body_of(response), retry_after(response))


def route_missing(response: httpx.Response) -> bool:
    """Whether a 404/405 is the framework's (no such route on this gateway), not structq's."""
    if response.status_code not in (404, 405):
        return False
    body = _body_of(response)
    return not (isinstance(body, dict) and isinstance(body.get("error"), dict))


# Building requests.


def _messages(items: Iterable[Any]) -> list[dict[str, str]]:
    messages = []
    for item in items:
        if isinstance(item, Mapping):
            messages.append({"role": str(item["role"]), "content": str(item["content"])})
        elif isinstance(item, tuple) and len(item) == 2:
            messages.append({"role": str(item[0]), "content": str(item[1])})
        else:
            messages.append({"role": str(item.role), "content": str(item.content)})
    return messages


def build_body(
    prompt_or_messages: Any,
    spec: OutputSpec,
    sampling: Mapping[str, Any],
    *,
    model: str | None = None,
    metadata: Mapping[str, str] | None = None,
    priority: int | None = None,
    webhook: str | Mapping[str, Any] | None = None,
    deadline: datetime | timedelta | str | None = None,
    timeout_s: float | None = None,
    stream: bool = False,
) -> dict[str, Any]:
    """A ``POST /v1/jobs`` body. ``prompt_or_messages``: a string (sent as is), or a chat (a
    list of ``{"role", "content"}`` dicts, ``(role, content)`` pairs, or objects with those
    attributes; an Outlines ``Chat`` too)."""
    body: dict[str, Any] = {}
    if isinstance(prompt_or_messages, str):
        body["prompt"] = prompt_or_messages
    elif hasattr(prompt_or_messages, "messages") and not isinstance(prompt_or_messages, Mapping):
        body["messages"] = _messages(prompt_or_messages.messages)
    elif isinstance(prompt_or_messages, Iterable) and not isinstance(prompt_or_messages, Mapping):
        body["messages"] = _messages(prompt_or_messages)
    else:
        raise TypeError("a prompt is a string or a list of chat messages")
    body["output_type"] = spec.spec
    unknown = set(sampling) - SAMPLING_FIELDS
    if unknown:
        raise TypeError(f"unknown sampling parameters: {sorted(unknown)}")
    if sampling:
        body["sampling"] = {k: (list(v) if k == "stop" else v) for k, v in sampling.items()}
    if model is not None:
        body["model"] = model
    if metadata:
        body["metadata"] = dict(metadata)
    if priority is not None:
        body["priority"] = priority
    if webhook is not None:
        body["webhook"] = {"url": webhook} if isinstance(webhook, str) else dict(webhook)
    if isinstance(deadline, timedelta):  # relative: the job's `timeout_s`
        if timeout_s is not None:
            raise ValueError("give at most one of `deadline` and `timeout_s`")
        timeout_s = deadline.total_seconds()
        deadline = None
    if deadline is not None:
        if isinstance(deadline, datetime):
            if deadline.tzinfo is None:
                raise ValueError("a deadline needs a timezone (e.g. datetime.now(UTC) + ...)")
            deadline = deadline.isoformat()
        body["deadline"] = deadline
    if timeout_s is not None:
        body["timeout_s"] = timeout_s
    if stream:
        body["stream"] = True
    return body


def _canonical(body: Any) -> bytes:
    return json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    ).encode()


def derive_keys(bodies: Sequence[Mapping[str, Any]], prefix: str = "") -> list[str]:
    """An idempotency key per body, from its content: the same bodies give the same keys on
    every run (in any order), and equal bodies are told apart by their occurrence (the second
    ``"hi"`` of a list is another job than the first)."""
    seen: Counter[str] = Counter()
    keys = []
    for body in bodies:
        digest = hashlib.sha256(_canonical(body)).hexdigest()
        nth = seen[digest]
        seen[digest] += 1
        keys.append(f"{prefix}sq-{digest}" + (f"-{nth}" if nth else ""))
    return keys


# Results.


def result_value(record: JobRecord, spec: OutputSpec) -> Any:
    """The typed value of a finished job; JobFailed if it did not succeed."""
    if record.status != JobStatus.SUCCEEDED or record.result is None:
        raise JobFailed(record)
    try:
        return spec.convert(record.result.value)
    except (pydantic.ValidationError, TypeError, ValueError) as exc:
        raise OutputValidationError(
            f"job {record.id}: the value does not validate as the output type: {exc}", record
        ) from exc


def _record(data: Any) -> JobRecord:
    return JobRecord.model_validate(data)


# Single-job plans.


def submit_plan(body: dict[str, Any], key: str | None, prefer_wait: float = 0) -> Plan[JobRecord]:
    headers: dict[str, str] = {}
    if key is not None:
        headers["Idempotency-Key"] = key
    wait = min(prefer_wait, MAX_WAIT_S)
    if wait > 0:
        headers["Prefer"] = f"wait={wait:g}"
    response = yield Call("POST", "/v1/jobs", json=body, headers=headers, wait_s=wait)
    return _record(check(response))


def get_plan(job_id: str, wait: float = 0) -> Plan[JobRecord]:
    wait = round(min(max(wait, 0.0), MAX_WAIT_S), 3)
    params = {"wait": f"{wait:g}"} if wait > 0 else None
    response = yield Call("GET", f"/v1/jobs/{job_id}", params=params, wait_s=wait)
    return _record(check(response))


def wait_plan(
    job_id: str, timeout: float | None, record: JobRecord | None = None
) -> Plan[JobRecord]:
    """The job once finished (long-polls of up to 60 s each); JobTimeout after ``timeout``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while record is None or not record.finished:
        remaining = MAX_WAIT_S if deadline is None else deadline - time.monotonic()
        if record is not None and remaining <= 0.01:
            raise JobTimeout(f"job {job_id} not finished after {timeout:g} s", record)
        record = yield from get_plan(job_id, min(max(remaining, 0.0), MAX_WAIT_S))
    return record


def action_plan(job_id: str, action: str) -> Plan[JobRecord]:
    response = yield Call("POST", f"/v1/jobs/{job_id}/{action}")
    return _record(check(response))


def delete_plan(job_id: str) -> Plan[None]:
    response = yield Call("DELETE", f"/v1/jobs/{job_id}")
    check(response)


def list_plan(
    status: str | None, limit: int, cursor: str | None
) -> Plan[tuple[list[JobRecord], str | None]]:
    params: dict[str, Any] = {"limit": limit}
    if status is not None:
        params["status"] = str(status)
    if cursor is not None:
        params["cursor"] = cursor
    response = yield Call("GET", "/v1/jobs", params=params)
    page = check(response)
    return [_record(item) for item in page["data"]], page.get("next_cursor")


def generate_plan(
    body: dict[str, Any], spec: OutputSpec, key: str | None, timeout: float | None
) -> Plan[Any]:
    first_wait = MAX_WAIT_S if timeout is None else min(timeout, MAX_WAIT_S)
    started = time.monotonic()
    record = yield from submit_plan(body, key, prefer_wait=first_wait)
    remaining = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
    record = yield from wait_plan(record.id, remaining, record)
    return result_value(record, spec)


# Many jobs: map.


@dataclass
class MapItem:
    """One input of a ``map``, as it ends: its ``value`` or its ``error``, with its job."""

    index: int
    input: Any
    key: str
    job_id: str | None = None
    job: JobRecord | None = None
    value: Any = None
    error: StructqError | None = None
    refusals: int = 0
    resumed: bool = False
    retried: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class _MapState:
    items: list[MapItem]
    todo: list[int]  # indexes still to submit, in order (refused ones first)
    in_flight: dict[str, list[int]] = field(default_factory=dict)
    done: int = 0
    retry_at: float = 0.0
    backoff: float = 0.0


def _progress_bar(enabled: bool | Any, total: int) -> Any:
    if enabled is False or enabled is None:
        return None
    if enabled is not True:
        return enabled  # a tqdm-like object of the caller's
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is in the `client` extra
        return None
    return tqdm(total=total, desc="structq", unit="job")


def map_plan(
    inputs: Sequence[Any],
    bodies: Sequence[dict[str, Any]],
    keys: Sequence[str],
    spec: OutputSpec,
    *,
    concurrency: int,
    batch_size: int,
    progress: bool | Any,
    on_result: Callable[[MapItem], None] | None,
    retry_failed: bool,
    max_refusals: int = 30,
) -> Plan[list[MapItem]]:
    """Submit every body (in chunks through ``/v1/jobs/batch``, one by one where the gateway
    has no such route), never more than ``concurrency`` unfinished at once, and collect each
    job's outcome as it finishes (``/v1/jobs/wait``)."""
    concurrency = max(1, min(concurrency, MAX_BATCH))
    batch_size = max(1, min(batch_size, MAX_BATCH))
    items = [
        MapItem(i, value, key) for i, (value, key) in enumerate(zip(inputs, keys, strict=True))
    ]
    state = _MapState(items, list(range(len(items))))
    bar = _progress_bar(progress, len(items))
    use_batch, use_wait = True, True

    def finish(item: MapItem, error: StructqError | None = None, value: Any = None) -> None:
        item.error, item.value = error, value
        state.done += 1
        if bar is not None:
            bar.update(1)
        if on_result is not None:
            on_result(item)

    def refused(index: int, error: StructqError) -> None:
        item = items[index]
        item.refusals += 1
        if item.refusals > max_refusals:
            finish(item, error)
            return
        state.todo.insert(0, index)
        state.backoff = min(max(state.backoff * 2, 1.0), 10.0)
        state.retry_at = time.monotonic() + state.backoff

    def accepted(index: int, job_id: str, resumed: bool) -> None:
        items[index].job_id = job_id
        items[index].resumed = resumed
        state.in_flight.setdefault(job_id, []).append(index)
        state.backoff = 0.0

    try:
        while state.done < len(items):
            # Submit while there is room (and no refusal's back-off is running).
            free = concurrency - sum(len(v) for v in state.in_flight.values())
            if state.todo and free > 0 and time.monotonic() >= state.retry_at:
                chunk = state.todo[: min(free, batch_size)]
                del state.todo[: len(chunk)]
                if use_batch:
                    jobs = [{**bodies[i], "idempotency_key": keys[i]} for i in chunk]
                    response = yield Call("POST", "/v1/jobs/batch", json={"jobs": jobs})
                    if route_missing(response):
                        use_batch = False
                        state.todo[:0] = chunk
                        continue
                    rows = check(response)["data"]
                    for index, row in zip(chunk, rows, strict=True):
                        status = int(row["status"])
                        if status in (200, 202):
                            accepted(index, row["id"], status == 200)
                            continue
                        error = api_error(
                            status, {"error": row.get("error") or {}, "detail": row.get("detail")}
                        )
                        if status in (429, 503):
                            refused(index, error)
                        else:
                            finish(items[index], error)
                else:
                    calls = [
                        Call(
                            "POST", "/v1/jobs", json=bodies[i], headers={"Idempotency-Key": keys[i]}
                        )
                        for i in chunk
                    ]
                    responses = yield calls
                    for index, response in zip(chunk, responses, strict=True):
                        if response.is_success:
                            accepted(
                                index, _record(response.json()).id, response.status_code == 200
                            )
                        elif response.status_code in (429, 503):
                            refused(index, api_error(response.status_code, _body_of(response)))
                        else:
                            finish(
                                items[index], api_error(response.status_code, _body_of(response))
                            )
                continue
            if state.in_flight:
                ids = list(state.in_flight)[:MAX_BATCH]
                timeout = 30.0
                if state.todo:
                    timeout = min(timeout, max(0.0, state.retry_at - time.monotonic()))
                records: list[JobRecord] = []
                unknown: list[str] = []
                if use_wait:
                    body = {"ids": ids, "timeout_s": round(timeout, 3), "linger_ms": 100}
                    response = yield Call("POST", "/v1/jobs/wait", json=body, wait_s=timeout)
                    if route_missing(response):
                        use_wait = False
                        continue
                    answer = check(response)
                    records = [_record(data) for data in answer["data"]]
                    unknown = list(answer.get("unknown", []))
                else:  # an older gateway: read each one
                    responses = yield [Call("GET", f"/v1/jobs/{job_id}") for job_id in ids]
                    for job_id, response in zip(ids, responses, strict=True):
                        if response.status_code == 404:
                            unknown.append(job_id)
                        else:
                            record = _record(check(response))
                            if record.finished:
                                records.append(record)
                    if not records and not unknown:
                        yield Sleep(min(0.5, timeout) if timeout > 0 else 0.5)
                for record in records:
                    retry_calls = []
                    for index in state.in_flight.pop(record.id, []):
                        item = items[index]
                        item.job = record
                        if record.status == JobStatus.SUCCEEDED:
                            try:
                                value = result_value(record, spec)
                            except StructqError as exc:
                                finish(item, exc)
                            else:
                                finish(item, None, value)
                        elif retry_failed and item.resumed and not item.retried:
                            item.retried = True
                            retry_calls.append(index)
                        else:
                            finish(item, JobFailed(record))
                    for index in retry_calls:
                        response = yield Call("POST", f"/v1/jobs/{record.id}/retry")
                        if response.is_success:
                            accepted(index, record.id, False)
                        else:
                            finish(items[index], JobFailed(record))
                for job_id in unknown:
                    for index in state.in_flight.pop(job_id, []):
                        finish(
                            items[index],
                            APIError(f"job {job_id} is gone", code="job_not_found", status=404),
                        )
                continue
            if state.todo:  # nothing in flight: only a back-off to sit out
                yield Sleep(max(0.0, state.retry_at - time.monotonic()))
    finally:
        if bar is not None and progress is True:
            bar.close()
    return items


# Streams (``GET /v1/jobs/{id}/stream``).


class SSEDecoder:
    """Server-sent events from lines: ``line()`` returns ``(event, data)`` at each event's end."""

    def __init__(self) -> None:
        self._event: str | None = None
        self._data: list[str] = []

    def line(self, line: str) -> tuple[str, str] | None:
        line = line.rstrip("\r\n")
        if not line:
            if self._event is None and not self._data:
                return None
            event = (self._event or "message", "\n".join(self._data))
            self._event, self._data = None, []
            return event
        if line.startswith(":"):
            return None  # a comment (keep-alive)
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None


class StreamTracker:
    """Text already handed out across reconnections: a reconnected stream sends the deltas
    so far again first, and only what is beyond them is new."""

    def __init__(self, job_id: str = "") -> None:
        self.job_id = job_id
        self.emitted = 0
        self.received = 0
        self.record: JobRecord | None = None

    def connected(self) -> None:
        self.received = 0

    def event(self, kind: str, data: str) -> tuple[str | None, bool]:
        """(new text to hand out, whether the stream is over for this connection)."""
        if kind == "delta":
            text = str(json.loads(data).get("text", ""))
            start, self.received = self.received, self.received + len(text)
            if self.received <= self.emitted:
                return None, False
            new = text[max(0, self.emitted - start) :]
            self.emitted = self.received
            return new, False
        if kind == "reset":  # a re-run wrote otherwise: what was handed out is void
            raise StreamReset(self.job_id)
        if kind == "done":
            self.record = _record(json.loads(data))
            return None, True
        if kind == "timeout":
            return None, True
        return None, False

    def rest(self, record: JobRecord) -> str | None:
        """Text of a finished job beyond what was handed out (a stream that broke off)."""
        self.record = record
        text = (
            record.result.text if record.result else (record.error.text if record.error else None)
        )
        if text and len(text) > self.emitted:
            new = text[self.emitted :]
            self.emitted = len(text)
            return new
        return None
