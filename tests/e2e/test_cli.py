"""The ``structq`` command line against the whole stack, as a real subprocess: a choice comes
back as a member, ``run`` interrupted by SIGINT exits 130 and a rerun completes without a
duplicate job, a missing job exits 4, a batch goes through create, status and download."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import structq
from tests.e2e.test_client import jobs_of_run

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 300


def _env(stack: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "STRUCTQ_API_KEY"}
    env["STRUCTQ_URL"] = stack.api_url
    return env


def _structq(stack: Any, *args: str, timeout: float = WAIT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "structq", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=_env(stack),
    )


def test_submit_choice_wait_returns_a_member(stack):
    result = _structq(
        stack, "submit", "What is the capital of France?", "--choice", "Paris,Rome,Berlin",
        "--temperature", "0", "--wait", "--timeout", str(WAIT_S),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in ("Paris", "Rome", "Berlin")

    as_json = _structq(stack, "--json", "submit", "Is water wet?", "--choice", "yes,no", "--wait")
    assert as_json.returncode == 0, as_json.stderr
    record = json.loads(as_json.stdout)
    assert record["status"] == "succeeded" and record["result"]["value"] in ("yes", "no")
    assert record["output_type"] == {"type": "choice", "choices": ["yes", "no"]}


def test_get_a_missing_job_exits_4(stack):
    result = _structq(stack, "get", "no-such-job")
    assert result.returncode == 4, result.stderr
    assert "job_not_found" in result.stderr


def _jobs_of_run(stack: Any, run: str) -> dict[str, str]:
    """Job ids by prompt of every job tagged ``run``."""
    with structq.Client(stack.api_url, timeout=60) as client:
        return jobs_of_run(client, run)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_run_interrupted_then_resumed_makes_each_job_once(stack, tmp_path):
    run = uuid.uuid4().hex
    prompts = [f"Say the number {i}." for i in range(40)]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    out = tmp_path / "out.jsonl"
    args = [sys.executable, "-m", "structq", "run", str(source), "-o", str(out)]
    args += ["--max-tokens", "4", "--metadata", f"run={run}", "--concurrency", "8"]
    args += ["--batch-size", "4", "--no-progress"]

    first = subprocess.Popen(
        args,
        cwd=ROOT,
        env=_env(stack),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # SIGINT as at a terminal, even if this process was started with it ignored (a
        # background job): Python then turns it into KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + WAIT_S
        while len(_lines(out)) < 3:
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "no results written"
            time.sleep(0.05)
        first.send_signal(signal.SIGINT)
        _, stderr = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 130, stderr
    assert "interrupted" in stderr
    submitted = _jobs_of_run(stack, run)
    assert 3 <= len(submitted) < 40, len(submitted)  # interrupted midway

    second = subprocess.run(args, cwd=ROOT, env=_env(stack), capture_output=True, text=True,
                            timeout=WAIT_S * 2)  # fmt: skip
    assert second.returncode in (0, 1), second.stderr  # 1: a line cut at max_tokens is possible
    rows = [json.loads(line) for line in _lines(out)]
    assert [row["index"] for row in rows] == list(range(40))
    jobs = _jobs_of_run(stack, run)
    assert len(jobs) == 40  # exactly one job per input
    for prompt, row in zip(prompts, rows, strict=True):
        assert row["job_id"] == jobs[prompt]
        assert "value" in row or row["error"]["code"] == "output_truncated", row
    for prompt, job_id in submitted.items():  # the first run's jobs, found again
        assert jobs[prompt] == job_id


def test_batch_create_status_download(stack, tmp_path):
    lines = [
        {"custom_id": f"c{i}", "prompt": f"Is {i} even?", "output_type": {"type": "bool"},
         "sampling": {"max_tokens": 4}}
        for i in range(5)
    ]  # fmt: skip
    source = tmp_path / "batch.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    created = _structq(stack, "batch", "create", str(source), "--endpoint", "/v1/jobs",
                       "--window", "1h")  # fmt: skip
    assert created.returncode == 0, created.stderr
    batch_id = created.stdout.strip()

    deadline = time.monotonic() + WAIT_S
    while True:
        status = _structq(stack, "--json", "batch", "status", batch_id)
        assert status.returncode == 0, status.stderr
        batch = json.loads(status.stdout)
        if batch["status"] in ("completed", "failed", "expired", "cancelled"):
            break
        assert time.monotonic() < deadline, batch
        time.sleep(1)
    assert batch["status"] == "completed", batch

    out, errs = tmp_path / "out.jsonl", tmp_path / "errs.jsonl"
    downloaded = _structq(stack, "batch", "download", batch_id, "-o", str(out), "--errors",
                          str(errs))  # fmt: skip
    assert downloaded.returncode == 0, downloaded.stderr
    answered = [json.loads(line) for line in _lines(out) + _lines(errs)]
    assert sorted(row["custom_id"] for row in answered) == [f"c{i}" for i in range(5)]
    for row in map(json.loads, _lines(out)):
        assert row["response"]["body"]["result"]["value"] in (True, False)
