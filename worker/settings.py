"""Worker settings (``STRUCTQ_*`` variables; see the README's settings table)."""

from __future__ import annotations

import os
import socket
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import AwareDatetime, Field, field_validator, model_validator

from shared.settings import CommonSettings

__all__ = ["WebhookSettings", "WorkerSettings"]


class WorkerSettings(CommonSettings):
    model_path: Path | None = Field(
        None,
        description="Local Hugging Face model folder to serve. Default: the bundled "
        "SmolLM2-135M-Instruct, prepared once into STRUCTQ_CACHE_DIR.",
    )
    worker_id: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
        description="This worker's name in job records and announcements.",
    )
    max_inflight: int = Field(
        256, ge=1, description="Jobs one worker runs at once (Celery threads feeding the engine)."
    )
    drain_timeout_s: float = Field(
        60,
        ge=0,
        description="On SIGTERM, how long in-flight jobs may run on before they are re-queued "
        "for another worker. Keep it below Kubernetes' terminationGracePeriodSeconds.",
    )
    metrics_port: int = Field(
        9101,
        ge=0,
        le=65535,
        description="Port of this worker's Prometheus metrics (`/metrics`; 0: none). See "
        "docs/observability.md.",
    )
    engine_stats: bool = Field(
        True,
        description="vLLM's own statistics (its `vllm:` metrics, KV-cache usage, running and "
        "waiting requests) on the worker's metrics port. Off saves vLLM's per-step accounting.",
    )
    fault_injection: bool = Field(
        False,
        description="Testing only: a job whose metadata has `structq.fault: kill-worker` "
        "SIGKILLs the worker that claims it (a job that crashes its worker every time).",
    )
    # Engine options, passed to vLLM's EngineArgs.
    dtype: str = Field(
        "auto",
        description="Model dtype (vLLM's --dtype). `auto` is vLLM's choice, except on a CPU "
        "without native bf16 (no AVX512-BF16/AMX), where it means float32: vLLM would pick "
        "bf16 there, and run it ~5x slower.",
    )
    cpu_reserved_cores: int | None = Field(
        None,
        ge=0,
        description="CPU engines only: cores vLLM keeps free of its compute threads "
        "(VLLM_CPU_NUM_OF_RESERVED_CPU). Unset: vLLM's default.",
    )
    gpu_memory_utilization: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Share of accelerator memory vLLM may use; on CPU the share of RAM for its "
        "KV cache. Default: 0.9 on a GPU, 0.3 on CPU.",
    )
    enforce_eager: bool | None = Field(
        None, description="Skip graph capture/compilation. Default: on for CPU, off on a GPU."
    )
    max_num_seqs: int | None = Field(
        None, ge=1, description="Most sequences per engine step (vLLM's default when unset)."
    )
    chunked_prefill: bool | None = Field(
        None,
        description="Let vLLM split a prompt's prefill across engine steps. Default: off on CPU, "
        "where vLLM-CPU 0.32.0 kills its engine when it splits a seeded request's prefill "
        "(`CPU Generator does not use offset`), on on a GPU. Off, each step's token budget is "
        "at least max_model_len, so every prompt fits one step.",
    )
    json_compact: bool = Field(
        True,
        description="JSON outputs carry no whitespace between tokens (vLLM's "
        "disable_any_whitespace, engine-wide). On by default, close to Outlines' default: small "
        "models otherwise pad JSON with runs of newlines.",
    )
    structured_outputs_backend: Literal["auto", "xgrammar", "guidance", "outlines"] = Field(
        "xgrammar",
        description="vLLM's structured-output backend. xgrammar is what `auto` picks first; "
        "it is named outright because vLLM allows STRUCTQ_JSON_COMPACT only with xgrammar "
        "or guidance.",
    )

    engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description="More of vLLM's engine arguments (JSON object of `EngineArgs` fields, the "
        "keywords of `vllm.LLM`), merged over structq's own: e.g. "
        '`{"tensor_parallel_size": 2, "quantization": "awq"}`. Checked at start against the '
        "installed vLLM: an unknown or badly typed field stops the worker. See docs/models.md.",
    )
    lora_modules: dict[str, Path] = Field(
        default_factory=dict,
        description="LoRA adapters this worker serves beside its model (JSON object: name -> "
        "local PEFT adapter folder), asked for by `model` = name. Every worker of a pool must "
        "declare the same ones. See docs/models.md.",
    )

    @field_validator("engine_args")
    @classmethod
    def _known_engine_args(cls, value: dict[str, Any]) -> dict[str, Any]:
        if value:
            from worker.engine_args import check_engine_args

            check_engine_args(value)
        return value

    @field_validator("lora_modules")
    @classmethod
    def _readable_adapters(cls, value: dict[str, Path]) -> dict[str, Path]:
        from worker.adapters import check_adapter_folders

        return check_adapter_folders(value)

    @model_validator(mode="after")
    def _adapters_fit_the_engine(self) -> Self:
        from worker.adapters import check_lora_limits

        if self.model in self.lora_modules:
            raise ValueError(
                f"STRUCTQ_LORA_MODULES: the adapter name {self.model!r} is the pool's model "
                "name (STRUCTQ_MODEL); give the adapter another"
            )
        check_lora_limits(self.lora_modules, self.engine_args)
        return self

    @model_validator(mode="after")
    def _compact_needs_backend(self) -> Self:
        # As the engine gets them: STRUCTQ_ENGINE_ARGS' structured_outputs_config wins.
        outputs = self.engine_args.get("structured_outputs_config")
        outputs = outputs if isinstance(outputs, dict) else {}
        backend = outputs.get("backend", self.structured_outputs_backend)
        compact = outputs.get("disable_any_whitespace", self.json_compact)
        if compact and backend not in ("xgrammar", "guidance"):
            raise ValueError(
                "STRUCTQ_JSON_COMPACT=true needs STRUCTQ_STRUCTURED_OUTPUTS_BACKEND xgrammar or "
                f"guidance (got {backend}); set one of them differently"
            )
        return self

    @model_validator(mode="after")
    def _engine_args_once(self) -> Self:
        given = [
            f"{arg} (STRUCTQ_{setting.upper()})"
            for arg, setting in _SETTING_OF_ARG.items()
            if arg in self.engine_args and setting in self.model_fields_set
        ]
        if given:
            raise ValueError(
                f"STRUCTQ_ENGINE_ARGS sets {', '.join(given)}, which its own setting sets too: "
                "give each once"
            )
        return self


