"""The synchronous client: ``Client`` and its ``Job`` handles."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import httpx

from structq._base import BaseClient, JobOptions
from structq._core import (
    MAX_RETRY_AFTER_S,
    Call,
    MapItem,
    Plan,
    Sleep,
    SSEDecoder,
    StreamTracker,
    action_plan,
    check,
    delete_plan,
    generate_plan,
    get_plan,
    list_plan,
    map_plan,
    result_value,
    retry_after,
    submit_plan,
    wait_plan,
)
from structq.errors import APIConnectionError
from structq.models import JobRecord, JobStatus
from structq.output import OutputSpec, output_spec

__all__ = ["Client", "Job", "JobPage"]

T = TypeVar("T")


@dataclass(frozen=True)
class JobPage:
    """A page of ``GET /v1/jobs``: newest first; pass ``next_cursor`` for the next one."""

    jobs: list[JobRecord]
    next_cursor: str | None


class Job:
    """A submitted job: its latest known ``record``, and what can be done with it."""

    def __init__(self, client: Client, record: JobRecord, spec: OutputSpec) -> None:
        self._client = client
        self.record = record
        self._spec = spec

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, status={self.status.value!r})"

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def status(self) -> JobStatus:
        return self.record.status

    @property
    def finished(self) -> bool:
        return self.record.finished

    def refresh(self) -> Job:
        """Read the job again."""
        self.record = self._client._run(get_plan(self.id))
        return self

    def wait(self, timeout: float | None = None) -> Job:
        """Until the job is finished (long-polls); ``JobTimeout`` after ``timeout`` seconds."""
        self.record = self._client._run(wait_plan(self.id, timeout, self.record))
        return self

    def result(self, timeout: float | None = None) -> Any:
        """The typed value, once finished; ``JobFailed`` (its ``code``) if it did not succeed."""
        self.wait(timeout)
        return result_value(self.record, self._spec)

    def cancel(self) -> Job:
        self.record = self._client._run(action_plan(self.id, "cancel"))
        return self

    def retry(self) -> Job:
        """Queue a failed, cancelled or expired job again (same id)."""
        self.record = self._client._run(action_plan(self.id, "retry"))
        return self

    def delete(self) -> None:
        self._client._run(delete_plan(self.id))

    def stream(self) -> Iterator[str]:
        """The job's text as it is generated (submit with ``stream=True``; otherwise all of
        it arrives at the end). Afterwards ``record`` is the finished job."""
        tracker = StreamTracker(self.id)
        while True:
            tracker.connected()
            over = False
            with self._client._http.stream(
                "GET", f"/v1/jobs/{self.id}/stream", **self._client._request_args(_STREAM)
            ) as response:
                if not response.is_success:
                    response.read()
                    check(response)
                decoder = SSEDecoder()
                for line in response.iter_lines():
                    event = decoder.line(line)
                    if event is None:
                        continue
                    text, over = tracker.event(*event)
                    if text:
                        yield text
                    if over:
                        break
            if tracker.record is not None:
                self.record = tracker.record
                return
            if not over:  # the connection ended early: read the job
                self.refresh()
                if self.finished:
                    rest = tracker.rest(self.record)
                    if rest:
                        yield rest
                    return


_STREAM = Call("GET", "", wait_s=90.0)


class Client:
    """A structq gateway, synchronously. See ``structq._base.BaseClient`` for the settings;
    ``transport`` / ``http_client``: an httpx transport or client of your own."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 5,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        self._config = BaseClient(
            base_url, api_key, timeout=timeout, max_retries=max_retries, headers=headers
        )
        self.base_url = self._config.base_url
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(base_url=self.base_url, transport=transport)

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request_args(self, call: Call) -> dict[str, Any]:
        return self._config._request_args(call)

    # Running plans.

    def _send(self, call: Call) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self._http.request(call.method, call.path, **self._request_args(call))
            except httpx.TransportError as exc:
                if attempt >= self._config.max_retries:
                    raise APIConnectionError(
                        f"{call.method} {call.path}: {exc or type(exc).__name__}"
                    ) from exc
                delay = self._config._backoff(attempt)
            else:
                if response.status_code not in (429, 503) or attempt >= self._config.max_retries:
                    return response
                after = retry_after(response)
                delay = self._config._backoff(attempt) if after is None else after
            attempt += 1
            time.sleep(min(delay, MAX_RETRY_AFTER_S))

    def _run(self, plan: Plan[T]) -> T:
        try:
            step = next(plan)
            while True:
                reply: Any
                if isinstance(step, Sleep):
                    time.sleep(step.seconds)
                    reply = None
                elif isinstance(step, list):
                    reply = [self._send(call) for call in step]
                else:
                    reply = self._send(step)
                step = plan.send(reply)
        except StopIteration as stop:
            value: T = stop.value
            return value
        finally:
            plan.close()

    # The API.

    def generate(
        self,
        prompt_or_messages: Any,
        output_type: Any = None,
        *,
        model: str | None = None,
        metadata: Mapping[str, str] | None = None,
        priority: int | None = None,
        deadline: datetime | timedelta | str | None = None,
        timeout_s: float | None = None,
        webhook: str | Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        **sampling: Any,
    ) -> Any:
        """Generate one output of ``output_type`` and return it as that type (a ``Character``
        for ``Character``): submits the job and waits for it (``timeout``: the most seconds to
        wait, else ``JobTimeout``). ``sampling``: ``max_tokens``, ``temperature``, ``seed``..."""
        options = JobOptions(model, metadata, priority, webhook, deadline, timeout_s)
        body, spec = self._config._prepare(prompt_or_messages, output_type, options, sampling)
        key = idempotency_key or self._config._new_key()
        return self._run(generate_plan(body, spec, key, timeout))

    def submit(
        self,
        prompt_or_messages: Any,
        output_type: Any = None,
        *,
        model: str | None = None,
        metadata: Mapping[str, str] | None = None,
        priority: int | None = None,
        deadline: datetime | timedelta | str | None = None,
        timeout_s: float | None = None,
        webhook: str | Mapping[str, Any] | None = None,
        stream: bool = False,
        idempotency_key: str | None = None,
        **sampling: Any,
    ) -> Job:
        """Submit a job and return its handle at once (``.wait()``, ``.result()``...)."""
        options = JobOptions(model, metadata, priority, webhook, deadline, timeout_s, stream)
        body, spec = self._config._prepare(prompt_or_messages, output_type, options, sampling)
        key = idempotency_key or self._config._new_key()
        return Job(self, self._run(submit_plan(body, key)), spec)

    def job(self, job_id: str, output_type: Any = None) -> Job:
        """The handle of an existing job (``output_type``: how ``.result()`` converts)."""
        return Job(self, self._run(get_plan(job_id)), output_spec(output_type))

    def list_jobs(
        self, status: JobStatus | str | None = None, limit: int = 50, cursor: str | None = None
    ) -> JobPage:
        jobs, next_cursor = self._run(
            list_plan(None if status is None else str(status), limit, cursor)
        )
        return JobPage(jobs, next_cursor)

    def map(
        self,
        inputs: Iterable[Any],
        output_type: Any = None,
        *,
        concurrency: int = 256,
        batch_size: int = 500,
        progress: bool | Any = True,
        on_result: Callable[[MapItem], None] | None = None,
        key_prefix: str = "",
        idempotency_key: Callable[[Any], str] | None = None,
        retry_failed: bool = False,
        return_items: bool = False,
        model: str | None = None,
        metadata: Mapping[str, str] | None = None,
        priority: int | None = None,
        deadline: datetime | timedelta | str | None = None,
        timeout_s: float | None = None,
        webhook: str | Mapping[str, Any] | None = None,
        **sampling: Any,
    ) -> list[Any]:
        """Run every input (a prompt or a chat) as a job of ``output_type``; the values in
        input order, a failed input's ``StructqError`` in its place (``return_items``: the
        ``MapItem`` of each, with its job). See docs/client.md for resuming."""
        inputs = list(inputs)
        options = JobOptions(model, metadata, priority, webhook, deadline, timeout_s)
        spec = output_spec(output_type)
        bodies = [options.body(value, spec, sampling) for value in inputs]
        keys = self._config._map_keys(inputs, bodies, key_prefix, idempotency_key)
        items = self._run(
            map_plan(
                inputs,
                bodies,
                keys,
                spec,
                concurrency=concurrency,
                batch_size=batch_size,
                progress=progress,
                on_result=on_result,
                retry_failed=retry_failed,
            )
        )
        if return_items:
            return items
        return [item.value if item.error is None else item.error for item in items]
