"""One whole stack (Redis, a worker with the real vLLM engine on the bundled model, the
gateway) shared by every end-to-end test of the session, and helpers to drive it over HTTP."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterable, Iterator
from typing import Any

import httpx
import pytest

from scripts.receiver import Receiver
from scripts.stack import Stack
from tests.e2e.models import SMALL_MODEL

TERMINAL = {"succeeded", "failed", "cancelled", "expired"}
NO_WORKERS = "no-workers-model"
# How long the OpenAI-compatible routes wait for their jobs in the e2e stack.
OPENAI_WAIT_S = 20
# The janitor's grace for workers whose heartbeat lapsed (a Redis outage) and lost messages,
# and how often it looks for lost messages, in the e2e stack (production: 10 s and 5 s).
ORPHAN_GRACE_S = 5
RECONCILE_INTERVAL_S = 1
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"structq-e2e-webhook-secret-01234").decode()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(
        tmp_path_factory.mktemp("stack"),
        webhooks=True,
        env={
            # Webhooks: a test secret, a short retry schedule, the local receiver allowed.
            "STRUCTQ_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "STRUCTQ_WEBHOOK_SCHEDULE_S": "[0, 2, 2, 2]",
            # A loaded CI machine's in-process receiver took over 1 s to answer.
            "STRUCTQ_WEBHOOK_TIMEOUT_S": "5",
            "STRUCTQ_WEBHOOK_ALLOWED_NETWORKS": '["127.0.0.0/8"]',
            # Small enough to keep the suite quick on 2 CPU cores.
            "STRUCTQ_MAX_MODEL_LEN": "2048",
            "STRUCTQ_MAX_TOKENS_LIMIT": "2000",
            # Crash recovery within seconds rather than the production defaults' minutes.
            "STRUCTQ_HEARTBEAT_TTL_S": "3",
            "STRUCTQ_JANITOR_INTERVAL_S": "0.5",
            "STRUCTQ_ORPHAN_GRACE_S": str(ORPHAN_GRACE_S),
            "STRUCTQ_RECONCILE_INTERVAL_S": str(RECONCILE_INTERVAL_S),
            "STRUCTQ_DRAIN_TIMEOUT_S": "5",
            "STRUCTQ_MAX_ATTEMPTS": "2",
            # Lets a test submit a job that kills its worker (off in any real deployment).
            "STRUCTQ_FAULT_INJECTION": "true",
            # A model no worker serves: its jobs stay queued for as long as a test needs; and
            # the second pool's model (tests/e2e/test_pools.py starts its workers).
            "STRUCTQ_EXTRA_MODELS": json.dumps([NO_WORKERS, SMALL_MODEL]),
            # A request of the OpenAI-compatible routes that outlives this times out (504).
            "STRUCTQ_OPENAI_WAIT_S": str(OPENAI_WAIT_S),
        },
    )
    stack.start()
    yield stack
    leftovers = stack.stop()
    assert not leftovers, f"processes left running after the stack stopped: {leftovers}"


@pytest.fixture
def api(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.api_url, timeout=30) as client:
        yield client


def submit(api: httpx.Client, body: dict[str, Any]) -> str:
    response = api.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def wait_for(
    api: httpx.Client, job_ids: Iterable[str], timeout_s: float = 180, statuses: set[str] = TERMINAL
) -> dict[str, dict[str, Any]]:
    """Wait until every job reaches one of ``statuses``; the jobs by id. Terminal states are
    awaited with the API's long-poll, others by polling."""
    pending = list(job_ids)
    done: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    wait = 10 if statuses <= TERMINAL else 0
    while pending:
        for job_id in list(pending):
            job = api.get(f"/v1/jobs/{job_id}", params={"wait": wait}).json()
            if job["status"] in statuses:
                done[job_id] = job
                pending.remove(job_id)
        if pending:
            assert time.monotonic() < deadline, f"jobs not {statuses} after {timeout_s}s: {pending}"
            if not wait:
                time.sleep(0.02)
    return done


def run(api: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    job_id = submit(api, body)
    return wait_for(api, [job_id])[job_id]


def restart_worker(stack: Stack, env: dict[str, str] | None = None) -> None:
    """Start a fresh worker (the previous one must have exited) and wait until it is ready."""
    assert stack.worker is None or not stack.worker.alive()
    stack.start_worker(env)


def completed_once(
    receiver: Receiver, path: str, ids: Iterable[str], timeout_s: float = 120
) -> dict[str, dict[str, Any]]:
    """Each job's `job.completed` event, once a request to ``path`` has brought every job's, after
    a wait for duplicates. Once means one webhook-id per job: a delivery whose attempt timed out
    comes again with its id and the same body; a second id for a job would be a second event."""
    from standardwebhooks import Webhook

    def event(request: Any) -> dict[str, Any]:
        return Webhook(WEBHOOK_SECRET).verify(request.body, request.headers)

    wanted = set(ids)
    receiver.wait_until(
        path, lambda got: {event(r)["data"]["id"] for r in got} >= wanted, timeout_s
    )
    time.sleep(2.0)  # a duplicate would come within the webhook worker's next rounds
    by_hook: dict[str, dict[str, Any]] = {}
    for request in receiver.to(path):
        hook_id = {k.lower(): v for k, v in request.headers.items()}["webhook-id"]
        assert by_hook.setdefault(hook_id, event(request)) == event(request), hook_id
    per_job: dict[str, dict[str, Any]] = {}
    for hook_id, body in by_hook.items():
        assert body["type"] == "job.completed", body
        assert body["data"]["id"] not in per_job, ("two events for one job", hook_id, body)
        per_job[body["data"]["id"]] = body
    assert set(per_job) == wanted, sorted(set(per_job) ^ wanted)
    return per_job
