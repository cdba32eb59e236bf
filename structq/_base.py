"""Configuration and request preparation shared by ``Client`` and ``AsyncClient``."""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import httpx

from structq._core import MAX_KEY_CHARS, Call, build_body, derive_keys
from structq.output import OutputSpec, output_spec

__all__ = ["DEFAULT_URL", "BaseClient", "JobOptions"]

DEFAULT_URL = "http://127.0.0.1:8000"
VERSION = "0.1.0"


class JobOptions:
    """The job fields besides the prompt, output type and sampling."""

    __slots__ = ("deadline", "metadata", "model", "priority", "stream", "timeout_s", "webhook")

    def __init__(
        self,
        model: str | None = None,
        metadata: Mapping[str, str] | None = None,
        priority: int | None = None,
        webhook: str | Mapping[str, Any] | None = None,
        deadline: datetime | timedelta | str | None = None,
        timeout_s: float | None = None,
        stream: bool = False,
    ) -> None:
        self.model = model
        self.metadata = metadata
        self.priority = priority
        self.webhook = webhook
        self.deadline = deadline
        self.timeout_s = timeout_s
        self.stream = stream

    def body(self, prompt: Any, spec: OutputSpec, sampling: Mapping[str, Any]) -> dict[str, Any]:
        return build_body(
            prompt,
            spec,
            sampling,
            model=self.model,
            metadata=self.metadata,
            priority=self.priority,
            webhook=self.webhook,
            deadline=self.deadline,
            timeout_s=self.timeout_s,
            stream=self.stream,
        )


class BaseClient:
    """``base_url`` (else ``STRUCTQ_URL``, else http://127.0.0.1:8000) and ``api_key`` (else
    ``STRUCTQ_API_KEY``; sent as ``Authorization: Bearer``); ``timeout`` in seconds per request
    (long-polls get their wait on top); ``max_retries`` for 429/503 answers (after their
    ``Retry-After``) and connection errors."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 5,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.base_url = (base_url or os.environ.get("STRUCTQ_URL") or DEFAULT_URL).rstrip("/")
        api_key = api_key if api_key is not None else os.environ.get("STRUCTQ_API_KEY")
        self.timeout = timeout
        self.max_retries = max_retries
        self._headers: dict[str, str] = {"user-agent": f"structq-client/{VERSION}"}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"
        self._headers.update(headers or {})

    def _request_args(self, call: Call) -> dict[str, Any]:
        return {
            "json": call.json,
            "params": call.params,
            "headers": {**self._headers, **(call.headers or {})},
            "timeout": httpx.Timeout(self.timeout + call.wait_s, connect=min(self.timeout, 10.0)),
        }

    @staticmethod
    def _backoff(attempt: int) -> float:
        return float(min(0.5 * 2**attempt, 8.0) * random.uniform(0.8, 1.2))

    @staticmethod
    def _prepare(
        prompt: Any, output_type: Any, options: JobOptions, sampling: Mapping[str, Any]
    ) -> tuple[dict[str, Any], OutputSpec]:
        spec = output_spec(output_type)
        return options.body(prompt, spec, sampling), spec

    @staticmethod
    def _new_key() -> str:
        """A key for a submission the caller gave none: retrying it after a lost answer
        cannot make a second job."""
        return f"sq-{uuid.uuid4().hex}"

    @staticmethod
    def _map_keys(
        inputs: Sequence[Any],
        bodies: Sequence[dict[str, Any]],
        key_prefix: str,
        idempotency_key: Callable[[Any], str] | None,
    ) -> list[str]:
        if idempotency_key is not None:
            keys = [idempotency_key(value) for value in inputs]
        else:
            keys = derive_keys(bodies, f"{key_prefix}:" if key_prefix else "")
        too_long = [key for key in keys if len(key) > MAX_KEY_CHARS]
        if too_long:
            raise ValueError(
                f"idempotency keys of more than {MAX_KEY_CHARS} chars: {too_long[0]!r}"
            )
        return keys
