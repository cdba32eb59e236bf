"""The seed document's Outlines examples (``outlines.from_vllm`` on an ``openai`` client, server
mode), pointed at structq's gateway instead of a vLLM server, unchanged otherwise."""

from __future__ import annotations

import asyncio
import re
from typing import Literal

import openai
import outlines
import pytest
from lark import Lark
from outlines.inputs import Chat
from outlines.types import CFG, Regex
from pydantic import BaseModel

from scripts.seed_jobs import ARITHMETIC_GRAMMAR
from shared.output_types import INT_PATTERN
from shared.settings import DEFAULT_MODEL

pytestmark = pytest.mark.e2e


class Character(BaseModel):
    name: str
    age: int
    skills: list[str]


@pytest.fixture
def model(stack):
    client = openai.OpenAI(base_url=f"{stack.api_url}/v1", api_key="unused")
    yield outlines.from_vllm(client, DEFAULT_MODEL)
    client.close()


def test_plain_call(model):
    answer = model("What's the capital of Latvia?", max_tokens=20, temperature=0)
    assert isinstance(answer, str) and "Riga" in answer


def test_chat_input(model):
    prompt = Chat(
        [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What's the capital of Latvia?"},
        ]
    )
    answer = model(prompt, max_tokens=20, temperature=0)
    assert isinstance(answer, str) and answer


def test_stream(model):
    chunks = list(model.stream("Tell me a short story about a cat.", max_tokens=20))
    assert len(chunks) > 3 and all(isinstance(c, str) for c in chunks) and "".join(chunks)


def test_int(model):
    # The 135M model may run a number on to max_tokens; what comes back is an int as far as it goes.
    result = model("How many countries are there in the world?", int, max_tokens=8, temperature=0)
    assert re.fullmatch(INT_PATTERN, result)
    int(result)


def test_pydantic_character(model):
    result = model(
        "Create a character.", output_type=Character, frequency_penalty=1.5, max_tokens=120, seed=7
    )
    assert isinstance(Character.model_validate_json(result), Character)


def test_literal(model):
    output_type = Literal["Paris", "London", "Rome", "Berlin"]
    result = model("What is the capital of France?", output_type, temperature=0)
    assert result in ("Paris", "London", "Rome", "Berlin")


def test_regex(model):
    output_type = Regex(r"\d{3}-\d{2}-\d{4}")
    result = model("Generate a fake social security number.", output_type, top_p=0.1)
    assert re.fullmatch(r"\d{3}-\d{2}-\d{4}", result)


def test_cfg(model):
    parser = Lark(ARITHMETIC_GRAMMAR, start="start")
    parsed = []
    # As in the seed, with its backend hint; a few seeds, as the small model may run a sum on
    # past max_tokens (then the text is cut, finish_reason "length", and does not parse).
    for seed in range(6):
        result = model(
            "Write an addition.",
            CFG(ARITHMETIC_GRAMMAR),
            extra_body={"guided_decoding_backend": "outlines"},
            max_tokens=24,
            seed=seed,
        )
        try:
            parsed.append(parser.parse(result))
        except Exception:
            assert re.fullmatch(r"[0-9eE+\-*/(). ]+", result), result  # cut, never off-grammar
    assert parsed


def test_async_concurrent_calls_and_structured_output(stack):
    async def main():
        client = openai.AsyncOpenAI(base_url=f"{stack.api_url}/v1", api_key="unused")
        async_model = outlines.from_vllm(client, DEFAULT_MODEL)
        prompts = [
            "Write a tagline for a coffee shop.",
            "Write a tagline for a bookstore.",
            "Write a tagline for a gym.",
        ]
        results = await asyncio.gather(*(async_model(p, max_tokens=30) for p in prompts))
        character = await async_model(
            "Create a character.", Character, frequency_penalty=1.5, max_tokens=120, seed=7
        )
        streamed = [
            c async for c in async_model.stream("Tell me a story about a robot.", max_tokens=20)
        ]
        await client.close()
        return results, character, streamed

    results, character, streamed = asyncio.run(main())
    assert len(results) == 3 and all(isinstance(r, str) and r for r in results)
    Character.model_validate_json(character)
    assert len(streamed) > 3
