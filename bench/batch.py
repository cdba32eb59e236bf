"""The Batch API end to end (``/v1/files``, ``/v1/batches``) beside raw vLLM.

A batch of short jobs (the ceiling's 8-token ``ignore_eos`` text jobs, as native ``/v1/jobs``
lines in OpenAI's batch format, so every line generates exactly 8 tokens on both sides) goes
through the whole client path: the JSONL built in a temp file, uploaded with httpx streaming it
from the file (multipart), the batch created, polled (``GET /v1/batches/{id}``, 4 times a
second, as a client would), its output file downloaded streamed, its lines counted and their
``usage`` tokens summed. Raw vLLM runs the same requests with one ``LLM.generate`` in the same
run, beside it (``bench.pairing``). End-to-end tokens/s (from the upload's first byte to the
output's last) over raw's is the ``throughput_ratio``.

Beside the client's polls, a sampler thread reads every 20 ms the gateway's RSS and CPU time
(``/proc``) and the batch's record in Redis (its status, the driver's read cursor: lines
enqueued so far, its counts, its in-flight set): time to ``in_progress``, lines enqueued per
second while the driver fills its window (``STRUCTQ_BATCH_MAX_IN_FLIGHT``), lines finished per
second, and the gateway's memory peak and CPU in each phase (upload, validating, in progress,
finalizing, download). Then, on the near-free engine, a file of ~100 MB (no batch over it) is
uploaded and downloaded once, to show whether the gateway's memory grows with the file's size.

Two engines: the near-free one of ``bench.ceiling`` with 20,000 lines, and the bundled model
with ``BUNDLED_LINES`` (it runs ~25 such jobs/s on this 2-core CPU, 256 at a time: this
count takes ~40 s a side).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import redis

from api.settings import ApiSettings
from bench.baseline import RawEngine
from bench.ceiling import TINY_MODEL, _cpu
from bench.load import run_load
from bench.pairing import paired
from bench.workloads import short_text_jobs
from scripts.stack import Stack
from shared.keys import BATCH_INFLIGHT_PREFIX, BATCH_PREFIX
from worker.model import derive_model
from worker.settings import WorkerSettings

__all__ = [
    "BUNDLED_LINES",
    "ENGINES",
    "NEAR_FREE_LINES",
    "beside_raw",
    "line_count",
    "run_batches",
    "table",
]

Body = dict[str, Any]

NEAR_FREE_LINES = 20_000
BUNDLED_LINES = 1_000
ENGINES = ("near-free", "bundled")
# The size-probe file (MB at --scale 1), uploaded and downloaded on the near-free stack only.
_PROBE_MB = 100
_POLL_S = 0.25  # the client's GET /v1/batches/{id}
_SAMPLE_S = 0.02  # the sampler's /proc and Redis reads
_PAGE = os.sysconf("SC_PAGE_SIZE")
_MB = 1 << 20
# The batch driver's window: the benchmark leaves STRUCTQ_BATCH_MAX_IN_FLIGHT as it finds it.
_WINDOW = int(
    os.environ.get(
        "STRUCTQ_BATCH_MAX_IN_FLIGHT", ApiSettings.model_fields["batch_max_in_flight"].default
    )
)
_TERMINAL = ("completed", "failed", "expired", "cancelled")


# -- the client side ---------------------------------------------------------------------


def _write_lines(path: Path, bodies: list[Body]) -> int:
    """The batch's input: one OpenAI batch line per body, for the native ``/v1/jobs``."""
    with path.open("w") as out:
        for i, body in enumerate(bodies):
            line = {"custom_id": f"line-{i}", "method": "POST", "url": "/v1/jobs", "body": body}
            out.write(json.dumps(line, separators=(",", ":")) + "\n")
    return path.stat().st_size


def _write_probe(path: Path, size: int) -> int:
    """A valid batch file of ``size`` bytes in ~2 KB lines (never run: only moved)."""
    filler = "the printer is on fire; " * 80
    written, i = 0, 0
    with path.open("w") as out:
        while written < size:
            body = {"prompt": f"Ticket {i}: {filler}", "sampling": {"max_tokens": 8}}
            line = {"custom_id": f"probe-{i}", "method": "POST", "url": "/v1/jobs", "body": body}
            written += out.write(json.dumps(line, separators=(",", ":")) + "\n")
            i += 1
    return path.stat().st_size


