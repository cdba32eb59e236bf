"""vLLM's engine arguments, from the worker's settings: the keywords of ``EngineArgs`` (and of
``vllm.LLM``, which the benchmark's raw-vLLM baseline builds with the very same ones), with
structq's CPU choices (dtype, chunked prefill, memory share) where the settings leave them,
what its LoRA adapters need, and STRUCTQ_ENGINE_ARGS over all of it.

STRUCTQ_ENGINE_ARGS is checked when the settings load (:func:`check_engine_args`), before any
model does: every key must be a field of the installed vLLM's ``EngineArgs`` and every value
of that field's type (strictly: ``"2"`` is not an int), else the worker stops naming them.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import TypeAdapter

    from worker.settings import WorkerSettings

__all__ = ["OWNED_ARGS", "check_engine_args", "engine_kwargs", "merge_engine_args"]

# Engine arguments structq sets from its own settings, which other parts read too: refused in
# STRUCTQ_ENGINE_ARGS, with the setting to use instead.
OWNED_ARGS = {
    "model": "STRUCTQ_MODEL_PATH",
    "served_model_name": "STRUCTQ_MODEL",
    "max_model_len": "STRUCTQ_MAX_MODEL_LEN (the gateway reads it too)",
}


def check_engine_args(args: Mapping[str, Any]) -> None:
    """A ValueError naming every key of ``args`` that is not an ``EngineArgs`` field of the
    installed vLLM, is one structq owns, or holds a value not of its field's type."""
    from pydantic import ValidationError

    fields = _engine_fields()
    problems = []
    for key, value in args.items():
        if key in OWNED_ARGS:
            problems.append(f"{key!r} is set by structq: use {OWNED_ARGS[key]}")
        elif key not in fields:
            near = difflib.get_close_matches(key, fields, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            problems.append(f"unknown vLLM engine argument {key!r}{hint}")
        elif (check := fields[key]) is not None:
            adapter, strict = check
            try:
                adapter.validate_python(value, strict=strict)
            except ValidationError as exc:
                reason = exc.errors()[0]["msg"]
                problems.append(f"engine argument {key!r}: {reason} (got {value!r})")
    if problems:
        raise ValueError("; ".join(problems))


@functools.cache
def _engine_fields() -> dict[str, tuple[TypeAdapter[Any], bool] | None]:
    """Each ``EngineArgs`` field with a validator of its type and whether to apply it strictly
    (config objects are given as dicts, which only lax validation takes); None where vLLM's
    annotation cannot be checked outside vLLM (then any value passes here, and vLLM checks)."""
    from pydantic import BaseModel, ConfigDict, TypeAdapter
    from vllm.engine.arg_utils import EngineArgs

    namespace = vars(sys.modules[EngineArgs.__module__])
    checks: dict[str, tuple[TypeAdapter[Any], bool] | None] = {}
    for field in dataclasses.fields(EngineArgs):
        hint = field.type
        try:
            if isinstance(hint, str):
                hint = eval(hint, namespace)  # vLLM's own annotation, in vLLM's module
            structured = dataclasses.is_dataclass(hint) or (
                isinstance(hint, type) and issubclass(hint, BaseModel)
            )
            if structured:
                checks[field.name] = (TypeAdapter(hint), False)
            else:
                config = ConfigDict(arbitrary_types_allowed=True)
                checks[field.name] = (TypeAdapter(hint, config=config), True)
        except Exception:  # an annotation naming what only vLLM's type checking imports
            checks[field.name] = None
    return checks


_UNCHUNKED_TOKEN_BUDGET = 4096


def engine_kwargs(settings: WorkerSettings, model_path: Path) -> dict[str, Any]:
    """vLLM's engine arguments from the worker's settings, as keywords of ``EngineArgs`` (and of
    ``vllm.LLM``, which the benchmark's raw-vLLM baseline builds with the very same ones)."""
    from vllm.platforms import current_platform

    from worker.adapters import lora_engine_defaults

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
    ours: dict[str, Any] = dict(
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
        **lora_engine_defaults(settings.lora_modules),
    )
    return merge_engine_args(ours, settings.engine_args)


def merge_engine_args(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> dict[str, Any]:
    """``theirs`` over ``ours``; a config given as a dict on both sides is merged key by key
    (``{"structured_outputs_config": {"backend": "guidance"}}`` keeps structq's whitespace
    choice)."""
    merged = dict(ours)
    for key, value in theirs.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


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
