"""The Python client (``structq``) against the whole stack: every output type comes back as a
typed value, ``map`` resumes an interrupted run without a duplicate job, errors are exceptions
with their codes. Values are checked here independently of the client's own conversion."""

from __future__ import annotations

import asyncio
import enum
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import pytest
from lark import Lark
from pydantic import BaseModel

import structq
from scripts.seed_jobs import ARITHMETIC_GRAMMAR, CHARACTER_SCHEMA
from shared.output_types import FLOAT_PATTERN, INT_PATTERN
from tests.e2e.conftest import NO_WORKERS

pytestmark = pytest.mark.e2e

WAIT_S = 300  # most seconds any one call waits for its jobs


class Character(BaseModel):
    name: str
    age: int
    skills: list[str]


@dataclass
class CharacterRecord:  # the same JSON Schema but the title, as a dataclass
    name: str
    age: int
    skills: list[str]


class Capital(enum.Enum):
    PARIS = "Paris"
    LONDON = "London"
    ROME = "Rome"
    BERLIN = "Berlin"


CAPITALS = Literal["Paris", "London", "Rome", "Berlin"]


@pytest.fixture
def client(stack) -> Iterator[structq.Client]:
    with structq.Client(stack.api_url, timeout=60) as client:
        yield client


def _chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _some_succeed(client: structq.Client, prompt: Any, output_type: Any, **sampling: Any) -> list:
    """The 135M model often runs an int, a number or a sum on to max_tokens: a few seeds; each
    either succeeds or ends `output_truncated`, and at least one succeeds."""
    jobs = [client.submit(prompt, output_type, seed=seed, **sampling) for seed in range(6)]
    values = []
    for job in jobs:
        try:
            values.append(job.result(timeout=WAIT_S))
        except structq.JobFailed as exc:
            assert exc.code == "output_truncated", exc
            assert exc.text
    assert values
    return values


def test_text(client):
    answer = client.generate(
        _chat("What's the capital of Latvia?"), max_tokens=20, temperature=0, timeout=WAIT_S
    )
    assert isinstance(answer, str) and "Riga" in answer


def test_pydantic_model_and_dataclass(client):
    assert Character.model_json_schema() == CHARACTER_SCHEMA
    sampling: dict[str, Any] = {"max_tokens": 120, "frequency_penalty": 1.5, "seed": 7}
    character = client.generate(_chat("Create a character."), Character, timeout=WAIT_S, **sampling)
    assert isinstance(character, Character)
    assert isinstance(character.age, int) and all(isinstance(s, str) for s in character.skills)
    record = client.generate(
        _chat("Create a character."), CharacterRecord, timeout=WAIT_S, **sampling
    )
    assert isinstance(record, CharacterRecord) and isinstance(record.age, int)


def test_literal_and_enum(client):
    city = client.generate(
        "What is the capital of France?", CAPITALS, temperature=0, timeout=WAIT_S
    )
    assert city in ("Paris", "London", "Rome", "Berlin")
    member = client.generate(
        "What is the capital of France?", Capital, temperature=0, timeout=WAIT_S
    )
    assert isinstance(member, Capital)


def test_bool(client):
    answer = client.generate(
        _chat("Is Paris the capital of France? Answer True or False."),
        bool,
        max_tokens=5,
        timeout=WAIT_S,
    )
    assert answer is True or answer is False


def test_int_and_float(client):
    for value in _some_succeed(
        client, _chat("How many countries are there in the world?"), int, max_tokens=12
    ):
        assert type(value) is int and re.fullmatch(INT_PATTERN, str(value))
    for value in _some_succeed(client, _chat("What is the value of pi?"), float, max_tokens=12):
        assert type(value) is float
        assert re.fullmatch(FLOAT_PATTERN, repr(value)) or re.fullmatch(INT_PATTERN, f"{value:.0f}")