def _upload(client: httpx.Client, path: Path) -> dict[str, Any]:
    """``POST /v1/files``: httpx streams the multipart body from the open file, 64 KB at a time."""
    with path.open("rb") as f:
        files = {"file": (path.name, f, "application/jsonl")}
        response = client.post("/v1/files", data={"purpose": "batch"}, files=files)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def _download(client: httpx.Client, file_id: str, parse: bool) -> tuple[int, int, int]:
    """A file's content, streamed: (bytes, lines, completion tokens summed over the lines'
    ``usage``, with ``parse``)."""
    size = lines = tokens = 0
    with client.stream("GET", f"/v1/files/{file_id}/content") as response:
        response.raise_for_status()
        if not parse:
            for chunk in response.iter_bytes():
                size += len(chunk)
                lines += chunk.count(b"\n")
            return size, lines, 0
        for line in response.iter_lines():
            size += len(line) + 1
            if not line:
                continue
            lines += 1
            body = (json.loads(line).get("response") or {}).get("body") or {}
            usage = (body.get("result") or {}).get("usage") or {}
            tokens += usage.get("completion_tokens", 0)
    return size, lines, tokens


# -- the sampler ---------------------------------------------------------------------------


def _rss(pid: int) -> int:
    """Resident memory of a process, bytes (``/proc/<pid>/statm``'s second field)."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


class _Sampler(threading.Thread):
    """Every ``_SAMPLE_S``: (time, gateway RSS, gateway CPU s, and once ``batch_id`` is set its
    record's status, read cursor, completed, failed and in-flight count)."""

    def __init__(self, pid: int, redis_url: str) -> None:
        super().__init__(name="batch-sampler", daemon=True)
        self._pid = pid
        self._redis = redis.Redis.from_url(redis_url)
        self._halt = threading.Event()
        self.batch_id: str | None = None
        self.rows: list[tuple[float, int, float, str, int, int, int, int]] = []

    def run(self) -> None:
        while not self._halt.is_set():
            now = time.perf_counter()
            rss, cpu = _rss(self._pid), _cpu(self._pid)
            status, cursor, completed, failed, in_flight = "", 0, 0, 0, 0
            batch_id = self.batch_id
            if batch_id is not None:
                with contextlib.suppress(redis.RedisError):
                    pipe = self._redis.pipeline(transaction=False)
                    pipe.hmget(BATCH_PREFIX + batch_id, ["status", "cursor", "completed", "failed"])
                    pipe.scard(BATCH_INFLIGHT_PREFIX + batch_id)
                    (s, c, done, bad), in_flight = pipe.execute()
                    status = (s or b"").decode()
                    cursor, completed, failed = int(c or 0), int(done or 0), int(bad or 0)
            self.rows.append((now, rss, cpu, status, cursor, completed, failed, in_flight))
            self._halt.wait(_SAMPLE_S)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)
        self._redis.close()

    def span(self, start: float, end: float) -> dict[str, float]:
        """The gateway between two instants: wall s, peak RSS MB and CPU s, from the samples
        in between and the nearest one on each side (a phase shorter than a sample has two)."""
        rows = self.rows
        lo = max((i for i, r in enumerate(rows) if r[0] <= start), default=0)
        hi = next((i for i, r in enumerate(rows) if r[0] >= end), len(rows) - 1)
        inside = rows[lo : hi + 1]
        return {
            "s": end - start,
            "rss_peak_mb": max(r[1] for r in inside) / _MB,
            "cpu_s": inside[-1][2] - inside[0][2],
        }

    def first(self, status: str, after: float) -> float | None:
        """When the record was first seen in ``status`` (at or after ``after``)."""
        return next((r[0] for r in self.rows if r[0] >= after and r[3] == status), None)


# -- one batch -----------------------------------------------------------------------------


