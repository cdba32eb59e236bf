"""OpenAI request → jobs, jobs → answers: every structured-output form, sampling fields,
refusals, outcomes (unit)."""

from __future__ import annotations

import pytest

from api.errors import InvalidRequest
from api.openai.requests import ChatRequest, CompletionRequest, chat_jobs, completion_jobs
from api.openai.responses import Outcome, outcome, usage
from shared.jobs import JobError, JobPublic, JobResult, JobStatus, Usage
from shared.output_types import (
    ChoiceSpec,
    GrammarSpec,
    JsonSchemaSpec,
    RegexSpec,
    TextSpec,
)

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
GRAMMAR = '?start: NUMBER "+" NUMBER\n%import common.NUMBER\n'
MODEL = "m"


def chat(**fields):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **fields}
    return chat_jobs(ChatRequest.model_validate(body), default_max_tokens=100, wait_s=60)


def completion(**fields):
    body = {"model": MODEL, "prompt": "hi", **fields}
    return completion_jobs(CompletionRequest.model_validate(body), 100, 60)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, TextSpec()),
        ({"structured_outputs": {"json": SCHEMA}}, JsonSchemaSpec(json_schema=SCHEMA)),
        ({"structured_outputs": {"regex": r"\d+"}}, RegexSpec(pattern=r"\d+")),
        ({"structured_outputs": {"choice": ["a", "b"]}}, ChoiceSpec(choices=["a", "b"])),
        ({"structured_outputs": {"grammar": GRAMMAR}}, GrammarSpec(grammar=GRAMMAR)),
        (
            {"structured_outputs": {"json_object": True}},
            JsonSchemaSpec(json_schema={"type": "object"}),
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": SCHEMA},
                }
            },
            JsonSchemaSpec(json_schema=SCHEMA),
        ),
        (
            {"response_format": {"type": "json_object"}},
            JsonSchemaSpec(json_schema={"type": "object"}),
        ),
        ({"response_format": {"type": "text"}}, TextSpec()),
        ({"guided_json": SCHEMA}, JsonSchemaSpec(json_schema=SCHEMA)),
        ({"guided_json": '{"type": "integer"}'}, JsonSchemaSpec(json_schema={"type": "integer"})),
        ({"guided_regex": "[ab]+"}, RegexSpec(pattern="[ab]+")),
        ({"guided_choice": ["x", "y"]}, ChoiceSpec(choices=["x", "y"])),
        ({"guided_grammar": GRAMMAR}, GrammarSpec(grammar=GRAMMAR)),
        ({"guided_regex": "a", "guided_decoding_backend": "outlines"}, RegexSpec(pattern="a")),
    ],
)
def test_every_structured_output_form_maps_to_a_spec(fields, expected):
    for jobs in (chat(**fields), completion(**fields)):
        assert [job.output_type for job in jobs] == [expected]


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"structured_outputs": {"regex": "(unclosed"}}, "structured_outputs.regex", "regular"),
        ({"structured_outputs": {"json": {"type": "nope"}}}, "structured_outputs.json", "Schema"),
        ({"structured_outputs": {"grammar": "start: ("}}, "structured_outputs.grammar", "grammar"),
        ({"structured_outputs": {"choice": []}}, "structured_outputs.choice", "at least 1"),
        ({"structured_outputs": {}}, "structured_outputs", "exactly one"),
        ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs", "regex"),
        ({"guided_json": "{not json"}, "guided_json", "not valid JSON"),
        ({"guided_json": "[1]"}, "guided_json", "object"),
        ({"response_format": {"type": "json_schema"}}, "response_format", "schema"),
        ({"response_format": {"type": "xml"}}, "response_format.type", "xml"),
        ({"guided_regex": "a", "guided_choice": ["a"]}, None, "guided_regex, guided_choice"),
        ({"logprobs": True}, "logprobs", "not supported"),
        ({"tools": [{"type": "function"}]}, "tools", "not supported"),
        ({"guided_whitespace_pattern": " "}, "guided_whitespace_pattern", "not supported"),
        ({"structured_outputs": {"regex": "a", "whitespace_pattern": " "}}, None, "whitespace"),
        ({"temperature": 3}, None, "less than or equal"),
        ({"logprobs": 0}, "logprobs", "not supported"),
        ({"stop_token_ids": [2]}, "stop_token_ids", "not supported"),
        ({"min_tokens": 5}, "min_tokens", "not supported"),
        ({"chat_template_kwargs": {"enable_thinking": True}}, "chat_template_kwargs", "not"),
        ({"use_beam_search": True}, "use_beam_search", "not supported"),
        ({"echo": True}, "echo", "not supported"),
        (
            {"structured_outputs": {"json": SCHEMA, "disable_any_whitespace": False}},
            "structured_outputs.disable_any_whitespace",
            "not supported",
        ),
        ({"messages": [{"role": ["user"], "content": "x"}]}, "messages.0.role", "not supported"),
    ],
)
def test_bad_requests_are_refused_naming_the_field(fields, param, words):
    with pytest.raises(Exception) as caught:
        chat(**fields)
    exc = caught.value
    message = getattr(exc, "message", str(exc))
    assert words in message
    if param is not None:
        assert isinstance(exc, InvalidRequest) and exc.extra["param"] == param