def test_outlines_regex_and_cfg(client):
    outlines_types = pytest.importorskip("outlines.types")
    ssn = client.generate(
        _chat("Generate a fake social security number."),
        outlines_types.Regex(r"\d{3}-\d{2}-\d{4}"),
        top_p=0.1,
        max_tokens=20,
        timeout=WAIT_S,
    )
    assert isinstance(ssn, str) and re.fullmatch(r"\d{3}-\d{2}-\d{4}", ssn)
    parser = Lark(ARITHMETIC_GRAMMAR, start="start")
    for text in _some_succeed(
        client, _chat("Write an addition."), outlines_types.CFG(ARITHMETIC_GRAMMAR), max_tokens=24
    ):
        parser.parse(text)  # raises if the output is not in the language


def test_map_resumes_an_interrupted_run_without_duplicates(client):
    run = uuid.uuid4().hex
    prompts = [f"Say the number {i}." for i in range(200)]
    options: dict[str, Any] = {
        "max_tokens": 4,
        "metadata": {"run": run},
        "concurrency": 64,
        "batch_size": 50,
        "progress": False,
    }

    class Interrupted(Exception):
        pass

    seen = 0

    def crash_after_50(item: structq.MapItem) -> None:
        nonlocal seen
        seen += 1
        if seen == 50:
            raise Interrupted

    with pytest.raises(Interrupted):
        client.map(prompts, on_result=crash_after_50, **options)
    first = jobs_of_run(client, run)
    assert 50 <= len(first) < 200, len(first)  # interrupted midway: not everything submitted

    items = client.map(prompts, return_items=True, **options)
    assert len(items) == 200
    assert [item.input for item in items] == prompts
    for item in items:
        assert item.ok, item.error
        assert isinstance(item.value, str) and item.job is not None
        assert item.job.prompt == item.input and item.value == item.job.result.text
        if item.input in first:  # submitted by the first run: the same job
            assert item.job_id == first[item.input] and item.resumed
    jobs = jobs_of_run(client, run)
    assert len(jobs) == 200  # exactly one job per input
    assert {item.job_id for item in items} == set(jobs.values())


def jobs_of_run(client: structq.Client, run: str) -> dict[str, str]:
    """Job ids by prompt, of every job tagged with ``run`` (every page of ``GET /v1/jobs``)."""
    found: dict[str, str] = {}
    cursor = None
    while True:
        page = client.list_jobs(limit=200, cursor=cursor)
        for job in page.jobs:
            if job.metadata.get("run") == run:
                assert job.prompt is not None and job.prompt not in found, "a duplicate job"
                found[job.prompt] = job.id
        if page.next_cursor is None:
            return found
        cursor = page.next_cursor


def test_errors_are_exceptions_with_codes(client):
    with pytest.raises(structq.InvalidRequest) as refused:
        client.generate("Hi", max_tokens=100_000)
    assert refused.value.code == "invalid_request" and refused.value.status == 422
    assert not refused.value.retryable and refused.value.detail
    with pytest.raises(structq.JobFailed) as failed:
        client.generate(_chat("Create a character."), Character, max_tokens=3, timeout=WAIT_S)
    assert failed.value.code == "output_truncated" and failed.value.job.status == "failed"
    with pytest.raises(structq.NotFound) as missing:
        client.job("no-such-job")
    assert missing.value.code == "job_not_found"


def test_job_handle_cancel_and_stream(client):
    queued = client.submit("Never runs.", model=NO_WORKERS, max_tokens=4)
    assert queued.status == "queued"
    with pytest.raises(structq.JobTimeout):
        queued.wait(timeout=1)
    assert queued.cancel().status == "cancelled"
    with pytest.raises(structq.JobFailed) as cancelled:
        queued.result()
    assert cancelled.value.code == "cancelled"

    job = client.submit(_chat("Tell me a short story about a cat."), stream=True, max_tokens=12)
    text = "".join(job.stream())
    assert job.status == "succeeded" and text == job.record.result.text
    assert job.refresh().result() == text


def test_async_client(stack):
    async def main() -> tuple[Any, list[Any]]:
        async with structq.AsyncClient(stack.api_url, timeout=60) as client:
            city = await client.generate(
                "What is the capital of France?", CAPITALS, temperature=0, timeout=WAIT_S
            )
            values = await client.map(
                [f"Count to {i}." for i in range(5)], max_tokens=4, progress=False
            )
            return city, values

    city, values = asyncio.run(main())
    assert city in ("Paris", "London", "Rome", "Berlin")
    assert len(values) == 5 and all(isinstance(v, str) for v in values)
