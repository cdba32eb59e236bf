"""A whole structq on this machine: Redis, one worker, the gateway, as child processes.

Used by the demo, the end-to-end tests and the benchmark. Each child runs in its own session,
so stopping can find every process it left, vLLM's EngineCore included; :meth:`Stack.stop`
shuts them down the way an operator would (SIGTERM, then SIGKILL after a grace period) and
reports any process still alive afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import httpx
import redis

from shared.keys import WEBHOOK_WORKER_PREFIX
from shared.records import WorkerAnnouncement
from shared.redis_pools import sync_client
from shared.workers import live_workers_sync

__all__ = ["Stack", "StackError", "free_port", "start_prometheus", "start_redis"]

_ROOT = Path(__file__).resolve().parent.parent


class StackError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _metrics_port() -> dict[str, str]:
    """A worker's metrics on a free port (two stacks on one machine never share one)."""
    return {"STRUCTQ_METRICS_PORT": str(free_port())}


def _log(msg: str) -> None:
    print(f"[stack] {msg}", file=sys.stderr, flush=True)


def _session_members(sid: int) -> list[int]:
    """Live processes in session ``sid`` (Linux /proc)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command name (which may hold spaces): state ppid pgrp session ...
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == sid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


class _Child:
    """A child process in its own session, with its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.metrics_url = ""  # a worker's: where it serves its Prometheus metrics
        self._log_file = log_path.open("ab")
        self.proc = subprocess.Popen(
            argv,
            cwd=_ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace_s: float) -> int | None:
        """SIGTERM, wait up to ``grace_s``, then SIGKILL the whole session; the exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                _log(f"{self.name} still running {grace_s:.0f}s after SIGTERM; killing it")
                self.kill()
        self._log_file.close()
        return self.proc.returncode

    def kill(self) -> None:
        for pid in _session_members(self.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait()

    def leftovers(self, wait_s: float) -> list[int]:
        """Processes of this child's session still alive after waiting up to ``wait_s``."""
        deadline = time.monotonic() + wait_s
        while (members := _session_members(self.proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        return members


def start_redis(
    workdir: Path,
    port: int | None = None,
    durable: bool = False,
    fsync: str = "everysec",
    replica_of: int | None = None,
) -> tuple[_Child, str]:
    """A Redis server on a free local port (or ``port``), its files in ``workdir/redis-<port>``.
    ``durable``: as structq runs it in production, with an append-only file fsynced ``fsync``
    (``everysec`` or ``always``) and no eviction (a full Redis refuses writes rather than drop
    jobs); else no persistence at all. ``replica_of``: a replica of the local Redis on that
    port."""
    server = shutil.which("redis-server")
    if server is None:
        raise StackError("redis-server is not installed (Debian: apt-get install redis-server)")
    port = port or free_port()
    data = workdir / f"redis-{port}"
    data.mkdir(parents=True, exist_ok=True)
    child = _Child(
        "redis",
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            *(
                ["--appendonly", "yes", "--appendfsync", fsync]
                if durable
                else ["--appendonly", "no"]
            ),
            *(["--replicaof", "127.0.0.1", str(replica_of)] if replica_of else []),
            "--maxmemory-policy",
            "noeviction",
            "--dir",
            str(data),
        ],
        os.environ,
        data / "redis.log",
    )
    url = f"redis://127.0.0.1:{port}/0"
    _wait_for_redis(child, url)
    return child, url


def _wait_for_redis(child: _Child, url: str) -> None:
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return
        except (redis.ConnectionError, redis.BusyLoadingError):
            if not child.alive() or time.monotonic() > deadline:
                raise StackError(f"redis did not start:\n{child.tail()}") from None
            time.sleep(0.05)
        finally:
            client.close()


SENTINEL_SERVICE = "structq"


def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def start_sentinel(workdir: Path, primary_port: int) -> tuple[_Child, int]:
    """A Redis Sentinel on a free local port watching the primary on ``primary_port`` (quorum 2,
    down after 1 s), its config (which it rewrites) in ``workdir/sentinel-<port>``."""
    port = free_port()
    data = workdir / f"sentinel-{port}"
    data.mkdir(parents=True, exist_ok=True)
    conf = data / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {data}\n"
        f"sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {primary_port} 2\n"
        f"sentinel down-after-milliseconds {SENTINEL_SERVICE} 1000\n"
        f"sentinel failover-timeout {SENTINEL_SERVICE} 10000\n"
        f"sentinel parallel-syncs {SENTINEL_SERVICE} 1\n"
    )
    server = shutil.which("redis-sentinel") or shutil.which("redis-server")
    argv = [server, str(conf)] if server.endswith("sentinel") else [server, str(conf), "--sentinel"]
    child = _Child("redis", argv, os.environ, data / "sentinel.log")
    _wait_for_redis(child, f"redis://127.0.0.1:{port}/0")
    return child, port


