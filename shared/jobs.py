"""The job, as it travels: ``JobCreate`` (what a client sends), ``Job`` (what is stored in
Redis and read by the worker), ``JobPublic`` (what the API returns).

Gateway and worker exchange jobs only as ``model_dump_json()`` / ``model_validate_json()``
of these models; nothing is pickled across services.

A stored job is two JSON documents: its *spec* (the request as submitted, with its id, model,
owner and creation time; written once) and its *state* (``STATE_FIELDS``: status, deadline,
times, attempts, worker, result or error; rewritten by every status change). Every change
writes the small state alone, never the request (which may hold a large schema) again, and a
reader joins the two into one record with :func:`join_record`, byte for byte.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from shared.errors import ErrorCode
from shared.keys import PRIORITY_LEVELS
from shared.output_types import OutputType, TextSpec

__all__ = [
    "DEFAULT_PRIORITY",
    "Role",
    "STATE_FIELDS",
    "WebhookEvent",
    "BatchWebhookEvent",
    "is_terminal",
    "EngineStats",
    "Job",
    "JobCreate",
    "JobError",
    "JobPublic",
    "JobResult",
    "JobStatus",
    "Message",
    "Sampling",
    "Usage",
    "WebhookAttempt",
    "WebhookSpec",
    "join_record",
    "utcnow",
]


# Longest `timeout_s` a job may ask for.
MAX_TIMEOUT_S = 365 * 86_400


def utcnow() -> datetime:
    return datetime.now(UTC)


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

    @property
    def retryable(self) -> bool:
        """Whether `POST /v1/jobs/{id}/retry` may queue the job again."""
        return self in (JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED)


_TERMINAL = {s.value.encode() for s in JobStatus if s.terminal}


def is_terminal(status: bytes | str | None) -> bool:
    """Whether a status as read from Redis (bytes) or written (str) is a terminal one."""
    if isinstance(status, str):
        status = status.encode()
    return status in _TERMINAL


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


Role = Literal["system", "user", "assistant"]


class Message(_Model):
    """One chat turn; the worker renders the list with the model's chat template."""

    role: Role
    content: str


class Sampling(_Model):
    """Sampling parameters, with vLLM's meaning and defaults unless noted."""

    max_tokens: int = Field(256, ge=1, description="Most tokens to generate (structq default 256).")
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=-1, le=2**31 - 1, description="0 or -1: off.")
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    stop: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list, max_length=16)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=2.0)
    ignore_eos: bool = Field(False, description="Keep generating past end-of-sequence.")


WebhookEvent = Literal["started", "completed"]
# A batch's one event, sent when it ends (``batch.<its final status>``).
BatchWebhookEvent = Literal["batch.completed", "batch.failed", "batch.expired", "batch.cancelled"]


# A job's priority unless it asks for another: 1, normal; 0 is background (batch lines).
DEFAULT_PRIORITY = 1


def _completed_only() -> list[WebhookEvent]:
    return ["completed"]


class WebhookSpec(_Model):
    """Where to send the job's events. ``completed``: any terminal status."""

    url: str = Field(min_length=1, max_length=2048)
    events: list[WebhookEvent] = Field(default_factory=_completed_only, min_length=1)

    @model_validator(mode="after")
    def _url_form(self) -> Self:
        from shared.webhooks import parse_url

        parse_url(self.url)  # scheme and form; where it resolves is checked by the gateway
        self.events = sorted(set(self.events))
        return self


class WebhookAttempt(_Model):
    """One attempt to deliver one of the job's events (or the batch's)."""

    event: WebhookEvent | BatchWebhookEvent
    webhook_id: str
    attempt: int
    at: datetime
    status_code: int | None = None
    error: str | None = None
    duration_ms: float
    outcome: Literal["delivered", "retrying", "gave_up"]


_MetadataKey = Annotated[str, Field(min_length=1, max_length=64)]
_MetadataValue = Annotated[str, Field(max_length=512)]


