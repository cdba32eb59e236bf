"""The chaos soak (``make chaos``): a mixed load against two workers while faults are injected
from a seeded list, then a checker that reads everything back against every guarantee.

The load (through the gateway's HTTP API, as clients would): single jobs of several output
types, some with webhooks and some streamed (each stream followed to its end, again from the
start if a gateway kill cuts it), ``/v1/jobs/batch`` submissions, and one OpenAI batch. A
submission cut by a fault is sent again with its idempotency key until it is answered.

The faults, drawn from ``--seed`` (several may overlap; one at a time per target): SIGKILL of a
worker's process group, a freeze of a worker (SIGSTOP of its group) for 5-60 s, a worker cut
off from Redis by its partition proxy (``scripts.partition``, reset or black hole) for less than
STRUCTQ_REDIS_OUTAGE_S, a clean Redis restart (SIGTERM: its append-only file is flushed), a
SIGKILL of the gateway, a restart of the webhook worker. A supervisor starts what was killed
again after a delay, as compose or Kubernetes would. Timings are the production defaults
(heartbeat TTL 15 s, orphan grace 10 s, janitor every 1 s, 3 attempts, outage bound 60 s),
except a short webhook schedule. The webhook receiver fails some events (fewer times each than
the schedule allows).

The checker's terms are defined in docs/lifecycle.md ("The chaos soak"). Exit 0 when it finds
nothing wrong, 1 otherwise; the seed and the fault timeline are printed (a seed draws the same
faults again; their timing against the load varies).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import random
import re
import signal
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import redis

from scripts.partition import Partition
from scripts.stack import Stack, _Child, free_port
from shared.keys import DONE_CHANNEL

__all__ = ["main"]

SECRET = "whsec_" + base64.b64encode(b"structq-chaos-webhook-secret-0123").decode()
MAX_ATTEMPTS = 3
REDIS_OUTAGE_S = 60
WEBHOOK_SCHEDULE_S = [0, 1, 2, 2, 2, 2]
# A job that sat queued longer than this while a worker had been healthy for HEALTHY_S is
# reported (a healthy worker takes a queued job within its take interval; the load is below
# the two workers' throughput).
QUEUED_BOUND_S = 60.0
HEALTHY_S = 30.0
_KV = json.dumps({"kv_cache_memory_bytes": 512 * 2**20})
_TERMINAL = {"succeeded", "failed", "cancelled", "expired"}


def _log(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Fault:
    at: float  # seconds since the load started
    kind: str
    target: str
    seconds: float = 0.0
    ended: float = 0.0


@dataclass
class Submitted:
    job_id: str
    kind: str  # single | stream | bulk | batch-line
    webhook: bool = False


@dataclass
class _Stream:
    deltas: list[str] = field(default_factory=list)
    done: dict[str, Any] | None = None
    resets: int = 0  # `reset` events: a re-run wrote otherwise, the text starts again


class _Receiver:
    """Webhooks: each webhook-id is failed (500) its first 0-2 attempts, drawn from the seed."""

    def __init__(self, rng: random.Random) -> None:
        self.lock = threading.Lock()
        self.attempts: defaultdict[str, int] = defaultdict(int)
        self.fail_first: dict[str, int] = {}
        self.delivered: list[tuple[str, str, str, float]] = []  # webhook-id, type, job, at
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                hook_id = self.headers.get("webhook-id", "")
                with receiver.lock:
                    fails = receiver.fail_first.setdefault(hook_id, rng.choice([0, 0, 0, 1, 2]))
                    receiver.attempts[hook_id] += 1
                    ok = receiver.attempts[hook_id] > fails
                    if ok:
                        event = json.loads(body)
                        job = event.get("data", {}).get("id", "")
                        receiver.delivered.append((hook_id, event["type"], job, time.time()))
                self.send_response(200 if ok else 500)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()


class Soak:
    def __init__(self, workdir: Path, seed: int, minutes: float) -> None:
        self.rng = random.Random(seed)  # the load (its threads share it)
        self.fault_rng = random.Random(seed + 2)  # the faults: the same draws for a seed
        self.seed = seed
        self.minutes = minutes
        self.stack = Stack(
            workdir,
            worker=False,
            webhooks=True,
            env={
                "STRUCTQ_WEBHOOK_SECRET": SECRET,
                "STRUCTQ_WEBHOOK_SCHEDULE_S": json.dumps(WEBHOOK_SCHEDULE_S),
                "STRUCTQ_WEBHOOK_TIMEOUT_S": "2",
                "STRUCTQ_WEBHOOK_ALLOWED_NETWORKS": '["127.0.0.0/8"]',
                "STRUCTQ_MAX_MODEL_LEN": "2048",
                "STRUCTQ_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
                "STRUCTQ_REDIS_OUTAGE_S": str(REDIS_OUTAGE_S),
            },
        )
        self.receiver = _Receiver(random.Random(seed + 1))
        self.faults: list[Fault] = []
        self.jobs: list[Submitted] = []
        self.streams: dict[str, _Stream] = {}
        self.batch_id = ""
        self.batch_lines = 0
        self.done_seen: Counter[str] = Counter()
        self.queued_ages: list[tuple[float, float]] = []  # (load time, oldest queued age)
        self.started = 0.0
        self.stopping = threading.Event()  # the load and the faults stop
        self.closing = threading.Event()  # the stack stops: nothing is started again
        self._lock = threading.Lock()
        self._busy: set[str] = set()  # targets with a fault in progress
        self._down: dict[str, float] = {}  # target -> since when it is meant to be down
        self.proxies: dict[str, Partition] = {}
        self.children: dict[str, _Child] = {}
        self.gateway_port = free_port()
        self._supervisor: threading.Thread | None = None
        self.api = ""

    # -- the stack ------------------------------------------------------------------

    def start(self) -> None:
        self.stack.start()
        for name in ("worker-a", "worker-b"):
            self.proxies[name] = Partition(self.stack.redis_port)
            self.children[name] = self._start_worker(name, wait=True)
        self.children["gateway"], self.api = self.stack.start_extra_gateway(
            name="gateway-chaos", port=self.gateway_port
        )
        assert self.stack.webhooks is not None
        self.children["webhooks"] = self.stack.webhooks
        self._supervisor = threading.Thread(target=self._supervise, daemon=True)
        self._supervisor.start()
        threading.Thread(target=self._hear_done, daemon=True).start()

    def _start_worker(self, name: str, wait: bool) -> _Child:
        env = {"STRUCTQ_REDIS_URL": self.proxies[name].url(), "STRUCTQ_ENGINE_ARGS": _KV}
        return self.stack.start_worker(env, name=name, wait=wait)

    def _supervise(self) -> None:
        """Start again what died (after a delay, as a supervisor would)."""
        while not self.closing.wait(0.5):
            for name, child in list(self.children.items()):
                if child.alive():
                    continue
                with self._lock:
                    since = self._down.setdefault(name, time.monotonic())
                delay = 3.0 if name.startswith("worker") else 1.0
                if time.monotonic() - since < delay:
                    continue
                try:
                    if name.startswith("worker"):
                        self.children[name] = self._start_worker(name, wait=False)
                    elif name == "gateway":
                        self.children[name], _ = self.stack.start_extra_gateway(
                            name="gateway-chaos", port=self.gateway_port
                        )
                    else:
                        self.children[name] = self.stack.start_webhooks()
                    _log(f"supervisor: {name} started again")
                except Exception as exc:  # Redis down meanwhile: try again next round
                    _log(f"supervisor: {name} did not start ({exc!r:.200}); trying again")
                    continue
                with self._lock:
                    self._down.pop(name, None)

    def _hear_done(self) -> None:
        """Every completion notice (one per terminal write), through Redis restarts."""
        while True:
            client = redis.Redis(port=self.stack.redis_port, socket_timeout=5)
            try:
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(DONE_CHANNEL)
                while True:
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None and message["type"] == "message":
                        with self._lock:
                            self.done_seen.update(message["data"].decode().split())
            except (redis.RedisError, OSError):
                time.sleep(0.5)
            finally:
                client.close()

    # -- the load -------------------------------------------------------------------

    def _post(self, path: str, **kwargs: Any) -> httpx.Response:
        """A request sent again (the same idempotency key) until it is answered, not by a
        fault's 5xx."""
        deadline = time.monotonic() + 180
        while True:
            try:
                response = httpx.post(f"{self.api}{path}", timeout=30, **kwargs)
                if response.status_code < 500:
                    return response
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"POST {path} unanswered for 180 s")
            time.sleep(0.5)

    def _body(self, n: int, stream: bool = False) -> dict[str, Any]:
        kind = self.rng.choice(["choice", "json", "text"])
        outputs: dict[str, dict[str, Any]] = {
            "choice": {"type": "choice", "choices": ["yes", "no", "maybe"]},
            "json": {
                "type": "json_schema",
                # A boolean: an integer's digits may outrun the tokens (a run of zeros).
                "schema": {
                    "type": "object",
                    "properties": {"salty": {"type": "boolean"}},
                    "required": ["salty"],
                },
            },
            "text": {"type": "text"},
        }
        output = outputs[kind]
        tokens = 24 if kind != "text" else self.rng.randint(16, 48)
        sampling: dict[str, Any] = {"max_tokens": tokens, "temperature": 0, "seed": n}
        if kind == "text":
            sampling["ignore_eos"] = True
        body: dict[str, Any] = {
            "prompt": f"Question {n}: is the sea salty? Answer:",
            "output_type": output,
            "sampling": sampling,
        }
        if stream:
            body["stream"] = True
        if self.rng.random() < 0.5:
            body["webhook"] = {"url": self.receiver.url}
        return body

    def _singles(self) -> None:
        n = 0
        while not self.stopping.is_set():
            n += 1
            stream = n % 8 == 0
            body = self._body(n, stream)
            response = self._post("/v1/jobs", json=body, headers={"Idempotency-Key": f"s-{n}"})
            if response.status_code in (200, 202):
                job_id = response.json()["id"]
                kind = "stream" if stream else "single"
                with self._lock:
                    self.jobs.append(Submitted(job_id, kind, "webhook" in body))
                if stream:
                    self.streams[job_id] = _Stream()
                    threading.Thread(target=self._follow, args=(job_id,), daemon=True).start()
            else:
                _log(f"a single job was refused: {response.status_code} {response.text[:200]}")
            self.stopping.wait(self.rng.uniform(0.3, 0.9))

    def _follow(self, job_id: str) -> None:
        """Follow a job's stream to its end; from the start again when a fault cuts it."""
        stream = self.streams[job_id]
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            deltas: list[str] = []
            resets = 0
            name = None
            try:
                with httpx.stream("GET", f"{self.api}/v1/jobs/{job_id}/stream", timeout=60) as r:
                    for line in r.iter_lines():
                        if line.startswith("event: "):
                            name = line.removeprefix("event: ")
                        elif line.startswith("data: "):
                            data = json.loads(line.removeprefix("data: "))
                            if name == "delta":
                                deltas.append(data["text"])
                            elif name == "reset":
                                deltas.clear()
                                resets += 1
                            elif name == "done":
                                stream.deltas, stream.done, stream.resets = deltas, data, resets
                                return
            except (httpx.TransportError, json.JSONDecodeError):
                pass
            time.sleep(1)

    def _bulks(self) -> None:
        n = 0
        while not self.stopping.wait(self.rng.uniform(10, 20)):
            n += 1
            jobs = []
            for i in range(10):
                body = self._body(10_000 * n + i)
                body["idempotency_key"] = f"b-{n}-{i}"
                jobs.append(body)
            response = self._post("/v1/jobs/batch", json={"jobs": jobs})
            if response.status_code != 200:
                _log(f"a bulk submission was refused: {response.status_code}")
                continue
            for row, body in zip(response.json()["data"], jobs, strict=True):
                if row["status"] in (200, 202):
                    with self._lock:
                        self.jobs.append(Submitted(row["id"], "bulk", "webhook" in body))

    def _openai_batch(self) -> None:
        self.stopping.wait(20)
        lines = [
            {
                "custom_id": f"line-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "SmolLM2-135M-Instruct",
                    "messages": [{"role": "user", "content": f"Say a word about {i}."}],
                    "max_tokens": 12,
                },
            }
            for i in range(30)
        ]
        data = "".join(json.dumps(line) + "\n" for line in lines).encode()
        upload = self._post(
            "/v1/files", files={"file": ("lines.jsonl", data)}, data={"purpose": "batch"}
        )
        file_id = upload.json()["id"]
        batch = self._post(
            "/v1/batches",
            json={
                "input_file_id": file_id,
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        )
        self.batch_id, self.batch_lines = batch.json()["id"], len(lines)

    def _sample_queue(self) -> None:
        while not self.stopping.wait(2):
            try:
                text = httpx.get(f"{self.api}/metrics", timeout=5).text
            except httpx.TransportError:
                continue
            ages = re.findall(r"^structq_queue_oldest_age_seconds\{[^}]*\} (\S+)$", text, re.M)
            if ages and self._a_worker_healthy():
                self.queued_ages.append((self._now(), max(float(a) for a in ages)))

    def _a_worker_healthy(self) -> bool:
        """Some worker alive, and free of faults for the last HEALTHY_S."""
        now = self._now()
        for name in ("worker-a", "worker-b"):
            if not self.children[name].alive() or name in self._busy:
                continue
            recent = [
                f
                for f in self.faults
                if f.target == name and (f.ended == 0 or now - f.ended < HEALTHY_S)
            ]
            if not recent and now > HEALTHY_S:
                return True
        return False

    def _now(self) -> float:
        return time.monotonic() - self.started

    # -- the faults -----------------------------------------------------------------

    def _inject(self) -> None:
        kinds = ["kill", "freeze", "reset", "black-hole", "redis", "gateway", "webhooks"]
        weights = [3, 3, 2, 2, 1, 1, 1]
        while not self.stopping.wait(self.fault_rng.uniform(8, 20)):
            kind = self.fault_rng.choices(kinds, weights)[0]
            target = {"redis": "redis", "gateway": "gateway", "webhooks": "webhooks"}.get(
                kind, self.fault_rng.choice(["worker-a", "worker-b"])
            )
            with self._lock:
                if target in self._busy:
                    continue
                self._busy.add(target)
            seconds = {
                "freeze": self.fault_rng.uniform(5, 60),
                "reset": self.fault_rng.uniform(5, REDIS_OUTAGE_S - 20),
                "black-hole": self.fault_rng.uniform(5, REDIS_OUTAGE_S - 20),
                "redis": self.fault_rng.uniform(1, 3),
            }.get(kind, 0.0)
            fault = Fault(round(self._now(), 1), kind, target, round(seconds, 1))
            self.faults.append(fault)
            _log(f"fault: {kind} {target} {seconds:.0f}s")
            threading.Thread(target=self._run_fault, args=(fault,), daemon=True).start()

    def _run_fault(self, fault: Fault) -> None:
        try:
            child = self.children.get(fault.target)
            if fault.kind == "kill" and child is not None and child.alive():
                os.killpg(child.proc.pid, signal.SIGKILL)
            elif fault.kind == "freeze" and child is not None and child.alive():
                os.killpg(child.proc.pid, signal.SIGSTOP)
                time.sleep(fault.seconds)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.proc.pid, signal.SIGCONT)
            elif fault.kind in ("reset", "black-hole"):
                proxy = self.proxies[fault.target]
                proxy.reset() if fault.kind == "reset" else proxy.black_hole()
                time.sleep(fault.seconds)
                proxy.restore()
            elif fault.kind == "redis":
                self.stack.restart_redis(down_s=fault.seconds)
            elif fault.kind == "gateway" and child is not None:
                child.kill()
            elif fault.kind == "webhooks" and child is not None:
                if self.fault_rng.random() < 0.5:
                    child.kill()
                else:
                    child.stop(10)
        except Exception as exc:
            _log(f"fault {fault} could not run: {exc!r}")
        finally:
            fault.ended = round(self._now(), 1)
            with self._lock:
                self._busy.discard(fault.target)

    # -- the run and the check --------------------------------------------------------

    def run(self) -> bool:
        self.start()
        self.started = time.monotonic()
        _log(f"seed {self.seed}; load and faults for {self.minutes:g} minutes")
        threads = [
            threading.Thread(target=target, daemon=True)
            for target in (self._singles, self._bulks, self._openai_batch, self._inject)
        ]
        threads.append(threading.Thread(target=self._sample_queue, daemon=True))
        for thread in threads:
            thread.start()
        self.stopping.wait(self.minutes * 60)
        self.stopping.set()
        for thread in threads:
            thread.join(240)
        while self._busy:  # every fault has ended (freezes thawed, cuts restored)
            time.sleep(0.5)
        self.load_s = self._now()
        _log("load stopped; faults healed; checking")
        return self.check()

    def check(self, settle_s: float = 300) -> bool:
        api = httpx.Client(base_url=self.api, timeout=30)
        deadline = time.monotonic() + settle_s
        records: dict[str, dict[str, Any] | None] = {}
        pending = [j.job_id for j in self.jobs]
        while pending and time.monotonic() < deadline:
            for job_id in list(pending):
                try:
                    response = api.get(f"/v1/jobs/{job_id}")
                except httpx.TransportError:
                    continue
                if response.status_code == 404:
                    records[job_id] = None
                    pending.remove(job_id)
                elif response.status_code == 200:
                    record = records[job_id] = response.json()
                    if record["status"] in _TERMINAL:
                        pending.remove(job_id)
            time.sleep(1 if pending else 0)
        time.sleep(10)  # late webhooks and completion notices
        problems: Counter[str] = Counter()
        statuses: Counter[str] = Counter()
        kills = [f for f in self.faults if f.kind == "kill"]
        for sub in self.jobs:
            job = records.get(sub.job_id)
            if job is None:
                problems["lost"] += 1
                continue
            if job["status"] not in _TERMINAL:
                problems["stuck"] += 1
                continue
            code = (job.get("error") or {}).get("code", "")
            statuses[f"{job['status']}{'/' + code if code else ''}"] += 1
            if code == "max_attempts_exceeded" and not self._legitimate(job, kills):
                problems["illegitimate failures"] += 1
            elif job["status"] != "succeeded" and code != "max_attempts_exceeded":
                problems["failed otherwise"] += 1
            if self.done_seen[sub.job_id] > 1:
                problems["results written more than once"] += 1
        problems.update(self._check_webhooks(records))
        problems.update(self._check_streams(records))
        problems.update(self._check_batch(api))
        longest = max((age for _, age in self.queued_ages), default=0.0)
        if longest > QUEUED_BOUND_S:
            problems["queued past the bound with a healthy worker"] += 1
        table = {
            "seed": self.seed,
            "minutes": self.minutes,
            "faults": dict(Counter(f.kind for f in self.faults)),
            "submitted": len(self.jobs),
            "by status": dict(statuses),
            "streams followed": sum(1 for s in self.streams.values() if s.done),
            "of them reset (a re-run wrote otherwise)": sum(
                1 for s in self.streams.values() if s.done and s.resets
            ),
            "webhook events delivered": len(self.receiver.delivered),
            "batch lines": self.batch_lines,
            "longest queued with a healthy worker (s)": round(longest, 1),
            "its bound (s)": QUEUED_BOUND_S,
            **{name: problems.get(name, 0) for name in _PROBLEMS},
        }
        print(json.dumps({"timeline": [f.__dict__ for f in self.faults]}, indent=None))
        width = max(len(k) for k in table)
        for key, value in table.items():
            print(f"{key:<{width}}  {value}")
        self.table = table
        return not any(problems.values())

    def _legitimate(self, job: dict[str, Any], kills: list[Fault]) -> bool:
        """A max_attempts_exceeded is legitimate only if, while the job lived, at least as
        many worker SIGKILLs happened as it had attempts (each counted attempt then may have
        ended in one)."""
        created = _load_time(job["created_at"], self)
        finished = _load_time(job["finished_at"], self)
        during = [f for f in kills if created - 1 <= f.at <= finished + 1]
        return len(during) >= job["attempts"]

    def _check_webhooks(self, records: dict[str, dict[str, Any] | None]) -> Counter[str]:
        problems: Counter[str] = Counter()
        ids_per_job: defaultdict[str, set[str]] = defaultdict(set)
        repeats: Counter[str] = Counter()
        with self.receiver.lock:
            delivered = list(self.receiver.delivered)
        seen: set[str] = set()
        for hook_id, kind, job_id, at in delivered:
            if kind != "job.completed":
                continue
            ids_per_job[job_id].add(hook_id)
            if hook_id in seen and not self._in_webhook_window(at):
                repeats[hook_id] += 1
            seen.add(hook_id)
        for sub in self.jobs:
            job = records.get(sub.job_id)
            if not sub.webhook or job is None or job["status"] not in _TERMINAL:
                continue
            count = len(ids_per_job.get(sub.job_id, ()))
            if count == 0:
                problems["completed webhooks missing"] += 1
            elif count > 1:
                problems["double webhooks"] += 1
        problems["repeat deliveries outside the window"] = sum(repeats.values())
        return problems

    def _in_webhook_window(self, at: float) -> bool:
        """A repeat delivery of one webhook-id is allowed only where docs/webhooks.md says:
        the webhook worker died between the receiver's 2xx and recording it (a restart of it,
        or of Redis, within the last 30 s)."""
        when = at - (time.time() - self._now())  # wall time to load time
        return any(
            f.kind in ("webhooks", "redis") and f.at - 1 <= when <= f.ended + 30
            for f in self.faults
        )

    def _check_streams(self, records: dict[str, dict[str, Any] | None]) -> Counter[str]:
        problems: Counter[str] = Counter()
        for job_id, stream in self.streams.items():
            job = records.get(job_id)
            if job is None or stream.done is None:
                problems["streams not followed to their end"] += 1
                continue
            final = (job.get("result") or {}).get("text") or (job.get("error") or {}).get("text")
            if "".join(stream.deltas) != (final or ""):
                problems["streams unequal to the final text"] += 1
                _log(
                    f"stream {job_id} (attempts {job.get('attempts')}, resets {stream.resets}): "
                    f"{''.join(stream.deltas)!r} != {final!r}"
                )
        return problems

    def _check_batch(self, api: httpx.Client) -> Counter[str]:
        problems: Counter[str] = Counter()
        if not self.batch_id:
            problems["openai batch not created"] += 1
            return problems
        deadline = time.monotonic() + 300
        while True:
            batch = api.get(f"/v1/batches/{self.batch_id}").json()
            if batch["status"] in ("completed", "failed", "expired", "cancelled"):
                break
            if time.monotonic() > deadline:
                problems["openai batch stuck"] += 1
                return problems
            time.sleep(2)
        answered: Counter[str] = Counter()
        for key in ("output_file_id", "error_file_id"):
            if batch.get(key):
                content = api.get(f"/v1/files/{batch[key]}/content").text
                answered.update(json.loads(line)["custom_id"] for line in content.splitlines())
        problems["batch lines answered twice"] = sum(1 for n in answered.values() if n > 1)
        problems["batch lines unanswered"] = self.batch_lines - len(answered)
        return problems

    def stop(self) -> None:
        self.closing.set()
        if self._supervisor is not None:  # its round in progress ends
            self._supervisor.join(60)
        for proxy in self.proxies.values():
            proxy.restore()
        self.stack.stop()
        for proxy in self.proxies.values():
            proxy.close()
        self.receiver.close()


_PROBLEMS = [
    "lost",
    "stuck",
    "illegitimate failures",
    "failed otherwise",
    "results written more than once",
    "double webhooks",
    "completed webhooks missing",
    "repeat deliveries outside the window",
    "streams not followed to their end",
    "streams unequal to the final text",
    "batch lines answered twice",
    "batch lines unanswered",
    "queued past the bound with a healthy worker",
]


def _load_time(stamp: str, soak: Soak) -> float:
    from datetime import datetime

    wall = datetime.fromisoformat(stamp).timestamp()
    return wall - (time.time() - soak._now())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    workdir = args.workdir or Path(f"/tmp/structq-chaos-{seed}")
    soak = Soak(workdir, seed, args.minutes)
    try:
        ok = soak.run()
    finally:
        soak.stop()
    print(f"chaos: {'passed' if ok else 'FAILED'} (seed {seed}; logs in {workdir})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
