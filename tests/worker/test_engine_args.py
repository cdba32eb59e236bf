"""The engine keywords the worker (and the benchmark's baseline) pass to vLLM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.settings import DEFAULT_MODEL
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


def _adapter(folder: Path, rank: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": rank, "lora_alpha": 16}))
    return folder


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"tensor_paralel_size": 2}, "unknown vLLM engine argument 'tensor_paralel_size' (did "),
        ({"no_such_thing": True}, "unknown vLLM engine argument 'no_such_thing'"),
        ({"tensor_parallel_size": "2"}, "'tensor_parallel_size': Input should be a valid integer"),
        ({"dtype": 16}, "'dtype': Input should be 'auto'"),
        ({"max_lora_rank": 17}, "'max_lora_rank': Input should be 1, 8, 16"),
        ({"enable_lora": "yes"}, "'enable_lora': Input should be a valid boolean"),
        ({"compilation_config": 3}, "'compilation_config': Input should be a dictionary"),
        ({"model": "/elsewhere"}, "'model' is set by structq: use STRUCTQ_MODEL_PATH"),
        ({"max_model_len": 4096}, "use STRUCTQ_MAX_MODEL_LEN"),
    ],
)
def test_a_bad_engine_argument_stops_the_settings_naming_it(monkeypatch, args, message):
    monkeypatch.setenv("STRUCTQ_ENGINE_ARGS", json.dumps(args))
    with pytest.raises(SystemExit) as stopped:
        WorkerSettings.load()
    text = str(stopped.value)
    assert "STRUCTQ_ENGINE_ARGS" in text and message in text, text


def test_engine_arguments_pass_the_seeds_examples_and_win_over_structqs(tmp_path, monkeypatch):
    args = {
        "tensor_parallel_size": 1,
        "quantization": "awq",
        "dtype": "bfloat16",
        "trust_remote_code": True,
        "gpu_memory_utilization": 0.5,
        "kv_cache_memory_bytes": 2_000_000_000,
        "structured_outputs_config": {"backend": "guidance"},
        "compilation_config": {"mode": 0},
    }
    monkeypatch.setenv("STRUCTQ_ENGINE_ARGS", json.dumps(args))
    kwargs = engine_args.engine_kwargs(WorkerSettings.load(), tmp_path)
    for key in ("tensor_parallel_size", "quantization", "dtype", "kv_cache_memory_bytes"):
        assert kwargs[key] == args[key]
    assert kwargs["gpu_memory_utilization"] == 0.5
    # A config given as a dict is merged into structq's, key by key.
    assert kwargs["structured_outputs_config"] == {
        "backend": "guidance",
        "disable_any_whitespace": True,
    }
    # And the whole set is what vLLM's EngineArgs takes.
    from vllm.engine.arg_utils import EngineArgs

    EngineArgs(**kwargs)


@pytest.mark.parametrize(("on_cpu", "slots"), [(False, 2), (True, 3)])
def test_adapters_turn_lora_on_with_room_for_every_one(monkeypatch, tmp_path, on_cpu, slots):
    from worker import adapters

    monkeypatch.setattr(adapters, "_on_cpu", lambda: on_cpu)
    modules = {
        "small": _adapter(tmp_path / "small", 4),
        "big": _adapter(tmp_path / "big", 24),
    }
    kwargs = engine_args.engine_kwargs(WorkerSettings(lora_modules=modules), tmp_path)
    # On CPU one slot more, kept empty: requests without an adapter read the last slot there.
    expected = (True, slots, 32)
    assert (kwargs["enable_lora"], kwargs["max_loras"], kwargs["max_lora_rank"]) == expected
    settings = WorkerSettings(lora_modules=modules, engine_args={"max_loras": 4})
    assert engine_args.engine_kwargs(settings, tmp_path)["max_loras"] == 4
    assert "enable_lora" not in engine_args.engine_kwargs(WorkerSettings(), tmp_path)
    if on_cpu:
        with pytest.raises(ValueError, match="max_loras 2 must be more than the 2 adapters"):
            WorkerSettings(lora_modules=modules, engine_args={"max_loras": 2})
    else:
        WorkerSettings(lora_modules=modules, engine_args={"max_loras": 1})


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing folder", "holds no adapter_config.json"),
        ("no rank", "gives no LoRA rank"),
        ("rank above the limit", "max_lora_rank 8 is below the rank of adapter 'a' (r=16)"),
        ("lora turned off", "sets enable_lora to false"),
        ("the pool's own name", "is the pool's model name"),
        ("bad name", "not a usable adapter name"),
    ],
)
def test_a_bad_adapter_stops_the_settings_naming_it(tmp_path, monkeypatch, case, message):
    folder = tmp_path / "a"
    name = "a"
    engine = {}
    if case == "missing folder":
        folder = tmp_path / "nowhere"
    elif case == "no rank":
        folder.mkdir()
        (folder / "adapter_config.json").write_text("{}")
    else:
        _adapter(folder, 16)
    if case == "rank above the limit":
        engine = {"max_lora_rank": 8}
    elif case == "lora turned off":
        engine = {"enable_lora": False}
    elif case == "the pool's own name":
        name = DEFAULT_MODEL
    elif case == "bad name":
        name = "no spaces please"
    monkeypatch.setenv("STRUCTQ_LORA_MODULES", json.dumps({name: str(folder)}))
    monkeypatch.setenv("STRUCTQ_ENGINE_ARGS", json.dumps(engine))
    with pytest.raises(SystemExit) as stopped:
        WorkerSettings.load()
    assert message in str(stopped.value), str(stopped.value)


def test_an_engine_argument_with_a_setting_of_its_own_is_given_once(monkeypatch):
    monkeypatch.setenv("STRUCTQ_DTYPE", "float16")
    monkeypatch.setenv("STRUCTQ_ENGINE_ARGS", json.dumps({"dtype": "bfloat16"}))
    with pytest.raises(SystemExit) as stopped:
        WorkerSettings.load()
    assert "sets dtype (STRUCTQ_DTYPE), which its own setting sets too" in str(stopped.value)


def test_compact_json_is_checked_against_the_backend_the_engine_gets(monkeypatch):
    outputs = {"structured_outputs_config": {"backend": "outlines"}}
    monkeypatch.setenv("STRUCTQ_ENGINE_ARGS", json.dumps(outputs))
    with pytest.raises(SystemExit) as stopped:
        WorkerSettings.load()
    assert "STRUCTQ_JSON_COMPACT=true needs" in str(stopped.value)
    monkeypatch.setenv("STRUCTQ_JSON_COMPACT", "false")
    assert WorkerSettings.load().engine_args == outputs
