"""Continuous batching across jobs, shown from the worker's own records of engine steps."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.e2e.conftest import submit, wait_for

pytestmark = pytest.mark.e2e


def test_32_jobs_at_once_share_engine_steps(api):
    body = {"prompt": "Count slowly:", "sampling": {"max_tokens": 16, "ignore_eos": True}}
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda _: submit(api, body), range(32)))
    jobs = list(wait_for(api, ids).values())
    assert all(job["status"] == "succeeded" for job in jobs)
    assert all(job["result"]["usage"]["completion_tokens"] == 16 for job in jobs)
    stats = [job["engine"] for job in jobs]
    assert len({s["worker"] for s in stats}) == 1
    # Most jobs advanced in steps that also advanced other jobs...
    assert sum(s["max_batch"] > 1 for s in stats) >= 24, stats
    # ...and the whole burst took far fewer steps than 32 jobs x 16 tokens run one by one.
    span = max(s["last_step"] for s in stats) - min(s["first_step"] for s in stats) + 1
    assert span < 32 * 16 / 4, span


def test_a_job_arriving_mid_generation_joins_the_running_batch(api):
    long_id = submit(
        api, {"prompt": "Tell me a long story.", "sampling": {"max_tokens": 96, "ignore_eos": True}}
    )
    wait_for(api, [long_id], statuses={"running", "succeeded", "failed"})
    short_id = submit(api, {"prompt": "Say hi.", "sampling": {"max_tokens": 8, "ignore_eos": True}})
    jobs = wait_for(api, [long_id, short_id])
    long_job, short_job = jobs[long_id], jobs[short_id]
    assert long_job["status"] == short_job["status"] == "succeeded"
    long_steps, short_steps = long_job["engine"], short_job["engine"]
    # The short job started after the long one and finished before it: it joined the batch.
    assert long_steps["first_step"] < short_steps["first_step"]
    assert short_steps["last_step"] < long_steps["last_step"]
    assert short_steps["max_batch"] >= 2
    assert short_job["finished_at"] < long_job["finished_at"]