def _fill_rate(rows: list[tuple[Any, ...]], start: float, total: int) -> dict[str, Any]:
    """Lines enqueued per second while the driver filled its window: from the first sample
    with lines enqueued to the first with the window (or the whole batch) enqueued."""
    target = min(_WINDOW, total)
    run = [r for r in rows if r[0] >= start and r[3] == "in_progress"]
    first = next((r for r in run if r[4] > 0), None)
    full = next((r for r in run if r[4] >= target), None)
    if first is None or full is None or full[0] <= first[0]:
        return {"lines": target, "s": None, "lines_per_s": None, "gateway_cpu_ms_per_line": None}
    lines = full[4] - first[4]
    return {
        "lines": lines,
        "s": full[0] - first[0],
        "lines_per_s": lines / (full[0] - first[0]),
        # The gateway's CPU meanwhile (the driver's, mostly: the client only polls).
        "gateway_cpu_ms_per_line": (full[2] - first[2]) / lines * 1000,
    }


def _timeline(rows: list[tuple[Any, ...]], start: float, every_s: float = 1.0) -> list[list[Any]]:
    """One sample a second from ``start``: [s, enqueued, completed, failed, in flight, RSS MB]."""
    out: list[list[Any]] = []
    next_t = start
    for t, rss, _, status, cursor, completed, failed, in_flight in rows:
        if t >= next_t and status:
            out.append(
                [round(t - start, 2), cursor, completed, failed, in_flight, round(rss / _MB, 1)]
            )
            next_t = t + every_s
    return out


def structq_batch(stack: Stack, bodies: list[Body], workdir: Path) -> dict[str, Any]:
    """Upload, create, poll, download; every figure of the batch path."""
    path = workdir / f"batch-{len(bodies)}.jsonl"
    size = _write_lines(path, bodies)
    sampler = _Sampler(stack.pids()["gateway"], stack.redis_url)
    sampler.start()
    try:
        with httpx.Client(base_url=stack.api_url, timeout=300) as client:
            time.sleep(0.2)  # a few idle samples
            started = time.perf_counter()
            uploaded = _upload(client, path)
            uploaded_at = time.perf_counter()
            create = {
                "input_file_id": uploaded["id"],
                "endpoint": "/v1/jobs",
                "completion_window": "24h",
                "metadata": {"run": "bench"},
            }
            response = client.post("/v1/batches", json=create)
            response.raise_for_status()
            batch = response.json()
            created_at = time.perf_counter()
            sampler.batch_id = batch["id"]
            polls: list[tuple[float, int, int]] = []
            while batch["status"] not in _TERMINAL:
                time.sleep(_POLL_S)
                batch = client.get(f"/v1/batches/{batch['id']}").json()
                counts = batch["request_counts"]
                polls.append((time.perf_counter(), counts["completed"], counts["failed"]))
            seen_done = time.perf_counter()
            if batch["status"] != "completed" or not batch["output_file_id"]:
                raise RuntimeError(f"the batch ended {batch['status']}: {batch}")
            out_bytes, out_lines, tokens = _download(client, batch["output_file_id"], parse=True)
            finished = time.perf_counter()
            error_lines = 0
            if batch["error_file_id"]:
                error_lines = _download(client, batch["error_file_id"], parse=False)[1]
        time.sleep(0.1)
    finally:
        sampler.stop()
        path.unlink(missing_ok=True)

    rows = sampler.rows
    idle = [r[1] for r in rows if r[0] < started]
    in_progress = sampler.first("in_progress", created_at) or created_at
    finalizing = sampler.first("finalizing", in_progress) or seen_done
    completed = sampler.first("completed", finalizing) or seen_done
    # When the driver had read (enqueued) the last line.
    all_read = next((r[0] for r in rows if r[0] >= in_progress and r[4] >= len(bodies)), finalizing)
    phases = {
        "upload": sampler.span(started, uploaded_at),
        "validating": sampler.span(created_at, in_progress),
        "in_progress": sampler.span(in_progress, finalizing),
        "finalizing": sampler.span(finalizing, completed),
        "download": sampler.span(seen_done, finished),
    }
    wall = finished - started
    lines = len(bodies)
    gateway_cpu = sampler.span(started, finished)["cpu_s"]
    return {
        "lines": lines,
        "file_bytes": size,
        "window": _WINDOW,
        "upload_s": uploaded_at - started,
        "upload_mb_per_s": size / _MB / (uploaded_at - started),
        "time_to_in_progress_s": in_progress - created_at,
        "enqueue_fill": _fill_rate(rows, in_progress, lines),
        "enqueued_lines_per_s": lines / max(all_read - in_progress, 1e-9),
        "finished_lines_per_s": lines / max(finalizing - in_progress, 1e-9),
        "running_s": finalizing - in_progress,
        "finalize_s": completed - finalizing,
        "download_s": finished - seen_done,
        "download_mb_per_s": out_bytes / _MB / max(finished - seen_done, 1e-9),
        "wall_s": wall,
        "output_lines": out_lines,
        "error_lines": error_lines,
        "request_counts": batch["request_counts"],
        "tokens": tokens,
        "tokens_per_s": tokens / wall,
        "jobs_per_s": lines / wall,
        "gateway": {
            "rss_idle_mb": (max(idle) if idle else 0) / _MB,
            "rss_peak_mb": max(r[1] for r in rows) / _MB,
            "phases": phases,
            "cpu_s": gateway_cpu,
            "cpu_ms_per_line": gateway_cpu / lines * 1000,
        },
        "client_polls": len(polls),
        "timeline": _timeline(rows, created_at),
    }


