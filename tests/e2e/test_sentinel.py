"""High availability with Redis Sentinel: a primary, a replica and three Sentinels on local
ports; every part (gateway, worker, webhook worker) connects through the Sentinels
(``redis+sentinel://``). The primary is SIGKILLed during a burst; the Sentinels promote the
replica, every part follows it, and every job acknowledged before the failover that the
replica had received finishes, once.

A stack of its own (its worker beside the session's idle one, with half the engine memory).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from scripts.receiver import Receiver
from scripts.stack import Stack
from shared.keys import WEBHOOK_WORKER_PREFIX
from shared.redis_pools import sync_client
from shared.workers import live_workers_sync
from tests.e2e.conftest import ORPHAN_GRACE_S, RECONCILE_INTERVAL_S, WEBHOOK_SECRET
from tests.e2e.test_outages import _TOKENS, _burst, _finished, _running_soon

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(
        tmp_path_factory.mktemp("sentinel"),
        webhooks=True,
        sentinel=True,
        env={
            "STRUCTQ_GPU_MEMORY_UTILIZATION": "0.15",
            "STRUCTQ_HEARTBEAT_TTL_S": "3",
            "STRUCTQ_JANITOR_INTERVAL_S": "0.5",
            "STRUCTQ_ORPHAN_GRACE_S": str(ORPHAN_GRACE_S),
            "STRUCTQ_RECONCILE_INTERVAL_S": str(RECONCILE_INTERVAL_S),
            "STRUCTQ_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "STRUCTQ_WEBHOOK_SCHEDULE_S": "[0, 1, 1, 1, 1, 1]",
            "STRUCTQ_WEBHOOK_ALLOWED_NETWORKS": '["127.0.0.0/8"]',
        },
    )
    stack.start()
    yield stack
    leftovers = stack.stop()
    assert not leftovers, f"processes left running after the stack stopped: {leftovers}"


def test_a_primary_killed_mid_burst_fails_over_and_every_replicated_job_finishes_once(ha):
    client = sync_client(ha.redis_url)
    with httpx.Client(base_url=ha.api_url, timeout=30) as api, Receiver() as receiver:
        ids = _burst(api, 40)
        _running_soon(api, ids)
        old_primary = ha.redis_port
        new_primary = ha.kill_primary()
        assert new_primary == ha.replica_port != old_primary
        jobs = _finished(api, ids, timeout_s=300)
        # Replication is asynchronous: what the replica had not received when the primary
        # died is lost (docs/lifecycle.md). On one machine that is next to nothing; a lost
        # job is unknown, never half there.
        kept = {job_id: job for job_id, job in jobs.items() if job is not None}
        assert len(kept) >= len(ids) - 2, f"{len(ids) - len(kept)} jobs lost in the failover"
        for job in kept.values():
            assert job["status"] == "succeeded", job.get("error")
            assert job["result"]["usage"]["completion_tokens"] == _TOKENS
            assert job["attempts"] <= 2
        # Every part follows the new primary: the worker announces itself there, the webhook
        # worker delivers, the gateway takes new jobs.
        deadline = time.monotonic() + 30
        while not any(w.pid == ha.worker.proc.pid for w in live_workers_sync(client)):
            assert time.monotonic() < deadline, "the worker did not announce itself again"
            time.sleep(0.5)
        assert next(client.scan_iter(match=f"{WEBHOOK_WORKER_PREFIX}*"), None) is not None
        hooked = api.post(
            "/v1/jobs",
            json={
                "prompt": "Say hi.",
                "sampling": {"max_tokens": 4},
                "webhook": {"url": receiver.url("/after-failover")},
            },
        )
        assert hooked.status_code == 202, hooked.text
        job_id = hooked.json()["id"]
        assert _finished(api, [job_id])[job_id]["status"] == "succeeded"
        [delivery] = receiver.wait("/after-failover", 1, timeout_s=60)
        assert job_id.encode() in delivery.body
