"""Files and batches, as OpenAI's Files and Batch APIs shape them (``/v1/files``,
``/v1/batches``): what a client sends, what is stored, what the API returns.

A batch is one unit of work over an uploaded JSONL file, one request per line; its lines run as
ordinary structq jobs, and its output and error files are files like any other.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.jobs import BatchWebhookEvent, WebhookAttempt, WebhookSpec

__all__ = [
    "BATCH_ENDPOINTS",
    "Batch",
    "BatchCreate",
    "BatchStatus",
    "FileObject",
    "RequestCounts",
    "window_seconds",
]

# What a batch's lines may be: OpenAI's two text endpoints, and structq's native job body.
BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/jobs")

_WINDOW = re.compile(r"^([1-9][0-9]{0,6})([smh])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600}
# OpenAI takes "24h" alone; structq takes any window from 10 s to 7 days ("30m", "48h").
_WINDOW_MIN_S, _WINDOW_MAX_S = 10, 7 * 86_400


def window_seconds(window: str) -> int:
    """A completion window in seconds: ``24h`` -> 86400."""
    match = _WINDOW.match(window)
    seconds = 0 if match is None else int(match.group(1)) * _UNIT_S[match.group(2)]
    if not _WINDOW_MIN_S <= seconds <= _WINDOW_MAX_S:
        raise ValueError(
            f"completion_window must be a number and a unit (s, m, h) from 10s to 168h, e.g. "
            f"24h; got {window!r}"
        )
    return seconds


class BatchStatus(StrEnum):
    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (
            BatchStatus.COMPLETED,
            BatchStatus.FAILED,
            BatchStatus.EXPIRED,
            BatchStatus.CANCELLED,
        )

    @property
    def webhook_event(self) -> BatchWebhookEvent | None:
        """The event a batch's webhook gets on reaching this status (None: not an end)."""
        events: dict[BatchStatus, BatchWebhookEvent] = {
            BatchStatus.COMPLETED: "batch.completed",
            BatchStatus.FAILED: "batch.failed",
            BatchStatus.EXPIRED: "batch.expired",
            BatchStatus.CANCELLED: "batch.cancelled",
        }
        return events.get(self)


class FileObject(BaseModel):
    """An uploaded (or produced) file, as ``GET /v1/files/{id}`` returns it."""

    model_config = ConfigDict(extra="ignore")

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    expires_at: int | None = None
    filename: str
    purpose: str
    status: Literal["processed"] = "processed"
    # structq's: non-empty lines (a batch's request count).
    lines: int = 0
    owner: str | None = Field(default=None, exclude=True)


class BatchCreate(BaseModel):
    """``POST /v1/batches``. ``priority`` and ``webhook`` are structq's own fields."""

    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(min_length=1, max_length=128)
    endpoint: str
    completion_window: str = "24h"
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    # Lines run at the lowest priority unless the batch asks for another (0-3, 3 first).
    priority: int = Field(default=0, ge=0, le=3)
    # Sent once, when the batch ends: `batch.completed`, `.failed`, `.expired` or `.cancelled`.
    webhook: WebhookSpec | None = None

    @field_validator("webhook")
    @classmethod
    def _batch_events(cls, value: WebhookSpec | None) -> WebhookSpec | None:
        if value is not None and value.events != ["completed"]:
            raise ValueError(
                "a batch's webhook has one event, its end (batch.completed, batch.failed, "
                'batch.expired or batch.cancelled): leave out `events`, or give ["completed"]'
            )
        return value

    @field_validator("endpoint")
    @classmethod
    def _known_endpoint(cls, value: str) -> str:
        if value not in BATCH_ENDPOINTS:
            raise ValueError(f"endpoint must be one of {', '.join(BATCH_ENDPOINTS)}")
        return value

    @field_validator("completion_window")
    @classmethod
    def _window(cls, value: str) -> str:
        window_seconds(value)
        return value


class RequestCounts(BaseModel):
    total: int = 0
    completed: int = 0
    failed: int = 0


class Batch(BaseModel):
    """A batch as stored and as ``GET /v1/batches/{id}`` returns it (OpenAI's shape)."""

    model_config = ConfigDict(extra="ignore")

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: dict[str, Any] | None = None
    input_file_id: str
    completion_window: str
    status: BatchStatus
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts = Field(default_factory=RequestCounts)
    metadata: dict[str, str] | None = None
    priority: int = 0
    # structq's: the attempts to deliver the batch's webhook, if it has one.
    webhook_deliveries: list[WebhookAttempt] = Field(default_factory=list)
    webhook: WebhookSpec | None = Field(default=None, exclude=True)
    owner: str | None = Field(default=None, exclude=True)
