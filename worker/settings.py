"""Worker settings (``STRUCTQ_*`` variables; see the README's settings table)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, model_validator

from shared.settings import CommonSettings

__all__ = ["WorkerSettings"]


class WorkerSettings(CommonSettings):
    model_path: Path | None = Field(
        None,
        description="Local Hugging Face model folder to serve. Default: the bundled "
        "SmolLM2-135M-Instruct, prepared once into STRUCTQ_CACHE_DIR.",
    )
    cache_dir: Path = Field(
        Path.home() / ".cache" / "structq", description="Where prepared models are kept."
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
    fault_injection: bool = Field(
        False,
        description="Testing only: a job whose metadata has `structq.fault: kill-worker` "
        "SIGKILLs the worker that claims it (a job that crashes its worker every time).",
    )
    # Engine options, passed to vLLM's EngineArgs.
    max_model_len: int = Field(2048, ge=16, description="Context length the engine serves.")
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

    @model_validator(mode="after")
    def _compact_needs_backend(self) -> Self:
        if self.json_compact and self.structured_outputs_backend not in ("xgrammar", "guidance"):
            raise ValueError(
                "STRUCTQ_JSON_COMPACT=true needs STRUCTQ_STRUCTURED_OUTPUTS_BACKEND xgrammar or "
                f"guidance (got {self.structured_outputs_backend}); set one of them differently"
            )
        return self
