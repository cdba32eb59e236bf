"""Several pools side by side: one gateway, two worker pools on two models at once.

One stack (Redis, one gateway) with two workers, each holding a resident vLLM engine on a model
of its own: the gateway accepts both names (``STRUCTQ_MODEL`` and ``STRUCTQ_EXTRA_MODELS``) and
routes each job to its model's queue. A mixed workload (fixed-length text, a three-way choice,
a small JSON Schema, in turn) is POSTed to both models at once, their jobs interleaved, and
every result read back by long-polling. Per model: jobs, jobs/s, tokens/s, submit -> result
p50/p95, which workers ran its jobs (every job record names its ``worker`` and ``model``), and
its queue depth during the run as the gateway's ``GET /metrics`` showed it
(``structq_queue_jobs{model=...}``, read 4 times a second).

Beside it, the baseline: raw vLLM (``LLM.generate`` of the same requests at once, same
sampling) on each model alone, before the stack starts: both raw engines resident, each burst
while the other is idle, both closed before the workers start (never more than two engines are
resident). Both engines of the pooled run share the machine's CPU, so on a
small CPU box a model's throughput in it is below its own alone; the section also gives the
pooled run's combined throughput against the two raw runs back to back (one machine doing one
model after the other) and against the sum of their rates (each model on a machine of its own).

Two pairs of models: ``bundled`` (the bundled SmolLM2-135M-Instruct and a 4-layer model of
its config with random weights, ``worker.model.derive_model``) and ``near-free`` (the ceiling
section's 1-layer, 64-wide model and a 2-layer one like it: seconds, for a smoke run).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import statistics
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from bench import workloads
from bench.baseline import RawEngine
from bench.ceiling import TINY_MODEL
from bench.pairing import _SETTLE_S
from scripts.stack import Stack
from shared.settings import DEFAULT_MODEL
from worker.model import derive_model, prepare_default_model
from worker.settings import WorkerSettings

__all__ = ["PAIRS", "POOL_JOBS", "pool_jobs", "run_pools", "table"]

Body = dict[str, Any]

PAIRS = ("bundled", "near-free")
# Jobs per model at --scale 1, and the tokens of a text job (choice and JSON jobs stop earlier).
POOL_JOBS = 300
_TEXT_TOKENS = 24
# Each engine's share of the engine's default memory (0.3 of RAM on CPU), two engines resident:
# 0.1 of RAM for the bundled pair (on CPU vLLM counts the weights and its profiling run in it:
# 0.05, 1.2 GiB here, left the 135M model no KV cache), 0.05 for the near-free one. A few
# hundred short jobs need far less KV cache than either.
_SHARE = {"bundled": 1 / 3, "near-free": 1 / 6}
_SAMPLE_S = 0.25  # the queue-depth sampler's GET /metrics
_DEPTH = re.compile(r'^structq_queue_jobs\{model="([^"]*)"\}\s+([0-9.eE+-]+)\s*$', re.M)


def _models(pair: str) -> list[tuple[str, Path, str]]:
    """The pair's two models: served name, folder, what it is."""
    cache = WorkerSettings.load().cache_dir
    if pair == "bundled":
        small = derive_model(cache, "structq-bench-4-layers", num_hidden_layers=4)
        return [
            (DEFAULT_MODEL, prepare_default_model(cache), "bundled, 30 layers"),
            ("SmolLM2-4-layers", small, "its config, 4 layers, random weights"),
        ]
    two = {**TINY_MODEL, "num_hidden_layers": 2}
    return [
        ("tiny-1-layer", derive_model(cache, "structq-bench-tiny", **TINY_MODEL), "near-free"),
        ("tiny-2-layers", derive_model(cache, "structq-bench-tiny-2", seed=1, **two), "near-free"),
    ]


def pool_jobs(n: int) -> list[Body]:
    """Text of exactly ``_TEXT_TOKENS`` tokens, a three-way choice and a small JSON Schema, in
    turn (the choice and schema jobs stop at their answer's end: at most 16 and 24 tokens)."""
    kinds = (
        workloads.text_jobs(n, _TEXT_TOKENS),
        workloads.choice_jobs(n),
        workloads.small_schema_jobs(n),
    )
    return [kinds[i % 3][i] for i in range(n)]


