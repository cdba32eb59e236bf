from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from shared.jobs import Job, JobCreate, JobStatus
from shared.output_types import RegexSpec, TextSpec


def test_prompt_or_messages_exactly_one():
    assert JobCreate(prompt="hi").output_type == TextSpec()
    assert JobCreate(messages=[{"role": "user", "content": "hi"}]).messages is not None
    with pytest.raises(ValidationError, match="exactly one of `prompt` and `messages`"):
        JobCreate()
    with pytest.raises(ValidationError, match="exactly one of `prompt` and `messages`"):
        JobCreate(prompt="hi", messages=[{"role": "user", "content": "hi"}])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"prompt": ""}, "at least 1 character"),
        ({"messages": []}, "at least 1 item"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "Input should be 'system'"),
        ({"prompt": "x", "sampling": {"max_tokens": 0}}, "greater than or equal to 1"),
        ({"prompt": "x", "sampling": {"temperature": -1}}, "greater than or equal to 0"),
        ({"prompt": "x", "sampling": {"top_p": 0}}, "greater than 0"),
        ({"prompt": "x", "sampling": {"bogus": 1}}, "Extra inputs are not permitted"),
        ({"prompt": "x", "metadata": {"k": "v" * 600}}, "at most 512 characters"),
    ],
)
def test_bad_job_bodies(body, message):
    with pytest.raises(ValidationError, match=message):
        JobCreate.model_validate(body)


def test_job_round_trips_through_json():
    job = Job(id="j1", model="m", prompt="x", output_type=RegexSpec(pattern="a+"))
    again = Job.model_validate_json(job.model_dump_json(by_alias=True))
    assert again == job
    assert again.status is JobStatus.QUEUED
    assert not JobStatus.RUNNING.terminal and JobStatus.FAILED.terminal


def test_only_a_job_with_an_adapter_names_one_in_its_record():
    """Readers older than the field refuse unknown fields: a job without an adapter stores
    none, so they still read it."""
    plain = Job(id="j", model="m", prompt="hi")
    assert "adapter" not in json.loads(plain.spec_json())
    adapted = Job(id="j", model="m", adapter="sql", prompt="hi")
    assert json.loads(adapted.spec_json())["adapter"] == "sql"
    back = Job.from_parts(adapted.spec_json(), adapted.state_json())
    assert (back.adapter, back.served_name) == ("sql", "sql")
    assert Job.from_parts(plain.spec_json(), plain.state_json()).served_name == "m"
