"""The probes the deployment files use, against the live stack: the worker's and the webhook
worker's `check` command (exit 0/1) and the gateway's health endpoints."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

pytestmark = pytest.mark.e2e


def _check(stack, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "STRUCTQ_REDIS_URL": stack.redis_url, **env}
    for name in ("STRUCTQ_WORKER_ID", "STRUCTQ_WEBHOOK_WORKER_ID"):
        if name not in env:
            environ.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "worker", "check", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_worker_check_is_0_while_the_worker_is_up_and_1_otherwise(stack):
    up = _check(stack)
    assert up.returncode == 0, up.stderr
    assert "is up" in up.stdout
    assert _check(stack, "--webhooks").returncode == 0  # the stack's webhook worker
    assert _check(stack, STRUCTQ_WORKER_ID="no-such-worker").returncode == 1
    down = _check(stack, STRUCTQ_REDIS_URL="redis://127.0.0.1:1/0")
    assert down.returncode == 1 and "unreachable" in down.stderr


def test_gateway_health_endpoints(stack):
    assert httpx.get(f"{stack.api_url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{stack.api_url}/readyz").json() == {"status": "ready"}
