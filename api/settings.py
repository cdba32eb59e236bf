"""Gateway settings (``STRUCTQ_*`` variables; see the README's settings table)."""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator

from shared.settings import CommonSettings

__all__ = ["ApiSettings"]


class ApiSettings(CommonSettings):
    host: str = Field("127.0.0.1", description="Address the gateway listens on.")
    port: int = Field(8000, ge=1, le=65535, description="Port the gateway listens on.")
    workers: int = Field(1, ge=1, description="Gateway worker processes (uvicorn --workers).")
    redis_max_connections: int = Field(
        64,
        ge=2,
        description="Redis connections per gateway process; requests beyond that wait for one "
        "(a burst never fails for lack of connections).",
    )
    extra_models: list[str] = Field(
        default_factory=list,
        description="More served model names the gateway accepts beside STRUCTQ_MODEL "
        "(JSON list), each routed to its own queue.",
    )

    idempotency_ttl_s: int = Field(
        86_400,
        gt=0,
        description="How long an Idempotency-Key is remembered (at most STRUCTQ_JOB_TTL_S).",
    )
    janitor_interval_s: float = Field(
        1.0,
        gt=0,
        description="How often the gateway's janitor expires overdue queued jobs and re-queues "
        "the running jobs of dead workers.",
    )
    cancel_wait_s: float = Field(
        10.0,
        ge=0,
        description="How long `POST /v1/jobs/{id}/cancel` waits for a running job to stop "
        "before answering 202 with the job still running.",
    )

    openai_wait_s: float = Field(
        600.0,
        gt=0,
        description="How long `/v1/chat/completions` and `/v1/completions` wait for their jobs. "
        "The jobs carry it as their `timeout_s`: not done by then, they expire or are aborted, "
        "and the request gets a 504 timeout error.",
    )
    stream_max_connections: int = Field(
        256,
        ge=1,
        description="Redis connections per gateway process for relaying streamed output (one "
        "per streaming request while it reads).",
    )

    @model_validator(mode="after")
    def _idempotency_within_job_ttl(self) -> Self:
        if self.idempotency_ttl_s > self.job_ttl_s:
            raise ValueError(
                f"STRUCTQ_IDEMPOTENCY_TTL_S ({self.idempotency_ttl_s}) must not exceed "
                f"STRUCTQ_JOB_TTL_S ({self.job_ttl_s}): a key would outlive its job"
            )
        return self

    @property
    def models(self) -> list[str]:
        return [self.model, *self.extra_models]