def size_probe(stack: Stack, size_mb: int, workdir: Path) -> dict[str, Any]:
    """A ``size_mb`` file uploaded, downloaded and deleted: the gateway's memory meanwhile."""
    path = workdir / "probe.jsonl"
    size = _write_probe(path, size_mb * _MB)
    sampler = _Sampler(stack.pids()["gateway"], stack.redis_url)
    sampler.start()
    try:
        with httpx.Client(base_url=stack.api_url, timeout=600) as client:
            time.sleep(0.2)
            started = time.perf_counter()
            uploaded = _upload(client, path)
            uploaded_at = time.perf_counter()
            got, lines, _ = _download(client, uploaded["id"], parse=False)
            finished = time.perf_counter()
            client.delete(f"/v1/files/{uploaded['id']}").raise_for_status()
        time.sleep(0.1)
    finally:
        sampler.stop()
        path.unlink(missing_ok=True)
    if got != size:
        raise RuntimeError(f"uploaded {size} bytes, downloaded {got}")
    idle = [r[1] for r in sampler.rows if r[0] < started]
    upload, download = sampler.span(started, uploaded_at), sampler.span(uploaded_at, finished)
    return {
        "file_bytes": size,
        "lines": lines,
        "rss_idle_mb": (max(idle) if idle else 0) / _MB,
        "upload": {**upload, "mb_per_s": size / _MB / upload["s"]},
        "download": {**download, "mb_per_s": size / _MB / download["s"]},
    }


# -- the section ---------------------------------------------------------------------------


def beside_raw(
    raw: RawEngine, stack: Stack, name: str, lines: int, probe_mb: int, workdir: Path
) -> dict[str, Any]:
    """One engine's batch beside raw vLLM's ``LLM.generate`` of the same requests, on a stack
    and raw engine already running (the bundled model's in ``make bench`` are the burst
    sections' own)."""
    bodies = short_text_jobs(lines)
    warmup = short_text_jobs(64 if name == "near-free" else 16)
    raw.burst(warmup)
    run_load(stack.api_url, warmup)
    structq_batch(stack, warmup[:16], workdir)  # the batch path's first use
    # The near-free engine runs raw first, the bundled one structq first.
    base, ours = paired(
        ENGINES.index(name),
        lambda: raw.burst(bodies),
        lambda: structq_batch(stack, bodies, workdir),
    )
    out: dict[str, Any] = {"engine": name, "lines": lines, "baseline": base, "structq": ours}
    out["throughput_ratio"] = ours["tokens_per_s"] / base["tokens_per_s"]
    if probe_mb:
        time.sleep(0.5)
        out["size_probe"] = size_probe(stack, probe_mb, workdir)
    return out