class JobCreate(_Model):
    """A generation job as a client submits it: a prompt or a chat, never both."""

    prompt: str | None = Field(None, min_length=1)
    messages: list[Message] | None = Field(None, min_length=1)
    output_type: OutputType = Field(default_factory=TextSpec)
    sampling: Sampling = Field(default_factory=Sampling)
    model: str | None = Field(None, description="Served model name; default: the pool's model.")
    metadata: dict[_MetadataKey, _MetadataValue] = Field(default_factory=dict, max_length=16)
    priority: int = Field(
        DEFAULT_PRIORITY,
        ge=0,
        le=PRIORITY_LEVELS - 1,
        description="Higher runs first when the queue is backed up: 0 background (a batch's "
        "lines by default), 1 normal (the default), 2 and 3 more urgent.",
    )
    deadline: AwareDatetime | None = Field(
        None,
        description="Absolute time (with a timezone). Not started by then: `expired`, never "
        "run. Still running then: aborted, `failed` with `deadline_exceeded`.",
    )
    timeout_s: float | None = Field(
        None,
        gt=0,
        le=MAX_TIMEOUT_S,
        description="The same as `deadline`, in seconds from submission (at most a year).",
    )
    webhook: WebhookSpec | None = Field(
        None, description="Where to POST the job's events (signed per Standard Webhooks)."
    )
    stream: bool = Field(
        False,
        description="Publish the output as it is generated: read it as server-sent events "
        "from `GET /v1/jobs/{id}/stream`.",
    )

    @model_validator(mode="after")
    def _prompt_xor_messages(self) -> Self:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` and `messages`")
        return self

    @model_validator(mode="after")
    def _one_deadline(self) -> Self:
        if self.deadline is not None and self.timeout_s is not None:
            raise ValueError("give at most one of `deadline` and `timeout_s`")
        return self


class Usage(_Model):
    prompt_tokens: int
    completion_tokens: int


class EngineStats(_Model):
    """How the engine ran the job: which worker, which engine steps, how full they were."""

    worker: str
    first_step: int = Field(description="Engine step that produced the job's first token.")
    last_step: int = Field(description="Engine step that produced the job's last token.")
    max_batch: int = Field(description="Most requests that advanced in one step with this one.")
    engine_s: float | None = Field(
        None, description="Seconds from handing the request to the engine to its last token."
    )


class JobResult(_Model):
    text: str
    value: Any = Field(description="The text parsed for its output type.")
    finish_reason: str | None
    usage: Usage


class JobError(_Model):
    code: ErrorCode
    message: str
    text: str | None = Field(None, description="Partial output, when there was any.")
    usage: Usage | None = Field(None, description="Tokens used, when the engine ran the job.")


class Job(JobCreate):
    """The stored record: the request plus everything that happened to it."""

    id: str
    model: str  # resolved at submit time: never None once stored; the pool's (base) model
    adapter: str | None = Field(
        None,
        description="The LoRA adapter the job runs with, when its `model` named one: `model` "
        "is then the adapter's base model, whose pool runs it. Absent otherwise.",
        # Left out of a record without one, so workers and gateways older than this field
        # (which refuse unknown fields) still read every job that names no adapter.
        exclude_if=lambda value: value is None,
    )
    status: JobStatus = JobStatus.QUEUED
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = Field(0, description="Runs started (a run a drain interrupted is given back).")
    retries: int = Field(0, description="Times `POST /v1/jobs/{id}/retry` queued it again.")
    worker: str | None = Field(None, description="The worker of the latest run.")
    client: str | None = Field(None, description="The API key (its name) that submitted it.")
    request_id: str | None = Field(
        None,
        description="The id of the request that submitted it (its `X-Request-ID`, or the one "
        "the gateway made): the logs of every process carry it.",
    )
    result: JobResult | None = None
    error: JobError | None = None
    engine: EngineStats | None = None

    @model_validator(mode="after")
    def _one_deadline(self) -> Self:
        # Stored, `deadline` is resolved: set from `timeout_s` when the client gave that.
        return self

    @property
    def served_name(self) -> str:
        """The name the client asked for: the adapter's, or the model's."""
        return self.adapter or self.model

    def deadline_ts(self) -> float | None:
        return None if self.deadline is None else self.deadline.timestamp()

    def spec_json(self) -> str:
        """The request part of the record (never rewritten once stored)."""
        # by_alias: a JSON Schema spec is stored (and returned) under the key clients use.
        return self.model_dump_json(exclude=_STATE_SET, by_alias=True)

    def state_json(self) -> str:
        """The part of the record every status change rewrites."""
        return self.model_dump_json(include=_STATE_SET)

    @classmethod
    def from_parts(cls, spec: bytes | str, state: bytes | str) -> Job:
        """The job from its stored parts. Their content was checked when it was submitted, so
        the costly checks of its output type (compiling a schema, a grammar) are not run again."""
        return cls.model_validate_json(join_record(spec, state), context=TRUSTED)


# Fields of the job's state: what status changes rewrite (see the module's docstring).
STATE_FIELDS = frozenset(
    {
        "status",
        "deadline",
        "started_at",
        "finished_at",
        "attempts",
        "retries",
        "worker",
        "result",
        "error",
        "engine",
    }
)
# As model_dump takes it (a set).
_STATE_SET: set[str] = set(STATE_FIELDS)

# Validation context for records structq stored itself (see ``shared.output_types``).
TRUSTED = {"trusted": True}


def join_record(spec: bytes | str, state: bytes | str) -> bytes:
    """One JSON object from the stored spec and state (each a non-empty JSON object)."""
    if isinstance(spec, str):
        spec = spec.encode()
    if isinstance(state, str):
        state = state.encode()
    return spec[:-1] + b"," + state[1:]


class JobPublic(Job):
    """What ``GET /v1/jobs/{id}`` returns: the stored record, plus its webhook attempts."""

    webhook_deliveries: list[WebhookAttempt] = Field(default_factory=list)

    @classmethod
    def of(cls, job: Job) -> JobPublic:
        return cls.model_validate(job.model_dump())
