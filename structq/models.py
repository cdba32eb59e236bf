"""The wire models the client reads: a job's record as ``GET /v1/jobs/{id}`` returns it, and a
webhook's event. Defined here (not imported from the service's ``shared`` package, which pulls
Redis and more); unknown fields are kept, so a newer gateway's records still read."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "BatchEvent",
    "EngineStats",
    "JobErrorInfo",
    "JobEvent",
    "JobRecord",
    "JobResult",
    "JobStatus",
    "Usage",
    "WebhookAttempt",
    "WebhookEvent",
]


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        return self not in (JobStatus.QUEUED, JobStatus.RUNNING)


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow")


class Usage(_Wire):
    prompt_tokens: int
    completion_tokens: int


class JobResult(_Wire):
    text: str
    value: Any = None
    finish_reason: str | None = None
    usage: Usage | None = None


class JobErrorInfo(_Wire):
    code: str
    message: str
    text: str | None = None
    usage: Usage | None = None


class EngineStats(_Wire):
    worker: str
    first_step: int | None = None
    last_step: int | None = None
    max_batch: int | None = None
    engine_s: float | None = None


class WebhookAttempt(_Wire):
    event: str
    webhook_id: str
    attempt: int
    at: datetime
    status_code: int | None = None
    error: str | None = None
    duration_ms: float | None = None
    outcome: str


class JobRecord(_Wire):
    """A job as the gateway returns it."""

    id: str
    status: JobStatus
    model: str | None = None
    adapter: str | None = None  # the LoRA adapter it ran with (`model` is then its base model)
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    output_type: dict[str, Any] = Field(default_factory=dict)
    sampling: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, str] = Field(default_factory=dict)
    priority: int | None = None
    deadline: datetime | None = None
    timeout_s: float | None = None
    webhook: dict[str, Any] | None = None
    stream: bool = False
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    retries: int = 0
    worker: str | None = None
    client: str | None = None
    request_id: str | None = None
    result: JobResult | None = None
    error: JobErrorInfo | None = None
    engine: EngineStats | None = None
    webhook_deliveries: list[WebhookAttempt] = Field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status.terminal


class JobEvent(_Wire):
    """A job's webhook: ``job.started`` or ``job.completed``, with the record at that moment."""

    type: Literal["job.started", "job.completed"]
    timestamp: datetime
    data: JobRecord


class BatchEvent(_Wire):
    """A batch's webhook (``batch.completed``, ``.failed``, ``.expired``, ``.cancelled``), with
    the batch as ``GET /v1/batches/{id}`` returns it."""

    type: Literal["batch.completed", "batch.failed", "batch.expired", "batch.cancelled"]
    timestamp: datetime
    data: dict[str, Any]


WebhookEvent = JobEvent | BatchEvent