def start_prometheus(
    workdir: Path,
    targets: Mapping[str, str],
    interval_s: float = 1.0,
    rules: Path | None = None,
) -> tuple[_Child, str]:
    """Debian's Prometheus on a free local port, scraping ``targets`` (job name -> the URL of
    its ``/metrics``) every ``interval_s`` and evaluating ``rules``; its files in
    ``workdir/prometheus``. Returns it and its URL once it is ready."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise StackError("Debian's prometheus package is missing (make setup installs it)")
    data = workdir / "prometheus"
    data.mkdir(parents=True, exist_ok=True)
    scrape = "".join(
        f"  - job_name: {job}\n    static_configs:\n"
        f"      - targets: ['{url.removeprefix('http://').split('/')[0]}']\n"
        for job, url in targets.items()
    )
    rule_files = f"rule_files:\n  - {rules}\n" if rules is not None else ""
    config = data / "prometheus.yml"
    every = f"{round(interval_s * 1000)}ms"  # Prometheus' durations are whole numbers
    config.write_text(
        f"global:\n  scrape_interval: {every}\n  scrape_timeout: {every}\n"
        f"  evaluation_interval: {every}\n{rule_files}scrape_configs:\n{scrape}"
    )
    port = free_port()
    argv = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={data / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    child = _Child("prometheus", argv, os.environ, data / "prometheus.log")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                _log(f"prometheus on {url}")
                return child, url
        except httpx.TransportError:
            pass
        if not child.alive() or time.monotonic() > deadline:
            child.stop(5)
            raise StackError(f"prometheus did not start:\n{child.tail()}")
        time.sleep(0.2)


class Stack:
    """Redis + one worker + the gateway. Use as a context manager, or start()/stop()."""

    def __init__(
        self,
        workdir: Path | None = None,
        env: Mapping[str, str] | None = None,
        worker: bool = True,
        ready_timeout_s: float = 600,
        webhooks: bool = False,
        sentinel: bool = False,
        redis_fsync: str = "everysec",
    ) -> None:
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="structq-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._extra_env = dict(env or {})
        self._with_worker = worker
        self._with_webhooks = webhooks
        self.webhooks: _Child | None = None
        self._ready_timeout_s = ready_timeout_s
        self._children: list[_Child] = []
        self.redis_url = ""
        self.api_url = ""
        self.worker: _Child | None = None
        self.gateway: _Child | None = None
        self._redis: _Child | None = None
        self._sentinel = sentinel
        self._fsync = redis_fsync
        self.redis_port = 0
        # With ``sentinel``: a replica of the primary and three Sentinels watching it; then
        # ``redis_url`` is the Sentinel form every part connects with.
        self.replica: _Child | None = None
        self.replica_port = 0
        self.sentinel_ports: list[int] = []
        self.worker_metrics_url = ""
        self.worker_ready_s = 0.0
        self.webhooks_metrics_url = ""

    # -- lifecycle ------------------------------------------------------------------

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        leftovers = self.stop()
        if leftovers and exc is None:
            raise StackError(f"processes left running after stop: {leftovers}")

    def env(self) -> dict[str, str]:
        return {
            # A local stack for the demo, the tests and the benchmark: no API keys unless the
            # caller's env gives some (a deployment without keys refuses to start).
            "STRUCTQ_INSECURE_NO_AUTH": "true",
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "STRUCTQ_REDIS_URL": self.redis_url,
            **self._extra_env,
        }

    def start(self) -> None:
        """Start everything; if any part fails, stop what did start before raising."""
        try:
            self._redis, self.redis_url = start_redis(self.workdir, durable=True, fsync=self._fsync)
            self.redis_port = _port_of(self.redis_url)
            self._children.append(self._redis)
            if self._sentinel:
                self._start_sentinels()
            _log(f"redis on {self.redis_url}")
            if self._with_worker:
                self.start_worker()
            if self._with_webhooks:
                self.start_webhooks()
            self.start_gateway()
        except BaseException:
            self.stop()
            raise

    def _start_sentinels(self) -> None:
        self.replica, replica_url = start_redis(
            self.workdir, durable=True, fsync=self._fsync, replica_of=self.redis_port
        )
        self.replica_port = _port_of(replica_url)
        self._children.append(self.replica)
        for _ in range(3):
            child, port = start_sentinel(self.workdir, self.redis_port)
            self._children.append(child)
            self.sentinel_ports.append(port)
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        self.redis_url = f"redis+sentinel://{hosts}/{SENTINEL_SERVICE}/0"
        deadline = time.monotonic() + 30
        while self.primary_port() != self.redis_port or not self._replica_in_sync():
            if time.monotonic() > deadline:
                raise StackError("the Sentinels did not agree on the primary in time")
            time.sleep(0.2)

    def primary_port(self) -> int | None:
        """The port of the primary the Sentinels name now (None: none answers)."""
        for port in self.sentinel_ports:
            client = redis.Redis(port=port, socket_timeout=1)
            try:
                address = client.sentinel_get_master_addr_by_name(SENTINEL_SERVICE)
                return int(address[1]) if address else None
            except redis.RedisError:
                continue
            finally:
                client.close()
        return None

    def _replica_in_sync(self) -> bool:
        client = redis.Redis(port=self.replica_port, socket_timeout=1)
        try:
            return client.info("replication").get("master_link_status") == "up"
        except redis.RedisError:
            return False
        finally:
            client.close()

    def kill_primary(self) -> int:
        """SIGKILL the primary Redis (with ``sentinel``); wait until the Sentinels promote the
        replica; the new primary's port."""
        assert self._sentinel and self._redis is not None
        self._redis.kill()
        self._children.remove(self._redis)
        deadline = time.monotonic() + 60
        while (port := self.primary_port()) in (None, self.redis_port):
            if time.monotonic() > deadline:
                raise StackError("no failover within 60 s")
            time.sleep(0.2)
        _log(f"redis primary {self.redis_port} killed; the Sentinels promoted {port}")
        return port

    def restart_redis(self, down_s: float = 0.0, kill: bool = False) -> None:
        """Stop Redis (SIGTERM: it flushes its append-only file; ``kill``: SIGKILL, it writes
        nothing more), keep it down ``down_s``, and start it again on the same port with the same
        files."""
        assert self._redis is not None
        if kill:
            self._redis.kill()
        else:
            self._redis.stop(10)
        self._children.remove(self._redis)
        time.sleep(down_s)
        self._redis, _ = start_redis(
            self.workdir, port=self.redis_port, durable=True, fsync=self._fsync
        )
        self._children.append(self._redis)
        _log(
            f"redis {'killed' if kill else 'stopped'}, {down_s:.0f}s down, restarted on port "
            f"{self.redis_port}"
        )

    def stop_worker(self, sig: int = signal.SIGTERM, timeout_s: float = 120) -> int:
        """Send ``sig`` to the worker process alone and wait for it to exit; its exit code
        (negative: the signal that ended it). Its engine processes are not touched."""
        worker = self.worker
        assert worker is not None
        worker.proc.send_signal(sig)
        code = worker.proc.wait(timeout_s)
        _log(f"worker (pid {worker.proc.pid}) exited with {code} after signal {sig}")
        return code

    def start_worker(
        self, env: Mapping[str, str] | None = None, name: str = "worker", wait: bool = True
    ) -> _Child:
        """A worker with ``env`` on top of the stack's; ready (announced) when it returns, unless
        ``wait`` is False. ``name`` other than "worker" starts one more worker beside the stack's
        own (another pool, or a second worker of a pool): it logs to ``<name>.log``, is stopped
        with the stack, and ``self.worker`` stays the stack's own."""
        started = time.monotonic()
        env = {**self.env(), **_metrics_port(), **(env or {})}
        child = _Child(
            "worker", [sys.executable, "-m", "worker"], env, self.workdir / f"{name}.log"
        )
        child.metrics_url = f"http://127.0.0.1:{env['STRUCTQ_METRICS_PORT']}/metrics"
        self._children.append(child)
        if name == "worker":
            self.worker, self.worker_metrics_url = child, child.metrics_url
        _log(f"{name} starting (pid {child.proc.pid}); log: {child.log_path}")
        if wait:
            self.wait_worker_ready(child)
            ready_s = time.monotonic() - started
            if name == "worker":
                self.worker_ready_s = ready_s
            _log(f"{name} ready in {ready_s:.1f}s")
        return child

    def wait_worker_ready(self, worker: _Child) -> WorkerAnnouncement:
        client = sync_client(self.redis_url)
        deadline = time.monotonic() + self._ready_timeout_s
        while time.monotonic() < deadline:
            for announced in live_workers_sync(client):
                if announced.pid == worker.proc.pid:
                    return announced
            if not worker.alive():
                raise StackError(f"the worker exited during start-up:\n{worker.tail()}")
            time.sleep(0.25)
        raise StackError(
            f"the worker was not ready after {self._ready_timeout_s:.0f}s:\n{worker.tail()}"
        )

    def start_webhooks(self) -> _Child:
        """The webhook worker (no engine); ready once its ready key names its pid."""
        env = {**self.env(), **_metrics_port()}
        self.webhooks_metrics_url = f"http://127.0.0.1:{env['STRUCTQ_METRICS_PORT']}/metrics"
        child = _Child(
            "webhooks",
            [sys.executable, "-m", "worker.webhooks"],
            env,
            self.workdir / "webhooks.log",
        )
        self._children.append(child)
        self.webhooks = child
        client = sync_client(self.redis_url)
        deadline = time.monotonic() + 60
        while True:
            for key in client.scan_iter(f"{WEBHOOK_WORKER_PREFIX}*"):
                raw = client.get(key)
                if raw and json.loads(raw).get("pid") == child.proc.pid:
                    _log(f"webhook worker ready (pid {child.proc.pid})")
                    return child
            if not child.alive() or time.monotonic() > deadline:
                raise StackError(f"the webhook worker did not start:\n{child.tail()}")
            time.sleep(0.1)

    def start_gateway(self) -> _Child:
        self.gateway, self.api_url = self.start_extra_gateway()
        return self.gateway

    def start_extra_gateway(
        self, env: Mapping[str, str] | None = None, name: str = "gateway", port: int = 0
    ) -> tuple[_Child, str]:
        """Another gateway process on this stack's Redis (stopped with the stack), with
        ``env`` on top of the stack's, on ``port`` (0: a free one); returns it and its URL once
        it is ready."""
        port = port or free_port()
        env = {**self.env(), **(env or {}), "STRUCTQ_PORT": str(port), "STRUCTQ_HOST": "127.0.0.1"}
        log_path = self.workdir / f"{name}.log"
        child = _Child("gateway", [sys.executable, "-m", "api"], env, log_path)
        self._children.append(child)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if not child.alive() or time.monotonic() > deadline:
                raise StackError(f"the gateway did not start:\n{child.tail()}")
            time.sleep(0.1)
        _log(f"{name} on {url}")
        return child, url

    def metrics_urls(self) -> dict[str, str]:
        """Where each structq process serves its Prometheus metrics, by a job name."""
        urls = {"gateway": f"{self.api_url}/metrics", "worker": self.worker_metrics_url}
        return {**urls, "webhooks": self.webhooks_metrics_url} if self.webhooks else urls

    def pids(self) -> dict[str, int]:
        """The main process of each part that runs: redis, worker, webhooks, gateway."""
        parts = {
            "redis": self._redis,
            "worker": self.worker,
            "webhooks": self.webhooks,
            "gateway": self.gateway,
        }
        return {name: child.proc.pid for name, child in parts.items() if child and child.alive()}

    def stop(self, worker_grace_s: float = 60) -> dict[str, list[int]]:
        """Stop gateway, worker, then Redis; return any process still alive, by child."""
        order = {"gateway": 10.0, "webhooks": 10.0, "worker": worker_grace_s, "redis": 10.0}
        leftovers: dict[str, list[int]] = {}
        for name in order:
            for child in [c for c in self._children if c.name == name]:
                child.stop(order[name])
                if left := child.leftovers(wait_s=10):
                    leftovers[name] = left
                    child.kill()
        self._children.clear()
        if leftovers:
            _log(f"processes left running after stop (killed now): {leftovers}")
        else:
            _log("stopped; no process left running")
        return leftovers