def test_sampling_fields_map_and_n_fans_out_with_distinct_seeds():
    jobs = chat(
        n=3,
        seed=10,
        max_completion_tokens=7,
        max_tokens=99,
        temperature=0.5,
        top_p=0.9,
        top_k=5,
        min_p=0.1,
        repetition_penalty=1.2,
        frequency_penalty=0.5,
        presence_penalty=-0.5,
        stop="END",
        stream=True,
    )
    assert [job.sampling.seed for job in jobs] == [10, 11, 12]
    s = jobs[0].sampling
    assert (s.max_tokens, s.temperature, s.top_p, s.top_k, s.min_p) == (7, 0.5, 0.9, 5, 0.1)
    assert (s.repetition_penalty, s.frequency_penalty, s.presence_penalty) == (1.2, 0.5, -0.5)
    assert s.stop == ["END"] and jobs[0].stream and jobs[0].timeout_s == 60
    assert chat()[0].sampling.max_tokens == 100  # the deployment's default when not given
    assert completion(max_tokens=3, stop=["a", "b"])[0].sampling.stop == ["a", "b"]


def test_chat_content_parts_roles_and_images():
    jobs = chat(
        messages=[
            {"role": "developer", "content": "be brief"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
            {"role": "assistant", "content": "ok"},
        ]
    )
    assert [(m.role, m.content) for m in jobs[0].messages] == [
        ("system", "be brief"),
        ("user", "a\nb"),
        ("assistant", "ok"),
    ]
    image = {"type": "image_url", "image_url": {"url": "http://x/y.png"}}
    with pytest.raises(InvalidRequest, match="image parts are not supported"):
        chat(messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, image]}])
    with pytest.raises(InvalidRequest, match="'tool' is not supported"):
        chat(messages=[{"role": "tool", "content": "x"}])


def test_completion_prompts_fan_out_and_token_prompts_are_refused():
    jobs = completion(prompt=["a", "b"], n=2)
    assert [job.prompt for job in jobs] == ["a", "a", "b", "b"]
    with pytest.raises(InvalidRequest, match="list of strings"):
        completion(prompt=[1, 2, 3])
    with pytest.raises(InvalidRequest, match="echo"):
        completion(echo=True)
    with pytest.raises(InvalidRequest, match="choices"):
        completion(prompt=["a"] * 9, n=8)


def _job(status: JobStatus, **fields) -> JobPublic:
    return JobPublic(id="j", model=MODEL, prompt="p", status=status, **fields)


def test_outcomes_follow_vllm_for_truncation_and_fail_the_request_otherwise():
    ok = outcome(
        _job(
            JobStatus.SUCCEEDED,
            result=JobResult(
                text="hi",
                value="hi",
                finish_reason="stop",
                usage=Usage(prompt_tokens=3, completion_tokens=1),
            ),
        ),
        "j",
    )
    assert (ok.text, ok.finish_reason, ok.error) == ("hi", "stop", None)
    cut = outcome(
        _job(
            JobStatus.FAILED,
            error=JobError(
                code="output_truncated",
                message="m",
                text='{"a',
                usage=Usage(prompt_tokens=3, completion_tokens=2),
            ),
        ),
        "j",
    )
    assert (cut.text, cut.finish_reason, cut.completion_tokens) == ('{"a', "length", 2)
    refused = outcome(
        _job(JobStatus.FAILED, error=JobError(code="engine_rejected", message="too long")), "j"
    )
    assert refused.error is not None and refused.error.http_status == 400
    late = outcome(_job(JobStatus.RUNNING), "j")
    assert late.error is not None and late.error.http_status == 504
    expired = outcome(_job(JobStatus.EXPIRED, error=JobError(code="expired", message="x")), "j")
    assert expired.error is not None and expired.error.http_status == 504
    assert outcome(None, "j").error is not None


def test_usage_counts_each_prompt_once():
    outcomes = [Outcome(prompt_tokens=5, completion_tokens=2)] * 3 + [
        Outcome(prompt_tokens=7, completion_tokens=1)
    ] * 3
    assert usage(outcomes, n=3) == {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}


def test_defaults_sent_by_clients_are_accepted():
    jobs = chat(
        top_logprobs=0,
        logprobs=False,
        n=None,
        stream=None,
        ignore_eos=None,
        stop_token_ids=[],
        skip_special_tokens=True,
        add_generation_prompt=True,
        user="someone",
        store=False,
    )
    assert len(jobs) == 1 and not jobs[0].stream
    body = {"messages": [{"role": "user", "content": "hi"}]}
    assert chat_jobs(ChatRequest.model_validate(body), 100, 60)[0].model is None  # the default
