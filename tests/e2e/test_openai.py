"""The real ``openai`` SDK (sync and async, streaming and not) against the gateway, with the
jobs going through Redis, the Celery worker and vLLM like any other.

Every structured output is checked here on its own terms: JSON against the pydantic model,
regexes with ``re``, grammars with a fresh Lark parser.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import openai
import pytest
import redis
from lark import Lark
from pydantic import BaseModel

from scripts.seed_jobs import ARITHMETIC_GRAMMAR
from shared.keys import ALL_INDEX
from shared.output_types import INT_PATTERN
from shared.settings import DEFAULT_MODEL
from tests.e2e.conftest import NO_WORKERS, OPENAI_WAIT_S, wait_for

pytestmark = pytest.mark.e2e

MODEL = DEFAULT_MODEL


class Character(BaseModel):
    name: str
    age: int
    skills: list[str]


@pytest.fixture
def client(stack):
    with openai.OpenAI(base_url=f"{stack.api_url}/v1", api_key="unused") as c:
        yield c


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _job_count(stack) -> int:
    return redis.Redis.from_url(stack.redis_url).zcard(ALL_INDEX)


def test_models_lists_what_running_workers_announce(client):
    models = {m.id: m for m in client.models.list().data}
    assert MODEL in models
    assert NO_WORKERS not in models  # configured, but no worker serves it
    card = models[MODEL].model_dump()
    assert card["workers"] >= 1 and card["max_model_len"] == 2048
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(NO_WORKERS)


def test_chat_text(client):
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "What's the capital of Latvia?"}]}
        ],
        max_tokens=16,
        temperature=0,
    )
    choice = reply.choices[0]
    assert "Riga" in choice.message.content
    assert choice.finish_reason in ("stop", "length") and choice.message.role == "assistant"
    assert reply.usage.prompt_tokens > 0 and 0 < reply.usage.completion_tokens <= 16
    assert reply.id.startswith("chatcmpl-") and reply.model == MODEL
    with_system = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Say hello."},
        ],
        max_tokens=8,
    )
    assert with_system.choices[0].message.content


def test_completions_with_prompt_list_n_and_stop(client):
    reply = client.completions.create(
        model=MODEL,
        prompt=["San Francisco is a", "The capital of France is"],
        n=2,
        max_tokens=7,
        temperature=0.8,
        seed=3,
        stop=["\n\n"],
        extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1},
    )
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    assert all(c.text and c.finish_reason in ("stop", "length") for c in reply.choices)
    assert all("\n\n" not in c.text for c in reply.choices)
    # each prompt's tokens counted once, however many choices it has
    assert 0 < reply.usage.prompt_tokens < 20 and 4 <= reply.usage.completion_tokens <= 28
    assert reply.object == "text_completion"


def test_json_schema_from_pydantic_via_response_format(client):
    reply = client.chat.completions.create(
        model=MODEL,
        messages=_user("Create a character."),
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "Character", "schema": Character.model_json_schema()},
        },
        max_tokens=120,
        frequency_penalty=1.5,
        seed=7,
    )
    assert reply.choices[0].finish_reason == "stop"
    Character.model_validate_json(reply.choices[0].message.content)


def test_sdk_parse_helper_with_a_pydantic_model(client):
    reply = client.chat.completions.parse(
        model=MODEL,
        messages=_user("Create a character."),
        response_format=Character,
        max_tokens=120,
        frequency_penalty=1.5,
        seed=7,
    )
    assert isinstance(reply.choices[0].message.parsed, Character)


CITIES = ["Paris", "London", "Rome", "Berlin"]


@pytest.mark.parametrize(
    ("prompt", "extra", "check"),
    [
        (
            "Generate a fake social security number.",
            {"structured_outputs": {"regex": r"\d{3}-\d{2}-\d{4}"}},
            lambda text: re.fullmatch(r"\d{3}-\d{2}-\d{4}", text),
        ),
        ("Is Paris in France?", {"guided_regex": r"(yes|no)"}, lambda text: text in ("yes", "no")),
        (
            "What is the capital of France?",
            {"structured_outputs": {"choice": CITIES}},
            lambda text: text in CITIES,
        ),
        (
            "What is the capital of France?",
            {"guided_choice": CITIES[:2]},
            lambda text: text in CITIES[:2],
        ),
        (
            "Give Paris's name and country as a JSON object.",
            {"structured_outputs": {"json_object": True}},
            lambda text: isinstance(json.loads(text), dict),
        ),
    ],
)
def test_regex_and_choice_in_every_form(client, prompt, extra, check):
    reply = client.chat.completions.create(
        model=MODEL,
        messages=_user(prompt),
        max_tokens=100,
        temperature=0,
        extra_body=extra,
    )
    assert check(reply.choices[0].message.content), reply.choices[0]


def _until_one_completes(create, seeds=range(6)):
    """The 135M model often runs an int or a sum on to max_tokens: try a few seeds; every
    answer conforms as far as it goes, and at least one ends on its own."""
    replies = [create(seed) for seed in seeds]
    done = [r.choices[0] for r in replies if r.choices[0].finish_reason == "stop"]
    assert done, [r.choices[0] for r in replies]
    return [c.message.content for c in done]


def test_int_as_outlines_sends_it(client):
    for text in _until_one_completes(
        lambda seed: client.chat.completions.create(
            model=MODEL,
            messages=_user("How many countries are there in the world?"),
            max_tokens=12,
            seed=seed,
            extra_body={"structured_outputs": {"regex": INT_PATTERN}},
        )
    ):
        assert re.fullmatch(INT_PATTERN, text)


def test_lark_grammar_in_both_forms(client):
    parser = Lark(ARITHMETIC_GRAMMAR, start="start")
    for form in (
        {"guided_grammar": ARITHMETIC_GRAMMAR},
        {"structured_outputs": {"grammar": ARITHMETIC_GRAMMAR}},
    ):
        for text in _until_one_completes(
            lambda seed, form=form: client.chat.completions.create(
                model=MODEL,
                messages=_user("Write an addition."),
                max_tokens=24,
                seed=seed,
                extra_body=form,
            ),
            seeds=range(4),
        ):
            parser.parse(text)


def test_streaming_json_with_usage(client, stack):
    before = _job_count(stack)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=_user("Create a character."),
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "Character", "schema": Character.model_json_schema()},
        },
        max_tokens=120,
        frequency_penalty=1.5,
        seed=7,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    deltas = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(deltas) > 3  # token by token, not one lump at the end
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    Character.model_validate_json("".join(deltas))
    assert _job_count(stack) == before + 1


def test_streaming_completions_with_n(client):
    stream = client.completions.create(
        model=MODEL, prompt="Once upon a time", n=2, max_tokens=10, seed=1, stream=True
    )
    texts = {0: "", 1: ""}
    finish = {}
    for c in stream:
        for choice in c.choices:
            texts[choice.index] += choice.text
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
    assert all(texts.values()) and set(finish) == {0, 1}


def test_async_client_plain_streaming_and_gather(stack):
    async def main():
        async with openai.AsyncOpenAI(base_url=f"{stack.api_url}/v1", api_key="x") as c:
            replies = await asyncio.gather(
                *(
                    c.chat.completions.create(
                        model=MODEL, messages=_user(f"Write a tagline for a {shop}."), max_tokens=12
                    )
                    for shop in ("coffee shop", "bookstore", "gym")
                )
            )
            stream = await c.chat.completions.create(
                model=MODEL,
                messages=_user("Write an addition."),
                max_tokens=24,
                extra_body={"guided_regex": r"[0-9]{1,3} \+ [0-9]{1,3}"},
                stream=True,
            )
            text = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
            return replies, text

    replies, text = asyncio.run(main())
    assert all(r.choices[0].message.content for r in replies)
    assert re.fullmatch(r"[0-9]{1,3} \+ [0-9]{1,3}", text)


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        (
            {"extra_body": {"guided_regex": "(unclosed"}},
            openai.UnprocessableEntityError,
            "regular expression",
        ),
        (
            {"extra_body": {"structured_outputs": {"json": {"type": "object", "properties": 3}}}},
            openai.UnprocessableEntityError,
            "JSON Schema",
        ),
        (
            {"extra_body": {"guided_grammar": "start: ("}},
            openai.UnprocessableEntityError,
            "grammar",
        ),
        ({"model": "no-such-model"}, openai.NotFoundError, "does not exist"),
        ({"logprobs": True}, openai.UnprocessableEntityError, "logprobs"),
        ({"temperature": 5}, openai.UnprocessableEntityError, "temperature"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "Describe the image"},
                            {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                        ],
                    }
                ]
            },
            openai.UnprocessableEntityError,
            "image parts are not supported",
        ),
    ],
)
def test_bad_requests_get_an_openai_error_and_enqueue_nothing(client, stack, kwargs, error, words):
    before = _job_count(stack)
    args = {"model": MODEL, "messages": _user("hi"), "max_tokens": 5, **kwargs}
    with pytest.raises(error) as caught:
        client.chat.completions.create(**args)
    body = caught.value.body
    assert words in body["message"] and body["type"] == "invalid_request_error"
    assert _job_count(stack) == before


def test_a_request_whose_jobs_do_not_finish_in_time_times_out_and_they_end(stack):
    # No worker serves NO_WORKERS: the job waits in its queue until the request's wait ends.
    with openai.OpenAI(
        base_url=f"{stack.api_url}/v1", api_key="x", max_retries=0, timeout=120
    ) as c:
        started = time.monotonic()
        with pytest.raises(openai.InternalServerError) as caught:
            c.chat.completions.create(model=NO_WORKERS, messages=_user("hi"), max_tokens=5)
    assert (
        caught.value.status_code == 504 and "did not finish in time" in caught.value.body["message"]
    )
    assert OPENAI_WAIT_S <= time.monotonic() - started < OPENAI_WAIT_S + 15
    job_id = caught.value.response.headers["X-Structq-Job-Ids"]
    with httpx.Client(base_url=stack.api_url) as api:
        assert api.get(f"/v1/jobs/{job_id}").json()["status"] in ("expired", "cancelled")


def test_a_client_that_leaves_a_stream_cancels_its_job(stack):
    body = {
        "model": MODEL,
        "messages": _user("Tell me a long story."),
        "max_tokens": 400,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.Client(base_url=stack.api_url, timeout=60) as api:
        with api.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            job_id = response.headers["X-Structq-Job-Ids"]
            events = _first_events(response, 4)  # the role chunk, then three deltas
        # Leaving the block closes the connection in the middle of the stream.
        job = wait_for(api, [job_id])[job_id]
    assert all(json.loads(e.removeprefix("data: "))["choices"] for e in events)
    assert job["status"] == "cancelled" and job["error"]["text"]
    assert job["error"]["usage"]["completion_tokens"] < 400


def _first_events(response, count):
    events = []
    for line in response.iter_lines():
        if line.startswith("data:"):
            events.append(line)
            if len(events) >= count:
                break
    return events


def test_a_client_that_gives_up_waiting_cancels_its_job(stack):
    body = {
        "model": MODEL,
        "messages": _user("Tell me a long story."),
        "max_tokens": 400,
        "ignore_eos": True,
    }
    with httpx.Client(base_url=stack.api_url, timeout=30) as api:
        with pytest.raises(httpx.ReadTimeout):
            api.post("/v1/chat/completions", json=body, timeout=3)
        job_id = api.get("/v1/jobs", params={"limit": 1}).json()["data"][0]["id"]
        job = wait_for(api, [job_id])[job_id]
    assert job["status"] == "cancelled"
    assert job["error"]["usage"]["completion_tokens"] < 400