# -- raw vLLM, each model alone ------------------------------------------------------------


def _warmup(n: int) -> list[Body]:
    """Six jobs of each kind's shape with prompts the measured ``n`` do not have."""
    return pool_jobs(n + 6)[n:]


def _raw_alone(
    workdir: Path, models: list[tuple[str, Path, str]], n: int, share: float
) -> dict[str, Any]:
    """Both raw engines built at once (start-up is mostly one core's work), then each model's
    burst alone, the other engine idle (an idle vLLM engine takes no CPU)."""
    engines: list[RawEngine] = []
    try:
        with ThreadPoolExecutor(len(models)) as pool:
            starts = [
                pool.submit(RawEngine, workdir / f"pools-raw-{name}.log", share, path)
                for name, path, _ in models
            ]
            # Each engine that started is closed below, even when the other failed to start.
            engines = [start.result() for start in starts if start.exception() is None]
        for start in starts:
            start.result()  # the first failure, if any
        out: dict[str, Any] = {}
        for (name, _, _), raw in zip(models, engines, strict=True):
            raw.burst(_warmup(n))
            time.sleep(_SETTLE_S)
            out[name] = {
                **raw.burst(pool_jobs(n)),
                "cold_start_s": raw.cold_start_s,
                "gpu_memory_utilization": raw.gpu_memory_utilization,
            }
            time.sleep(_SETTLE_S)
        return out
    finally:
        for raw in engines:
            raw.close()


# -- structq, both pools at once -----------------------------------------------------------


def _tokens(job: dict[str, Any]) -> int:
    usage = (job.get("result") or job.get("error") or {}).get("usage") or {}
    return int(usage.get("completion_tokens", 0))


async def _submit(client: httpx.AsyncClient, body: Body) -> str:
    """POST a job; a 503 with Retry-After (compile checks or queue busy) is retried after it."""
    response = await client.post("/v1/jobs", json=body)
    for _ in range(20):
        if response.status_code != 503 or "retry-after" not in response.headers:
            break
        await asyncio.sleep(float(response.headers["retry-after"]))
        response = await client.post("/v1/jobs", json=body)
    response.raise_for_status()
    return str(response.json()["id"])