def _engine(workdir: Path, name: str, lines: int, probe_mb: int) -> dict[str, Any]:
    """``beside_raw`` on a raw engine and a stack of its own."""
    model: Path | None = None
    if name == "near-free":
        model = derive_model(WorkerSettings.load().cache_dir, "structq-bench-tiny", **TINY_MODEL)
    with RawEngine(workdir / f"batch-{name}-raw.log", model_path=model) as raw:
        env = {
            "STRUCTQ_GPU_MEMORY_UTILIZATION": str(raw.gpu_memory_utilization),
            "STRUCTQ_RATE_LIMIT_PER_S": "0",
            "STRUCTQ_MAX_QUEUED_PER_KEY": "0",
        }
        if model is not None:
            env["STRUCTQ_MODEL_PATH"] = str(model)
        with Stack(workdir / f"batch-{name}", env=env) as stack:
            return beside_raw(raw, stack, name, lines, probe_mb, workdir)


def line_count(name: str, scale: float) -> int:
    """The batch's lines on engine ``name`` at ``scale``."""
    return max(8, round((NEAR_FREE_LINES if name == "near-free" else BUNDLED_LINES) * scale))


def run_batches(workdir: Path, scale: float, engines: tuple[str, ...] = ENGINES) -> dict[str, Any]:
    """The batch section on each engine in ``engines`` (each on a stack and raw engine of its
    own): 20,000 lines on the near-free one, ``BUNDLED_LINES`` on the bundled model (both x
    ``scale``); the size probe, ``_PROBE_MB`` x ``scale``, on the near-free one."""
    out: dict[str, Any] = {"window": _WINDOW, "tokens_per_line": 8}
    for name in engines:
        probe = max(1, round(_PROBE_MB * scale)) if name == "near-free" else 0
        out[name.replace("-", "_")] = _engine(workdir, name, line_count(name, scale), probe)
    return out


def table(batch: dict[str, Any]) -> list[str]:
    out = [
        "",
        f"Batches: /v1/jobs lines of {batch['tokens_per_line']}-token text, window "
        f"{batch['window']} (tokens/s: upload's first byte -> output's last)",
        f"  {'engine':<11}{'lines':>7}{'upload':>8}{'->in_pr':>8}{'enq/s':>7}{'done/s':>8}"
        f"{'final':>7}{'downl':>7}{'raw tok/s':>10}{'structq':>9}{'ratio':>7}",
    ]
    for name in ENGINES:
        row = batch.get(name.replace("-", "_"))
        if row is None:
            continue
        s, b = row["structq"], row["baseline"]
        fill = s["enqueue_fill"]["lines_per_s"]
        fill_text = "-" if fill is None else f"{fill:.0f}"
        out.append(
            f"  {name:<11}{s['lines']:>7}{s['upload_s']:>7.2f}s{s['time_to_in_progress_s']:>7.2f}s"
            f"{fill_text:>7}{s['finished_lines_per_s']:>8.0f}{s['finalize_s']:>6.1f}s"
            f"{s['download_s']:>6.1f}s{b['tokens_per_s']:>10.0f}{s['tokens_per_s']:>9.0f}"
            f"{row['throughput_ratio']:>7.2f}"
        )
    out.append("  gateway RSS MB (idle / peak in upload, run, finalize, download; CPU ms/line)")
    for name in ENGINES:
        row = batch.get(name.replace("-", "_"))
        if row is None:
            continue
        g = row["structq"]["gateway"]
        p = g["phases"]
        out.append(
            f"  {name:<11}{g['rss_idle_mb']:>6.0f} / {p['upload']['rss_peak_mb']:.0f}, "
            f"{p['in_progress']['rss_peak_mb']:.0f}, {p['finalizing']['rss_peak_mb']:.0f}, "
            f"{p['download']['rss_peak_mb']:.0f}   ({g['cpu_ms_per_line']:.2f} ms/line)"
        )
        if probe := row.get("size_probe"):
            up, down = probe["upload"], probe["download"]
            out.append(
                f"  {probe['file_bytes'] / _MB:.0f} MB file  {probe['rss_idle_mb']:>4.0f} / "
                f"upload {up['rss_peak_mb']:.0f} ({up['mb_per_s']:.0f} MB/s), "
                f"download {down['rss_peak_mb']:.0f} ({down['mb_per_s']:.0f} MB/s)"
            )
    return out
