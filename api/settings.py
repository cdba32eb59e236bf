"""Gateway settings (``STRUCTQ_*`` variables; see the README's settings table)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.output_types import MAX_GRAMMAR_CHARS, MAX_REGEX_CHARS, MAX_SCHEMA_JSON
from shared.settings import DEFAULT_MODEL, CommonSettings

__all__ = ["ApiKey", "ApiSettings"]


_KEY_NAME = r"^[A-Za-z0-9_.-]{1,64}$"


class ApiKey(BaseModel):
    """One API key as configured: its name, the SHA-256 of the key (never the key itself),
    and whether it is an admin key (sees every job, may use the admin endpoints)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_KEY_NAME)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    admin: bool = False


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
        "(JSON list), each routed to its own queue: one worker pool per model.",
    )
    adapter_ttl_s: float = Field(
        7 * 86_400,
        gt=0,
        description="How long after a worker last announced a LoRA adapter the gateway still "
        "routes jobs asking for it to its pool (whose workers may be scaled to zero).",
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
    reconcile_interval_s: float = Field(
        5.0,
        gt=0,
        description="How often the janitor looks for queued jobs whose task message was lost "
        "(a worker killed right after taking it, a pop a Redis restart lost): one seen so in "
        "two looks in a row, older than STRUCTQ_ORPHAN_GRACE_S, gets a fresh message.",
    )
    cancel_wait_s: float = Field(
        10.0,
        ge=0,
        description="How long `POST /v1/jobs/{id}/cancel` waits for a running job to stop "
        "before answering 202 with the job still running.",
    )

    openai_wait_s: float = Field(
        540.0,
        gt=0,
        description="How long `/v1/chat/completions` and `/v1/completions` wait for their jobs. "
        "The jobs carry it as their `timeout_s`: not done by then, they expire or are aborted, "
        "and the request gets a 504 timeout error. Keep it below the clients' own timeout (the "
        "openai SDK's is 600 s), or they give up and retry first.",
    )
    stream_max_connections: int = Field(
        256,
        ge=1,
        description="Redis connections per gateway process for relaying streamed output (one "
        "per streaming request while it reads).",
    )

    # -- files and batches ----------------------------------------------------------------
    file_max_bytes: int = Field(
        200 << 20, ge=1024, description="Largest file upload (`POST /v1/files`; 413 beyond)."
    )
    file_max_lines: int = Field(
        100_000, ge=1, description="Most lines in an uploaded file (422 beyond)."
    )
    file_retention_s: int = Field(
        7 * 86_400, gt=0, description="How long files and batches are kept."
    )
    file_store: Literal["redis", "s3"] = Field(
        "redis",
        description="Where file content is kept: `redis` (lists of 1 MiB chunks, the retention "
        "as TTL) or `s3` (one object per file in STRUCTQ_S3_BUCKET; needs structq[s3]).",
    )
    s3_bucket: str | None = Field(
        None, description="The bucket files are kept in (required with STRUCTQ_FILE_STORE=s3)."
    )
    s3_prefix: str = Field(
        "structq/files/",
        description="Key prefix of the files' objects (`<prefix><file id>`); the bucket's "
        "lifecycle rule must expire objects under it.",
    )
    s3_endpoint_url: str | None = Field(
        None,
        description="URL of an S3-compatible service (MinIO, R2, ...; requests then use "
        "path-style addressing). Unset: AWS S3.",
    )
    s3_region: str | None = Field(
        None,
        description="The bucket's region. Unset: boto3's own (AWS_DEFAULT_REGION, ~/.aws/config).",
    )
    batch_max_in_flight: int = Field(
        1024,
        ge=1,
        description="Lines of one batch queued or running at once; the batch driver tops "
        "them up as they finish (a batch's cap, instead of the per-key caps line by line).",
    )
    batch_poll_s: float = Field(
        0.5, gt=0, description="How often a gateway's batch driver looks at its batches."
    )

    # -- security ------------------------------------------------------------------------
    api_keys: list[ApiKey] = Field(
        default_factory=list,
        description='API keys (JSON list of {"name", "sha256", "admin"}; make one with '
        "`python -m api.keys create NAME`). Required unless STRUCTQ_INSECURE_NO_AUTH.",
    )
    insecure_no_auth: bool = Field(
        False,
        description="Development only: run without API keys, every caller an admin. The "
        "gateway refuses to start without keys unless this is on.",
    )
    rate_limit_per_s: float = Field(
        20.0, ge=0, description="Requests per second per API key (0: no limit)."
    )
    rate_limit_burst: int = Field(
        100, ge=1, description="Requests a key may send at once above its rate."
    )
    max_queued_per_key: int = Field(
        2000, ge=0, description="Queued jobs one API key may have at once (0: no limit)."
    )
    max_queue_depth: int = Field(
        20_000,
        ge=0,
        description="Queued jobs a model may have; past it new jobs get 503 with "
        "Retry-After (0: no limit).",
    )
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest request body (413).")
    max_schema_bytes: int = Field(
        32_768, ge=64, le=MAX_SCHEMA_JSON, description="Largest JSON Schema, as JSON."
    )
    max_schema_depth: int = Field(
        12, ge=1, description="Deepest nesting of a JSON Schema's subschemas."
    )
    max_schema_properties: int = Field(
        256, ge=1, description="Most properties in a JSON Schema (all objects together)."
    )
    max_enum_values: int = Field(
        256, ge=1, description="Most members of one enum, and most choices of a choice type."
    )
    max_regex_length: int = Field(
        1024, ge=1, le=MAX_REGEX_CHARS, description="Longest regex pattern."
    )
    max_grammar_bytes: int = Field(
        16_384, ge=16, le=MAX_GRAMMAR_CHARS, description="Largest grammar."
    )
    max_choice_length: int = Field(256, ge=1, description="Longest single choice.")
    compile_check: bool = Field(
        True,
        description="Compile each new regex, JSON Schema and grammar against the model's "
        "vocabulary before enqueueing it (in a process the gateway kills past "
        "STRUCTQ_COMPILE_TIMEOUT_S).",
    )
    compile_timeout_s: float = Field(
        5.0, gt=0, description="Longest a spec's compile check may take before it is refused."
    )
    compile_workers: int = Field(1, ge=1, description="Compile-check processes per gateway.")
    compile_memory_mb: int = Field(
        4096, ge=512, description="Address-space cap of each compile-check process."
    )
    tokenizers: dict[str, Path] = Field(
        default_factory=dict,
        description="Model name -> folder with its tokenizer.json (JSON object), for counting "
        "prompt tokens and compile checks. Default for STRUCTQ_MODEL: the bundled model's "
        "folder in STRUCTQ_CACHE_DIR, when present.",
    )

    @model_validator(mode="after")
    def _keys_or_explicitly_insecure(self) -> Self:
        if not self.api_keys and not self.insecure_no_auth:
            raise ValueError(
                "no API keys configured (STRUCTQ_API_KEYS); make one with `python -m api.keys "
                "create NAME`, or set STRUCTQ_INSECURE_NO_AUTH=true to run without "
                "authentication (development only)"
            )
        names = [key.name for key in self.api_keys]
        if len(set(names)) != len(names):
            raise ValueError("STRUCTQ_API_KEYS: key names must be unique")
        return self

    @model_validator(mode="after")
    def _s3_has_a_bucket(self) -> Self:
        if self.file_store == "s3" and not self.s3_bucket:
            raise ValueError("STRUCTQ_FILE_STORE=s3 needs STRUCTQ_S3_BUCKET (the bucket's name)")
        return self

    def tokenizer_path(self, model: str) -> Path | None:
        """The folder holding ``model``'s tokenizer.json, if this gateway has one."""
        path = self.tokenizers.get(model)
        if path is None and model == DEFAULT_MODEL:
            path = self.cache_dir / "models" / DEFAULT_MODEL
        return path if path is not None and (path / "tokenizer.json").is_file() else None

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
