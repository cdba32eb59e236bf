"""The asynchronous client: ``AsyncClient`` and its ``AsyncJob`` handles (the same operations as
``Client``, awaited; a map's fallback single submissions and reads go concurrently)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
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
from structq.client import JobPage
from structq.errors import APIConnectionError
from structq.models import JobRecord, JobStatus
from structq.output import OutputSpec, output_spec

__all__ = ["AsyncClient", "AsyncJob"]

T = TypeVar("T")

_STREAM = Call("GET", "", wait_s=90.0)


class AsyncJob:
    """A submitted job: its latest known ``record``, and what can be done with it."""

    def __init__(self, client: AsyncClient, record: JobRecord, spec: OutputSpec) -> None:
        self._client = client
        self.record = record
        self._spec = spec

    def __repr__(self) -> str:
        return f"AsyncJob(id={self.id!r}, status={self.status.value!r})"

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def status(self) -> JobStatus:
        return self.record.status

    @property
    def finished(self) -> bool:
        return self.record.finished

    async def refresh(self) -> AsyncJob:
        self.record = await self._client._run(get_plan(self.id))
        return self

    async def wait(self, timeout: float | None = None) -> AsyncJob:
        """Until the job is finished (long-polls); ``JobTimeout`` after ``timeout`` seconds."""
        self.record = await self._client._run(wait_plan(self.id, timeout, self.record))
        return self

    async def result(self, timeout: float | None = None) -> Any:
        """The typed value, once finished; ``JobFailed`` (its ``code``) if it did not succeed."""
        await self.wait(timeout)
        return result_value(self.record, self._spec)

    async def cancel(self) -> AsyncJob:
        self.record = await self._client._run(action_plan(self.id, "cancel"))
        return self

    async def retry(self) -> AsyncJob:
        self.record = await self._client._run(action_plan(self.id, "retry"))
        return self

    async def delete(self) -> None:
        await self._client._run(delete_plan(self.id))

    async def stream(self) -> AsyncIterator[str]:
        """The job's text as it is generated (see ``Job.stream``)."""
        tracker = StreamTracker(self.id)
        while True:
            tracker.connected()
            over = False
            async with self._client._http.stream(
                "GET", f"/v1/jobs/{self.id}/stream", **self._client._config._request_args(_STREAM)
            ) as response:
                if not response.is_success:
                    await response.aread()
                    check(response)
                decoder = SSEDecoder()
                async for line in response.aiter_lines():
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
            if not over:
                await self.refresh()
                if self.finished:
                    rest = tracker.rest(self.record)
                    if rest:
                        yield rest
                    return


class AsyncClient:
    """A structq gateway, with asyncio. Settings as ``Client``'s."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 5,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self._config = BaseClient(
            base_url, api_key, timeout=timeout, max_retries=max_retries, headers=headers
        )
        self.base_url = self._config.base_url
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(base_url=self.base_url, transport=transport)

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _send(self, call: Call) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = await self._http.request(
                    call.method, call.path, **self._config._request_args(call)
                )
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
            await asyncio.sleep(min(delay, MAX_RETRY_AFTER_S))

    async def _run(self, plan: Plan[T]) -> T:
        try:
            step = next(plan)
            while True:
                reply: Any
                if isinstance(step, Sleep):
                    await asyncio.sleep(step.seconds)
                    reply = None
                elif isinstance(step, list):
                    reply = list(await asyncio.gather(*(self._send(call) for call in step)))
                else:
                    reply = await self._send(step)
                step = plan.send(reply)
        except StopIteration as stop:
            value: T = stop.value
            return value
        finally:
            plan.close()

    async def generate(
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
        """See ``Client.generate``."""
        options = JobOptions(model, metadata, priority, webhook, deadline, timeout_s)
        body, spec = self._config._prepare(prompt_or_messages, output_type, options, sampling)
        key = idempotency_key or self._config._new_key()
        return await self._run(generate_plan(body, spec, key, timeout))

    async def submit(
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
    ) -> AsyncJob:
        """See ``Client.submit``."""
        options = JobOptions(model, metadata, priority, webhook, deadline, timeout_s, stream)
        body, spec = self._config._prepare(prompt_or_messages, output_type, options, sampling)
        key = idempotency_key or self._config._new_key()
        return AsyncJob(self, await self._run(submit_plan(body, key)), spec)

    async def job(self, job_id: str, output_type: Any = None) -> AsyncJob:
        return AsyncJob(self, await self._run(get_plan(job_id)), output_spec(output_type))

    async def list_jobs(
        self, status: JobStatus | str | None = None, limit: int = 50, cursor: str | None = None
    ) -> JobPage:
        plan = list_plan(None if status is None else str(status), limit, cursor)
        jobs, next_cursor = await self._run(plan)
        return JobPage(jobs, next_cursor)

    async def map(
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
        """See ``Client.map``."""
        inputs = list(inputs)
        options = JobOptions(model, metadata, priority, webhook, deadline, timeout_s)
        spec = output_spec(output_type)
        bodies = [options.body(value, spec, sampling) for value in inputs]
        keys = self._config._map_keys(inputs, bodies, key_prefix, idempotency_key)
        items = await self._run(
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
