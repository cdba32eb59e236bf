"""Metrics end to end: Debian's real Prometheus server scrapes the stack's gateway, worker and
webhook worker; jobs run through the real stack; the counters, read back through Prometheus'
query API, moved by exactly what was run.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from scripts.receiver import Receiver
from scripts.stack import Stack, start_prometheus
from shared.settings import DEFAULT_MODEL
from tests.e2e.conftest import NO_WORKERS, wait_for

pytestmark = pytest.mark.e2e

# Scraped: the gateway, the worker, the webhook worker.
_TARGETS = 3


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, promql: str) -> list[dict[str, Any]]:
        reply = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        assert reply.status_code == 200, reply.text
        return reply.json()["data"]["result"]

    def value(self, promql: str) -> float:
        """The query's one value (0 when it has none: a counter not yet moved)."""
        result = self.query(promql)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else 0.0

    def scraped_after(self, moment: float, timeout_s: float = 30) -> None:
        """Until every target has been scraped (and was up) after ``moment`` (epoch s)."""
        deadline = time.monotonic() + timeout_s
        while True:
            stamps = {
                r["metric"]["job"]: float(r["value"][1]) for r in self.query("timestamp(up == 1)")
            }
            if len(stamps) == _TARGETS and min(stamps.values()) > moment:
                return
            assert time.monotonic() < deadline, f"targets not scraped since {moment}: {stamps}"
            time.sleep(0.25)


@pytest.fixture
def prometheus(stack: Stack, tmp_path: Path) -> Iterator[Prometheus]:
    server, url = start_prometheus(tmp_path, stack.metrics_urls())
    try:
        prom = Prometheus(url)
        prom.scraped_after(time.time())
        yield prom
    finally:
        server.stop(30)


# What each query counts; read before and after the jobs run.
_COUNTERS = {
    "submitted": f'sum(structq_jobs_submitted_total{{model="{DEFAULT_MODEL}"}})',
    "succeeded": 'sum(structq_worker_jobs_finished_total{status="succeeded"})',
    "truncated": 'sum(structq_worker_jobs_finished_total{code="output_truncated"})',
    "durations": "sum(structq_job_duration_seconds_count)",
    "tokens": "sum(structq_generation_tokens_total)",
    "cancels": 'sum(structq_http_requests_total{route="/v1/jobs/{job_id}/cancel",status="200"})',
    "invalid": 'sum(structq_refusals_total{code="invalid_request"})',
    "delivered": 'sum(structq_webhook_attempts_total{event="job.completed",outcome="delivered"})',
}


def _read(prom: Prometheus) -> dict[str, float]:
    return {name: prom.value(query) for name, query in _COUNTERS.items()}


def test_prometheus_sees_exactly_the_jobs_that_ran(stack, api, prometheus):
    before = _read(prometheus)
    text = {"prompt": "Say hi.", "sampling": {"max_tokens": 6, "ignore_eos": True}}
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    bodies = [
        text,
        text,
        {"prompt": "Pick one.", "output_type": {"type": "choice", "choices": ["x", "y"]}},
        # Fails at run time: 2 tokens cannot hold the object.
        {"prompt": "JSON:", "output_type": {"type": "json_schema", "schema": schema},
         "sampling": {"max_tokens": 2}},
    ]  # fmt: skip
    with Receiver() as receiver:
        bodies.append({**text, "webhook": {"url": receiver.url("/m")}})
        started = time.time()
        # The worker paused: the jobs wait in the queue long enough to be scraped there.
        os.kill(stack.worker.proc.pid, signal.SIGSTOP)
        try:
            ids = [api.post("/v1/jobs", json=b).json()["id"] for b in bodies]
            assert api.post("/v1/jobs", json={"prompt": 1}).status_code == 422
            cancelled = api.post("/v1/jobs", json={"prompt": "x", "model": NO_WORKERS}).json()
            assert api.post(f"/v1/jobs/{cancelled['id']}/cancel").status_code == 200
            time.sleep(2.5)  # the gateway is scraped every second (the worker cannot be now)
        finally:
            os.kill(stack.worker.proc.pid, signal.SIGCONT)
        jobs = wait_for(api, ids, timeout_s=120)
        receiver.wait("/m", 1, timeout_s=30)
        finished = time.time()
        prometheus.scraped_after(finished + 0.5)
    after = _read(prometheus)
    moved = {name: after[name] - before[name] for name in _COUNTERS}
    statuses = [jobs[i]["status"] for i in ids]
    assert statuses == ["succeeded"] * 3 + ["failed", "succeeded"], [jobs[i] for i in ids]
    assert jobs[ids[3]]["error"]["code"] == "output_truncated"
    usages = [(jobs[i]["result"] or jobs[i]["error"])["usage"] for i in ids]
    assert all(usages), usages
    tokens = sum(usage["completion_tokens"] for usage in usages)
    assert moved == {
        "submitted": 5,  # the cancelled job was for another model
        "succeeded": 4,
        "truncated": 1,
        "durations": 5,
        "tokens": tokens,
        "cancels": 1,
        "invalid": 1,
        "delivered": 1,
    }
    # The queue went up while the worker was paused, and back to 0.
    window = f"{int(finished - started) + 5}s"
    depth = f'structq_queue_jobs{{model="{DEFAULT_MODEL}"}}'
    assert prometheus.value(f"max_over_time({depth}[{window}])") >= len(bodies)
    assert prometheus.value(depth) == 0
    assert prometheus.value(f'structq_workers_live{{model="{DEFAULT_MODEL}"}}') == 1
    # The worker's histograms and vLLM's own engine figures are there too.
    assert prometheus.value("sum(structq_job_time_to_first_token_seconds_count)") > 0
    # (prometheus-client's OpenMetrics output, which Prometheus 2.x asks for, spells the
    # colon of vLLM's names as an underscore; Prometheus 3 keeps it.)
    assert prometheus.query('{__name__=~"vllm[:_]kv_cache_usage_perc"}'), "no vLLM metrics"


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    reply = httpx.get(f"{url}/metrics", timeout=10)
    assert reply.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(reply.text)
        for s in family.samples
    }


def test_two_gateway_processes_add_up(stack):
    _, url = stack.start_extra_gateway({"STRUCTQ_WORKERS": "2"}, name="gateway-two")
    key = (
        "structq_http_requests_total",
        (("method", "GET"), ("route", "/healthz"), ("status", "200")),
    )
    count = 60
    for _ in range(count):  # a new connection each: the two processes take them in turn
        assert httpx.get(f"{url}/healthz", headers={"connection": "close"}).status_code == 200
    # Whichever process answers a scrape, it counts both processes' requests.
    seen = {_scrape(url).get(key) for _ in range(10)}
    assert seen == {float(count)}, seen
