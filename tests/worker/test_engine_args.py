"""The engine keywords the worker (and the benchmark's baseline) pass to vLLM."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker import engine_args
from worker.settings import WorkerSettings


@pytest.mark.parametrize(
    ("setting", "on_cpu", "flags", "expected"),
    [
        ("auto", True, "fpu avx2 fma", "float32"),
        ("auto", True, "avx2 avx512f avx512_bf16", "auto"),
        ("auto", True, "avx2 amx_bf16 amx_tile", "auto"),
        ("auto", False, "avx2", "auto"),
        ("bfloat16", True, "avx2", "bfloat16"),
    ],
)
def test_auto_dtype_avoids_emulated_bf16_on_cpu(monkeypatch, setting, on_cpu, flags, expected):
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: f"flags\t: {flags}\n")
    assert engine_args._dtype(setting, on_cpu) == expected


def test_engine_keywords_follow_the_settings(tmp_path):
    settings = WorkerSettings(
        max_model_len=1024,
        max_num_seqs=8,
        json_compact=False,
        structured_outputs_backend="auto",
        gpu_memory_utilization=0.25,
    )
    kwargs = engine_args.engine_kwargs(settings, tmp_path)
    assert kwargs["model"] == str(tmp_path)
    assert kwargs["served_model_name"] == [settings.model]
    assert (kwargs["max_model_len"], kwargs["max_num_seqs"]) == (1024, 8)
    assert kwargs["gpu_memory_utilization"] == 0.25
    assert kwargs["structured_outputs_config"] == {
        "backend": "auto",
        "disable_any_whitespace": False,
    }


def test_compact_json_needs_a_backend_that_supports_it():
    with pytest.raises(ValueError, match="STRUCTQ_JSON_COMPACT=true needs"):
        WorkerSettings(json_compact=True, structured_outputs_backend="auto")


@pytest.mark.parametrize(
    ("setting", "on_cpu", "expected"),
    [
        (None, True, {"enable_chunked_prefill": False, "max_num_batched_tokens": 8192}),
        (None, False, {}),
        (True, True, {}),
        (False, False, {"enable_chunked_prefill": False, "max_num_batched_tokens": 8192}),
    ],
)
def test_unchunked_prefill_on_cpu_with_a_budget_for_the_longest_prompt(
    monkeypatch, tmp_path, setting, on_cpu, expected
):
    from vllm.platforms import current_platform

    monkeypatch.setattr(current_platform, "is_cpu", lambda: on_cpu)
    settings = WorkerSettings(max_model_len=8192, chunked_prefill=setting)
    kwargs = engine_args.engine_kwargs(settings, tmp_path)
    keys = ("enable_chunked_prefill", "max_num_batched_tokens")
    got = {k: kwargs[k] for k in keys if k in kwargs}
    assert got == expected
