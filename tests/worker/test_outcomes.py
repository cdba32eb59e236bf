"""How the worker turns a finished generation into a result or a failure (no engine here)."""

from __future__ import annotations

import pytest

from scripts.seed_jobs import CHARACTER_SCHEMA
from shared.errors import OutputInvalid, OutputTruncated
from shared.jobs import Job
from shared.output_types import IntSpec, JsonSchemaSpec, TextSpec
from worker.engine_types import Generation
from worker.outcomes import _result


def _generation(text: str, finish_reason: str) -> Generation:
    return Generation(
        text,
        finish_reason,
        prompt_tokens=5,
        completion_tokens=7,
        first_step=1,
        last_step=7,
        max_batch=3,
    )


def _job(output_type) -> Job:
    return Job(id="j", model="m", prompt="x", output_type=output_type)


def test_conforming_output_becomes_a_typed_value():
    result = _result(
        _job(JsonSchemaSpec(schema=CHARACTER_SCHEMA)),
        _generation('{"name":"Ann","age":30,"skills":["x"]}', "stop"),
    )
    assert result.value == {"name": "Ann", "age": 30, "skills": ["x"]}
    assert result.usage.prompt_tokens == 5 and result.usage.completion_tokens == 7


def test_text_cut_by_max_tokens_is_still_a_result():
    result = _result(_job(TextSpec()), _generation("Once upon a", "length"))
    assert result.value == "Once upon a" and result.finish_reason == "length"


def test_structured_output_cut_by_max_tokens_is_truncated_with_partial_text():
    with pytest.raises(OutputTruncated) as info:
        _result(_job(JsonSchemaSpec(schema=CHARACTER_SCHEMA)), _generation('{"name":"An', "length"))
    assert info.value.text == '{"name":"An'
    assert "max_tokens" in info.value.message


def test_cut_int_is_truncated_even_though_its_prefix_parses():
    with pytest.raises(OutputTruncated, match="had not reached the end"):
        _result(_job(IntSpec()), _generation("1962122200", "length"))


def test_nonconforming_output_that_stopped_is_invalid():
    with pytest.raises(OutputInvalid, match="does not fully match"):
        _result(_job(IntSpec()), _generation("12a", "stop"))
