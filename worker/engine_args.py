"""vLLM's engine arguments, from the worker's settings: the keywords of ``EngineArgs`` (and of
``vllm.LLM``, which the benchmark's raw-vLLM baseline builds with the very same ones), with
structq's CPU choices (dtype, chunked prefill, memory share) where the settings leave them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from worker.settings import WorkerSettings

__all__ = ["engine_kwargs"]

_UNCHUNKED_TOKEN_BUDGET = 4096


def engine_kwargs(settings: WorkerSettings, model_path: Path) -> dict[str, Any]:
    """vLLM's engine arguments from the worker's settings, as keywords of ``EngineArgs`` (and of
    ``vllm.LLM``, which the benchmark's raw-vLLM baseline builds with the very same ones)."""
    from vllm.platforms import current_platform

    on_cpu = current_platform.is_cpu()
    if on_cpu and settings.cpu_reserved_cores is not None:
        # Read by the EngineCore process vLLM spawns, which inherits this environment.
        os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(settings.cpu_reserved_cores)
    chunked = not on_cpu if settings.chunked_prefill is None else settings.chunked_prefill
    scheduling: dict[str, Any] = {}
    if not chunked:
        # Whole prompts only: the budget must hold the longest one (4096 is vLLM-CPU's default).
        scheduling = dict(
            enable_chunked_prefill=False,
            max_num_batched_tokens=max(settings.max_model_len, _UNCHUNKED_TOKEN_BUDGET),
        )
    return dict(
        model=str(model_path),
        served_model_name=[settings.model],
        max_model_len=settings.max_model_len,
        dtype=_dtype(settings.dtype, on_cpu),
        gpu_memory_utilization=settings.gpu_memory_utilization or (0.3 if on_cpu else 0.9),
        enforce_eager=on_cpu if settings.enforce_eager is None else settings.enforce_eager,
        max_num_seqs=settings.max_num_seqs,
        structured_outputs_config={
            "backend": settings.structured_outputs_backend,
            "disable_any_whitespace": settings.json_compact,
        },
        disable_log_stats=not settings.engine_stats,
        **scheduling,
    )


def _dtype(setting: str, on_cpu: bool) -> str:
    if setting != "auto" or not on_cpu:
        return setting
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return setting
    # Without these, torch emulates bf16 matmuls: measured here 30 tok/s vs 161 in float32.
    native_bf16 = any(flag in flags for flag in ("avx512_bf16", "amx_bf16"))
    return setting if native_bf16 else "float32"