# Engine arguments that also have a STRUCTQ_* setting of their own: set either, not both.
_SETTING_OF_ARG = {
    "dtype": "dtype",
    "gpu_memory_utilization": "gpu_memory_utilization",
    "enforce_eager": "enforce_eager",
    "max_num_seqs": "max_num_seqs",
    "enable_chunked_prefill": "chunked_prefill",
    "disable_log_stats": "engine_stats",
}


class WebhookSettings(CommonSettings):
    """Settings of the webhook worker (``python -m worker.webhooks``; no engine, no GPU)."""

    webhook_secret: str = Field(
        description="Signing secret, `whsec_` + base64 (Standard Webhooks). Required.",
    )
    webhook_previous_secret: str | None = Field(
        None, description="During a rotation: the old secret, which signs too until ..."
    )
    webhook_previous_secret_until: AwareDatetime | None = Field(
        None, description="... this time (with a timezone); then only the new one signs."
    )
    webhook_timeout_s: float = Field(15.0, gt=0, description="Timeout of one delivery request.")
    webhook_schedule_s: list[float] = Field(
        default_factory=lambda: [0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0],
        min_length=1,
        description="Delay before each attempt of a delivery: the first, then after each failure "
        "(JSON list; default close to Standard Webhooks': now, 5 s, 5 min, 30 min, 2 h, 5 h, "
        "10 h, then give up). Each delay gets +-20% jitter; a Retry-After longer wins.",
    )
    webhook_concurrency: int = Field(32, ge=1, description="Deliveries in flight at once.")
    metrics_port: int = Field(
        9102,
        ge=0,
        le=65535,
        description="Port of the webhook worker's Prometheus metrics (`/metrics`; 0: none).",
    )
    webhook_worker_id: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
        description="This webhook worker's name.",
    )

    @field_validator("webhook_secret", "webhook_previous_secret")
    @classmethod
    def _valid_secret(cls, value: str | None) -> str | None:
        if value is None:
            return value
        from standardwebhooks import Webhook

        try:
            Webhook(value)
        except Exception as exc:
            raise ValueError(f"not a `whsec_<base64>` secret: {exc}") from None
        return value

    def signing_secrets(self, now: datetime) -> list[str]:
        secrets = [self.webhook_secret]
        if self.webhook_previous_secret and (
            self.webhook_previous_secret_until is None or now < self.webhook_previous_secret_until
        ):
            secrets.append(self.webhook_previous_secret)
        return secrets
