"""The queue's own ceiling: structq against raw vLLM on a near-free engine.

On a CPU the engine is so slow that any queue in front of it looks free. Here the engine is
made nearly free instead: a random 1-layer, 64-wide Llama built from the bundled model's config
and tokenizer (``worker.model.derive_model``, into the cache, no download), which runs hundreds
of short jobs a second. What is left is structq's own cost per job. Three workloads of 2,000
jobs, each on both sides, side by side in time (``bench.pairing``): (a) 8-token text, (b) a
three-way choice, (c) a small JSON Schema; and (a) once more through the one-job-a-request path
(``POST /v1/jobs``, long-poll ``GET``). Reported: jobs/s on each side and their ratio, the
largest batch the worker's engine ran, and the CPU time per job of every process, read from
/proc: structq's gateway, worker, webhook worker and Redis, the load client, and the raw
side's frontend (the process calling ``LLM.generate``) and engine processes.
"""

from __future__ import annotations

import base64
import contextlib
import time
from pathlib import Path
from typing import Any

import psutil

from bench.baseline import RawEngine
from bench.load import run_load
from bench.pairing import paired
from bench.workloads import CEILING_WORKLOADS, short_text_jobs
from scripts.stack import Stack
from worker.model import derive_model
from worker.settings import WorkerSettings

__all__ = ["TINY_MODEL", "run_ceiling", "table"]

# The near-free engine: the bundled model's config, cut down (see the module's docstring).
TINY_MODEL = {
    "num_hidden_layers": 1,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
}
_PROCESSES = ("gateway", "worker", "webhooks", "redis")


def _cpu(pid: int, children: bool = False) -> float:
    """CPU seconds of a process (all its threads), and optionally of its descendants."""
    try:
        proc = psutil.Process(pid)
        times = proc.cpu_times()
        total = times.user + times.system
        if children:
            for child in proc.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    t = child.cpu_times()
                    total += t.user + t.system
        return total
    except psutil.Error:
        return 0.0


def _structq(stack: Stack, bodies: list[dict[str, Any]], mode: str) -> dict[str, Any]:
    pids = stack.pids()
    before = {name: _cpu(pid) for name, pid in pids.items()}
    engine_before = _cpu(pids["worker"], children=True) - before["worker"]
    wall, results, client_cpu = run_load(stack.api_url, bodies, mode)
    after = {name: _cpu(pid) for name, pid in pids.items()}
    engine = _cpu(pids["worker"], children=True) - after["worker"] - engine_before
    jobs = len(bodies)
    per_job = {name: (after[name] - before[name]) / jobs * 1000 for name in pids}
    return {
        "jobs": jobs,
        "mode": mode,
        "succeeded": sum(status == "succeeded" for status, _ in results),
        "wall_s": wall,
        "jobs_per_s": jobs / wall,
        "max_batch": max((batch for _, batch in results), default=0),
        "cpu_ms_per_job": {**per_job, "client": client_cpu / jobs * 1000},
        "engine_cpu_ms_per_job": engine / jobs * 1000,
    }


def _raw(raw: RawEngine, bodies: list[dict[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = dict(raw.burst(bodies))
    jobs = result["jobs"]
    result["cpu_ms_per_job"] = {"frontend": result["frontend_cpu_s"] / jobs * 1000}
    result["engine_cpu_ms_per_job"] = result["engine_cpu_s"] / jobs * 1000
    return result


def run_ceiling(workdir: Path, jobs: int) -> dict[str, Any]:
    """Both sides on the near-free engine; the figures of every workload."""
    settings = WorkerSettings.load()
    model = derive_model(settings.cache_dir, "structq-bench-tiny", **TINY_MODEL)
    secret = "whsec_" + base64.b64encode(b"structq-bench-webhook-secret-012").decode()
    out: dict[str, Any] = {"jobs": jobs, "model": TINY_MODEL}
    with RawEngine(workdir / "ceiling-raw.log", model_path=model) as raw:
        env = {
            "STRUCTQ_MODEL_PATH": str(model),
            "STRUCTQ_GPU_MEMORY_UTILIZATION": str(raw.gpu_memory_utilization),
            # A client with a dataset is not rate limited into the ground.
            "STRUCTQ_RATE_LIMIT_PER_S": "0",
            "STRUCTQ_MAX_QUEUED_PER_KEY": "0",
            "STRUCTQ_WEBHOOK_SECRET": secret,
        }
        with Stack(workdir / "ceiling", env=env, webhooks=True) as stack:
            warmup = short_text_jobs(64)
            raw.burst(warmup)
            run_load(stack.api_url, warmup)
            runs = [(name, make(jobs), "batch") for name, make in CEILING_WORKLOADS.items()]
            runs.append(("text_8_single", short_text_jobs(jobs), "single"))
            for i, (name, bodies, mode) in enumerate(runs):
                base, ours = paired(
                    i,
                    lambda b=bodies: _raw(raw, b),
                    lambda b=bodies, m=mode: _structq(stack, b, m),
                )
                frontend = base["cpu_ms_per_job"]["frontend"]
                out[name] = {
                    "baseline": base,
                    "structq": ours,
                    "throughput_ratio": ours["jobs_per_s"] / base["jobs_per_s"],
                    "worker_cpu_vs_raw_frontend_ratio": ours["cpu_ms_per_job"]["worker"] / frontend,
                }
                time.sleep(0.5)
    return out


def table(ceiling: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"Queue ceiling: near-free engine, {ceiling['jobs']} jobs a workload (jobs/s; CPU ms/job)",
        f"  {'workload':<15}{'raw':>6}{'structq':>9}{'ratio':>7}{'batch':>7}"
        f"{'gateway':>9}{'worker':>8}{'raw fe':>8}{'hooks':>7}{'redis':>7}{'client':>8}",
    ]
    for name, row in ceiling.items():
        if not isinstance(row, dict) or "structq" not in row:
            continue
        b, s = row["baseline"], row["structq"]
        cpu = s["cpu_ms_per_job"]
        lines.append(
            f"  {name:<15}{b['jobs_per_s']:>6.0f}{s['jobs_per_s']:>9.0f}"
            f"{row['throughput_ratio']:>7.2f}{s['max_batch']:>7}"
            f"{cpu.get('gateway', 0):>9.2f}{cpu.get('worker', 0):>8.2f}"
            f"{b['cpu_ms_per_job']['frontend']:>8.2f}{cpu.get('webhooks', 0):>7.2f}"
            f"{cpu.get('redis', 0):>7.2f}{cpu['client']:>8.2f}"
        )
    return lines
