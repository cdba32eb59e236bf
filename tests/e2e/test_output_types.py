"""Every output type, end to end: HTTP → Redis → Celery → vLLM (CPU) → Redis → HTTP.

Each value is checked here, independently of the worker's own check: JSON against the schema
(and the pydantic model it came from), regexes with ``re``, grammars with a fresh Lark parser.
"""

from __future__ import annotations

import re

import jsonschema
import pytest
from lark import Lark
from pydantic import BaseModel

from scripts.seed_jobs import ARITHMETIC_GRAMMAR, CHARACTER_SCHEMA
from shared.output_types import FLOAT_PATTERN, INT_PATTERN
from tests.e2e.conftest import run, submit, wait_for

pytestmark = pytest.mark.e2e


class Character(BaseModel):
    name: str
    age: int
    skills: list[str]


def _chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _succeeded(job):
    assert job["status"] == "succeeded", job.get("error")
    result = job["result"]
    assert result["usage"]["completion_tokens"] > 0 and result["usage"]["prompt_tokens"] > 0
    assert job["started_at"] and job["finished_at"] and job["attempts"] == 1
    return result


def test_text_with_the_chat_template(api):
    job = run(
        api,
        {
            "messages": _chat("What's the capital of Latvia?"),
            "sampling": {"max_tokens": 20, "temperature": 0},
        },
    )
    result = _succeeded(job)
    assert result["value"] == result["text"]
    assert "Riga" in result["text"]


def test_json_schema_from_a_pydantic_model(api):
    assert Character.model_json_schema() == CHARACTER_SCHEMA
    job = run(
        api,
        {
            "messages": _chat("Create a character."),
            "output_type": {"type": "json_schema", "schema": Character.model_json_schema()},
            "sampling": {"max_tokens": 120, "frequency_penalty": 1.5, "seed": 7},
        },
    )
    result = _succeeded(job)
    jsonschema.validate(result["value"], CHARACTER_SCHEMA)
    assert Character.model_validate_json(result["text"]) == Character.model_validate(
        result["value"]
    )


def test_choice(api):
    choices = ["Paris", "London", "Rome", "Berlin"]
    job = run(
        api,
        {
            "prompt": "What is the capital of France?",
            "output_type": {"type": "choice", "choices": choices},
            "sampling": {"temperature": 0},
        },
    )
    result = _succeeded(job)
    assert result["value"] in choices and result["value"] == result["text"]


def test_regex(api):
    job = run(
        api,
        {
            "messages": _chat("Generate a fake social security number."),
            "output_type": {"type": "regex", "pattern": r"\d{3}-\d{2}-\d{4}"},
            "sampling": {"top_p": 0.1, "max_tokens": 20},
        },
    )
    result = _succeeded(job)
    assert re.fullmatch(r"\d{3}-\d{2}-\d{4}", result["value"])


def test_bool(api):
    job = run(
        api,
        {
            "messages": _chat("Is Paris the capital of France? Answer True or False."),
            "output_type": {"type": "bool"},
            "sampling": {"max_tokens": 5},
        },
    )
    result = _succeeded(job)
    assert result["value"] is (result["text"] == "True")
    assert result["text"] in ("True", "False")


def _variants(api, body, seeds=range(6)):
    """The 135M model often runs an int, a number or a sum on to max_tokens; submit a few seeds,
    and require that at least one completes and every other one ends `output_truncated`."""
    ids = [submit(api, {**body, "sampling": {**body["sampling"], "seed": s}}) for s in seeds]
    jobs = list(wait_for(api, ids).values())
    for job in jobs:
        if job["status"] == "failed":
            assert job["error"]["code"] == "output_truncated", job["error"]
            assert job["error"]["text"]
    done = [_succeeded(job) for job in jobs if job["status"] == "succeeded"]
    assert done, [job["error"] for job in jobs]
    return done


def test_int(api):
    for result in _variants(
        api,
        {
            "messages": _chat("How many countries are there in the world?"),
            "output_type": {"type": "int"},
            "sampling": {"max_tokens": 12},
        },
    ):
        assert re.fullmatch(INT_PATTERN, result["text"])
        assert result["value"] == int(result["text"]) and isinstance(result["value"], int)


def test_float(api):
    for result in _variants(
        api,
        {
            "messages": _chat("What is the value of pi?"),
            "output_type": {"type": "float"},
            "sampling": {"max_tokens": 12},
        },
    ):
        assert re.fullmatch(FLOAT_PATTERN, result["text"])
        assert result["value"] == float(result["text"])


def test_grammar(api):
    parser = Lark(ARITHMETIC_GRAMMAR, start="start")
    for result in _variants(
        api,
        {
            "messages": _chat("Write an addition."),
            "output_type": {"type": "grammar", "grammar": ARITHMETIC_GRAMMAR},
            "sampling": {"max_tokens": 24},
        },
    ):
        parser.parse(result["value"])  # raises if the output is not in the language