async def _result(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    while True:
        try:
            job: dict[str, Any] = (
                await client.get(f"/v1/jobs/{job_id}", params={"wait": 60})
            ).json()
        except (httpx.RemoteProtocolError, httpx.ReadError):
            continue  # a kept-alive connection the server closed as it was reused
        if job["status"] in ("succeeded", "failed"):
            return job


async def _sample_depth(
    client: httpx.AsyncClient, started: float, samples: list[tuple[float, dict[str, float]]]
) -> None:
    """The gateway's ``structq_queue_jobs`` gauge per model, every ``_SAMPLE_S``."""
    while True:
        with contextlib.suppress(httpx.HTTPError):
            text = (await client.get("/metrics")).text
            depth = {model: float(value) for model, value in _DEPTH.findall(text)}
            samples.append((time.perf_counter() - started, depth))
        await asyncio.sleep(_SAMPLE_S)


async def _pooled(api_url: str, jobs: dict[str, list[Body]]) -> dict[str, Any]:
    """Every model's jobs POSTed at once (interleaved), every result read back."""
    total = sum(len(bodies) for bodies in jobs.values())
    limits = httpx.Limits(max_connections=total + 8, max_keepalive_connections=total + 8)
    order = [
        (model, {**bodies[i], "model": model})
        for i in range(max(len(b) for b in jobs.values()))
        for model, bodies in jobs.items()
        if i < len(bodies)
    ]
    samples: list[tuple[float, dict[str, float]]] = []
    async with (
        httpx.AsyncClient(base_url=api_url, limits=limits, timeout=300) as client,
        httpx.AsyncClient(base_url=api_url, timeout=10) as metrics,
    ):
        with tqdm(total=total, desc="structq pools", leave=False, file=sys.stderr) as bar:
            started = time.perf_counter()
            sampler = asyncio.create_task(_sample_depth(metrics, started, samples))

            async def one(model: str, body: Body) -> tuple[str, dict[str, Any], float, float]:
                submitted = time.perf_counter()
                job = await _result(client, await _submit(client, body))
                done = time.perf_counter()
                bar.update(1)
                return model, job, done - submitted, done - started

            try:
                done = await asyncio.gather(*(one(model, body) for model, body in order))
            finally:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
    per_model = {
        model: _figures(model, [row[1:] for row in done if row[0] == model], samples)
        for model in jobs
    }
    wall = max(row[3] for row in done)
    tokens = sum(_tokens(row[1]) for row in done)
    return {
        "models": per_model,
        "jobs": total,
        "wall_s": wall,
        "tokens": tokens,
        "tokens_per_s": tokens / wall,
        "jobs_per_s": total / wall,
        # One row a second: seconds since the first submit, each model's queued jobs.
        "queue_timeline": _thinned(samples),
    }


def _thinned(samples: list[tuple[float, dict[str, float]]]) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for at, depth in samples:
        if not rows or at - rows[-1][0] >= 1.0:
            rows.append([round(at, 2), depth])
    return rows


def _pick(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _figures(
    model: str,
    rows: list[tuple[dict[str, Any], float, float]],
    samples: list[tuple[float, dict[str, float]]],
) -> dict[str, Any]:
    jobs = [job for job, _, _ in rows]
    latency = sorted(seconds for _, seconds, _ in rows)
    wall = max(at for _, _, at in rows)
    tokens = sum(_tokens(job) for job in jobs)
    depth = [sample[model] for _, sample in samples if model in sample]
    # Of each job's time: queued (created -> started, as its record says) and in the engine
    # (the worker's own measure, from handing it to the engine to its last token).
    queued = sorted(
        (
            datetime.fromisoformat(job["started_at"]) - datetime.fromisoformat(job["created_at"])
        ).total_seconds()
        for job in jobs
        if job.get("started_at") and job.get("created_at")
    )
    engine = sorted(float((job.get("engine") or {}).get("engine_s") or 0.0) for job in jobs)
    return {
        "jobs": len(jobs),
        "succeeded": sum(job["status"] == "succeeded" for job in jobs),
        "failed_by_code": dict(
            Counter(job["error"]["code"] for job in jobs if job["status"] == "failed")
        ),
        # Jobs whose record names another model than the one they were sent to: none expected.
        "wrong_model": sum(job["model"] != model for job in jobs),
        "workers": dict(Counter(str(job["worker"]) for job in jobs)),
        "wall_s": wall,
        "tokens": tokens,
        "tokens_per_s": tokens / wall,
        "jobs_per_s": len(jobs) / wall,
        "p50_s": _pick(latency, 0.50),
        "p95_s": _pick(latency, 0.95),
        "queued_p50_s": _pick(queued, 0.50) if queued else None,
        "engine_p50_s": _pick(engine, 0.50),
        "max_batch": max((job.get("engine") or {}).get("max_batch", 0) for job in jobs),
        "queue_depth_max": max(depth, default=0.0),
        "queue_depth_mean": statistics.fmean(depth) if depth else 0.0,
        "queue_samples": len(depth),
    }


# -- the section ---------------------------------------------------------------------------


def run_pools(workdir: Path, jobs: int, pair: str = "bundled") -> dict[str, Any]:
    """Raw vLLM on each model alone, then one stack serving both at once; the figures."""
    models = _models(pair)
    raw = _raw_alone(workdir, models, jobs, _SHARE[pair])
    (first, first_path, _), (second, second_path, _) = models
    env = {
        "STRUCTQ_MODEL": first,
        "STRUCTQ_MODEL_PATH": str(first_path),
        "STRUCTQ_EXTRA_MODELS": json.dumps([second]),
        "STRUCTQ_TOKENIZERS": json.dumps({first: str(first_path), second: str(second_path)}),
        "STRUCTQ_GPU_MEMORY_UTILIZATION": str(raw[first]["gpu_memory_utilization"]),
        "STRUCTQ_RATE_LIMIT_PER_S": "0",
        "STRUCTQ_MAX_QUEUED_PER_KEY": "0",
    }
    with Stack(workdir / "pools", env=env, worker=False) as stack:
        # Both workers start at once; the stack's own serves the first model.
        started = time.monotonic()
        workers = {
            name: stack.start_worker(
                env={"STRUCTQ_MODEL": name, "STRUCTQ_MODEL_PATH": str(path)},
                name="worker" if name == first else "worker-b",
                wait=False,
            )
            for name, path, _ in models
        }
        for worker in workers.values():
            stack.wait_worker_ready(worker)
        ready_s = time.monotonic() - started
        asyncio.run(_pooled(stack.api_url, {name: _warmup(jobs) for name in workers}))
        time.sleep(_SETTLE_S)
        pooled = asyncio.run(_pooled(stack.api_url, {name: pool_jobs(jobs) for name in workers}))
    raw_wall = sum(r["wall_s"] for r in raw.values())
    raw_tokens = sum(r["tokens"] for r in raw.values())
    raw_rate_sum = sum(r["tokens_per_s"] for r in raw.values())
    return {
        "pair": pair,
        "jobs_per_model": jobs,
        "text_tokens": _TEXT_TOKENS,
        "gpu_memory_utilization": raw[first]["gpu_memory_utilization"],
        "models": {
            name: {
                "about": about,
                "baseline": raw[name],
                "structq": pooled["models"][name],
                "worker_pid": workers[name].proc.pid,
                "throughput_ratio": pooled["models"][name]["tokens_per_s"]
                / raw[name]["tokens_per_s"],
            }
            for name, _, about in models
        },
        "workers_ready_s": ready_s,
        "combined": {
            "structq": {k: v for k, v in pooled.items() if k != "models"},
            "raw_back_to_back_tokens_per_s": raw_tokens / raw_wall,
            "raw_sum_of_rates_tokens_per_s": raw_rate_sum,
            "vs_back_to_back_ratio": pooled["tokens_per_s"] / (raw_tokens / raw_wall),
            "vs_sum_of_rates_ratio": pooled["tokens_per_s"] / raw_rate_sum,
        },
    }


def table(pools: dict[str, Any]) -> list[str]:
    c = pools["combined"]
    s = c["structq"]
    out = [
        "",
        f"Several pools: one gateway, two models at once, {pools['jobs_per_model']} jobs each "
        f"(text {pools['text_tokens']} tokens / choice / JSON; tokens/s)",
        f"  {'model':<23}{'jobs':>5}{'ok':>5}{'jobs/s':>8}{'tok/s':>7}{'p50 s':>7}{'p95 s':>7}"
        f"{'queue max':>10}{'raw tok/s':>10}{'ratio':>7}",
    ]
    for name, row in pools["models"].items():
        q, b = row["structq"], row["baseline"]
        out.append(
            f"  {name:<23}{q['jobs']:>5}{q['succeeded']:>5}{q['jobs_per_s']:>8.1f}"
            f"{q['tokens_per_s']:>7.0f}{q['p50_s']:>7.1f}{q['p95_s']:>7.1f}"
            f"{q['queue_depth_max']:>10.0f}{b['tokens_per_s']:>10.0f}{row['throughput_ratio']:>7.2f}"
        )
    out.append(
        f"  {'both':<23}{s['jobs']:>5}{'':>5}{s['jobs_per_s']:>8.1f}{s['tokens_per_s']:>7.0f}"
        f"  vs raw back to back {c['raw_back_to_back_tokens_per_s']:.0f} tok/s "
        f"({c['vs_back_to_back_ratio']:.2f}), raw rates summed "
        f"{c['raw_sum_of_rates_tokens_per_s']:.0f} ({c['vs_sum_of_rates_ratio']:.2f})"
    )
    for name, row in pools["models"].items():
        q = row["structq"]
        workers = ", ".join(f"{w} ({n} jobs)" for w, n in q["workers"].items())
        queued = "-" if q["queued_p50_s"] is None else f"{q['queued_p50_s']:.1f}"
        out.append(
            f"  {name}: ran on {workers}; p50 queued {queued} s, in the engine "
            f"{q['engine_p50_s']:.1f} s; batch up to {q['max_batch']}"
        )
    out.append(
        "  (both engines share this machine's CPU: each ratio is against the model running alone)"
    )
    return out
