"""How a claimed job becomes an engine run, before any engine (no vLLM here)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from shared.errors import ErrorCode
from shared.jobs import Job, Message
from worker.claims import engine_request, run_limit
from worker.engine_types import Done


def test_a_run_ends_at_the_deadline_or_the_longest_run_whichever_is_first():
    soon = datetime.now(UTC) + timedelta(seconds=10)
    assert (
        abs(run_limit(Job(id="j", model="m", prompt="x", deadline=soon), 60) - (soon.timestamp()))
        < 1e-3
    )
    assert run_limit(Job(id="j", model="m", prompt="x"), 60) - time.time() > 59


def test_a_chat_the_template_refuses_fails_before_reaching_the_engine():
    def refuse(messages):
        raise RuntimeError("no system role here")

    job = Job(id="j", model="m", messages=[Message(role="user", content="hi")])
    done = engine_request(job, "j.1", refuse)
    assert isinstance(done, Done) and done.request_id == "j.1" and done.generation is None
    assert done.error is not None and done.error.code is ErrorCode.INTERNAL_ERROR
    assert "RuntimeError: no system role here" in done.error.message
