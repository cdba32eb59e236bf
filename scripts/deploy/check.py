"""``make deploy-check``: the deployment run for real on this host, with podman.

From a clean state: the stand-in base images (``scripts.deploy.standins``, built once and
kept), the gateway and CPU worker images built from ``api/Dockerfile`` and
``worker/Dockerfile`` unchanged, and the compose file's ``cpu`` profile brought up by
podman-compose reading the real ``docker-compose.yml``, with generated secrets, the gateway
published on 127.0.0.1 only, and the webhook allow-list set to the compose network. Then, from
the host, each phase timed and printed: health, a job of each output type through the gateway
container, a webhook to a receiver on the host, an openai SDK call, the Redis container
restarted mid-burst (nothing lost), the worker container's main process SIGKILLed mid-job (the
restart policy brings it back; the job completes once). Then the same with the ``ha`` profile
too (a replica and three Sentinels, everything connecting through the Sentinels): the primary's
process SIGKILLed mid-burst, the replica promoted, every job finishes once. Containers,
volumes and the network are removed at the end; the images are kept for the next run.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from scripts.deploy import standins
from scripts.receiver import Receiver
from scripts.seed_jobs import SEED_JOBS

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "structq-check"
IMAGES = {
    "structq-api": ("api/Dockerfile", None),
    "structq-worker:cpu": ("worker/Dockerfile", "cpu"),
}
# Room for the stand-ins, both images (the worker's holds torch and vLLM) and their build.
MIN_FREE_GB = 30
TOOLS = Path.home() / ".cache/structq/deploy-tools"
PODMAN_COMPOSE = "podman-compose==1.6.0"
MODEL = "SmolLM2-135M-Instruct"


def phase(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            print(f"==> {name}", flush=True)
            started = time.monotonic()
            out = fn(*args, **kwargs)
            print(f"    {name}: {time.monotonic() - started:.0f} s", flush=True)
            return out

        return run

    return wrap


def sh(*args: str, check: bool = True, **kw: Any) -> str:
    """``args`` run; their stdout. With ``check``, a failure ends the check with its output."""
    proc = subprocess.run(args, text=True, capture_output=True, **kw)
    if check and proc.returncode != 0:
        raise SystemExit(
            f"deploy-check: {' '.join(args)} failed ({proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc.stdout


def _starts(*ulimits: str) -> bool:
    args = [arg for limit in ulimits for arg in ("--ulimit", limit)]
    run = subprocess.run(
        ["podman", "run", "--rm", *args, standins.BASE, "true"], capture_output=True, text=True
    )
    return run.returncode == 0


@phase("podman: runtime and ulimits")
def configure_podman() -> None:
    """runc as the runtime (crun refuses this kernel's hybrid cgroup layout), and containers'
    default ulimits within what this host lets a process set (podman's defaults, e.g.
    nproc=4194304, are refused: `error setting rlimit`)."""
    for name, seconds in standins.build_base().items():  # what the tries below start
        print(f"    imported {name} in {seconds:.0f} s")
    conf = Path("/etc/containers/containers.conf")
    conf.parent.mkdir(parents=True, exist_ok=True)
    soft_nofile, hard_nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    _, hard_nproc = resource.getrlimit(resource.RLIMIT_NPROC)
    nofile = f"nofile={hard_nofile}:{hard_nofile}"
    # The hard limit is not always settable in a container (here: 96370 refused, 32768 not).
    tries = [n for n in (hard_nproc, 65536, 32768, 16384, 4096) if n <= hard_nproc]
    conf.write_text('[engine]\nruntime = "runc"\n')
    nproc = next((f"nproc={n}:{n}" for n in tries if _starts(nofile, f"nproc={n}:{n}")), None)
    if nproc is None:
        raise SystemExit("deploy-check: no container starts here, whatever its ulimits")
    conf.write_text(
        "# Written by make deploy-check (scripts/deploy/check.py).\n"
        f'[containers]\ndefault_ulimits = ["{nofile}", "{nproc}"]\n\n[engine]\nruntime = "runc"\n'
    )
    print(f"    {conf}: runtime runc, ulimits {nofile} {nproc}")


@phase("preflight: disk, podman, runc, debootstrap, podman-compose")
def preflight() -> Path:
    free_gb = shutil.disk_usage("/var/lib").free / 2**30
    if free_gb < MIN_FREE_GB:
        raise SystemExit(f"deploy-check: {free_gb:.0f} GB free, {MIN_FREE_GB} GB needed")
    print(f"    {free_gb:.0f} GB free")
    missing = [t for t in ("podman", "runc", "debootstrap") if shutil.which(t) is None]
    if missing:
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        sh(*sudo, "apt-get", "update", "-qq")
        sh(
            *sudo,
            "env",
            "DEBIAN_FRONTEND=noninteractive",
            "apt-get",
            "install",
            "-y",
            "-qq",
            "podman",
            "runc",
            "debootstrap",
        )
    compose = TOOLS / "bin/podman-compose"
    if not compose.exists():
        sh(sys.executable, "-m", "venv", str(TOOLS))
        sh(str(TOOLS / "bin/pip"), "install", "-q", PODMAN_COMPOSE)
    print(
        "    " + sh("podman", "--version").strip() + "; " + sh("runc", "--version").splitlines()[0]
    )
    print("    " + sh(str(compose), "--version").splitlines()[0])
    return compose


@phase("stand-in base images (built once, then kept)")
def base_images() -> None:
    for name, seconds in standins.build_all().items():
        print(f"    built {name} in {seconds:.0f} s")
    for standin in standins.STANDINS:
        print(f"    {standin.name} = {standin.what}")


def _build(tag: str, dockerfile: str, target: str | None) -> None:
    args = [
        "podman",
        "build",
        "--network",
        "host",
        *standins.host_pip_volumes(),
        "-f",
        dockerfile,
        "-t",
        tag,
    ]
    if target:
        args += ["--target", target]
    before = _inspect(tag, ".Id", check=False)
    started = time.monotonic()
    sh(*args, str(ROOT), cwd=ROOT)
    if before and before != _inspect(tag, ".Id"):
        # The image this build replaced (5 GB for the worker's) goes, unless something uses it.
        sh("podman", "rmi", before, check=False)
    size = _inspect(tag, ".Size")
    print(f"    {tag}: built in {time.monotonic() - started:.0f} s, {int(size) / 1e9:.2f} GB")


@phase("images from api/Dockerfile and worker/Dockerfile (target cpu)")
def images(only: list[str] | None = None) -> None:
    for tag, (dockerfile, target) in IMAGES.items():
        if only is None or tag in only:
            _build(tag, dockerfile, target)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def secrets() -> tuple[str, dict[str, str]]:
    """An admin key and the .env holding its entry, a webhook secret and the published port."""
    out = sh(sys.executable, "-m", "api.keys", "create", "deploy-check", "--admin", cwd=ROOT)
    key = out.split("shown once): ")[1].split()[0]
    entry = out.strip().splitlines()[-1]
    env = {
        "STRUCTQ_API_KEYS": f"[{entry}]",
        "STRUCTQ_WEBHOOK_SECRET": "whsec_" + base64.b64encode(os.urandom(32)).decode(),
        "STRUCTQ_PUBLISH_PORT": f"127.0.0.1:{free_port()}",
    }
    return key, env


NETWORK = f"{PROJECT}_default"
SUBNET = "10.89.77.0/24"  # the compose network, made first so the allow-list can name it
HOST_ON_NETWORK = "10.89.77.1"  # the host's address on it (its gateway)


def _project_containers(
    service: str | None = None, *, stopped: bool = True, check: bool = True
) -> list[str]:
    """The names of the check's containers (of ``service`` only; running ones only unless
    ``stopped``)."""
    filters = ["--filter", f"label=com.docker.compose.project={PROJECT}"]
    if service is not None:
        filters += ["--filter", f"label=com.docker.compose.service={service}"]
    every = ["-a"] if stopped else []
    return sh("podman", "ps", *every, *filters, "--format", "{{.Names}}", check=check).split()


def container(service: str) -> str:
    [name] = _project_containers(service)
    return name


def _inspect(name: str, field: str, check: bool = True) -> str:
    """One field of a container or image (``field`` as podman's template, e.g. ``.Id``)."""
    return sh("podman", "inspect", name, "--format", f"{{{{{field}}}}}", check=check).strip()


def _redis_cli(service: str, *args: str) -> str:
    """redis-cli in ``service``'s container; its output ('' when it cannot answer)."""
    return sh("podman", "exec", container(service), "redis-cli", *args, check=False)


class HealthDriver:
    """Runs every container's healthcheck every few seconds: podman's own timers for them are
    systemd units, and this host has no systemd (podman-compose's `service_healthy` waits on
    the health status they keep)."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthDriver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.wait(3):
            for name in _project_containers(stopped=False, check=False):
                subprocess.run(
                    ["podman", "healthcheck", "run", name],
                    capture_output=True,
                    timeout=60,
                    check=False,
                )


@contextlib.contextmanager
def stack(compose: Path, env: dict[str, str], profiles: list[str]) -> Iterator[list[str]]:
    """The compose file's services of ``profiles`` up (and down, with their volumes, after)."""
    with tempfile.TemporaryDirectory(prefix="structq-deploy-") as tmp, HealthDriver():
        env_file = Path(tmp) / "check.env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        base = [
            str(compose),
            "-p",
            PROJECT,
            "--env-file",
            str(env_file),
            "-f",
            str(ROOT / "docker-compose.yml"),
        ]
        for profile in profiles:
            base += ["--profile", profile]
        sh("podman", "network", "rm", "-f", NETWORK, check=False)
        sh("podman", "network", "create", "--subnet", SUBNET, "--gateway", HOST_ON_NETWORK, NETWORK)
        try:
            print(f"==> compose up: profiles {', '.join(profiles)}", flush=True)
            started = time.monotonic()
            sh(*base, "up", "-d", cwd=ROOT)
            print(f"    compose up: {time.monotonic() - started:.0f} s", flush=True)
            yield base
        finally:
            sh(*base, "down", "-v", "-t", "10", check=False, cwd=ROOT)
            sh("podman", "network", "rm", "-f", NETWORK, check=False)


def _crash_loop() -> None:
    """Ends the check when a service keeps dying (the restart policy starts it again and
    again: the gateway image missing a module, the worker's engine unable to start), with the
    end of its log, rather than waiting out the readiness timeout."""
    for name in _project_containers():
        restarts = _inspect(name, ".RestartCount", check=False)
        if int(restarts or 0) >= 3:
            log = subprocess.run(
                ["podman", "logs", "--tail", "20", name], capture_output=True, text=True
            )
            raise SystemExit(
                f"deploy-check: {name} restarted {restarts} times; its log ends:\n"
                + (log.stdout + log.stderr)[-4000:]
            )


def wait_ready(api: httpx.Client, timeout_s: float) -> None:
    """Until the gateway answers /readyz and a worker of the model has announced itself."""
    deadline = time.monotonic() + timeout_s
    while True:
        _crash_loop()
        with contextlib.suppress(httpx.HTTPError):
            ready = api.get("/readyz").status_code == 200
            models = api.get("/v1/models").json().get("data", []) if ready else []
            if any(m.get("workers", 0) > 0 for m in models):
                return
        if time.monotonic() > deadline:
            raise SystemExit(f"deploy-check: no ready worker after {timeout_s:.0f} s")
        time.sleep(2)


def submit(api: httpx.Client, body: dict[str, Any]) -> str:
    response = api.post("/v1/jobs", json=body)
    if response.status_code != 202:
        raise SystemExit(f"deploy-check: POST /v1/jobs {response.status_code}: {response.text}")
    return str(response.json()["id"])


def finished(api: httpx.Client, ids: list[str], timeout_s: float) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    done: dict[str, dict[str, Any]] = {}
    while len(done) < len(ids):
        for job_id in ids:
            if job_id in done:
                continue
            with contextlib.suppress(httpx.HTTPError):
                response = api.get(f"/v1/jobs/{job_id}")
                if response.status_code == 200 and response.json()["status"] in TERMINAL:
                    done[job_id] = response.json()
        if time.monotonic() > deadline:
            raise SystemExit(f"deploy-check: {len(ids) - len(done)} jobs unfinished")
        time.sleep(1)
    return done


def expect(ok: bool, what: str) -> None:
    if not ok:
        raise SystemExit(f"deploy-check: FAILED: {what}")
    print(f"    ok: {what}", flush=True)


TERMINAL = {"succeeded", "failed", "cancelled", "expired"}


@phase("jobs of each output type through the gateway container")
def output_types(api: httpx.Client) -> None:
    ids = {label: submit(api, body) for label, body in SEED_JOBS}
    jobs = finished(api, list(ids.values()), 600)
    for label, job_id in ids.items():
        job = jobs[job_id]
        expect(
            job["status"] == "succeeded",
            f"{label}: {job['status']} {job.get('error') or ''}"
            f" -> {str((job.get('result') or {}).get('value', ''))[:60]!r}",
        )


@phase("a webhook to a receiver on the host")
def webhook(api: httpx.Client, receiver: Receiver) -> None:
    job_id = submit(
        api,
        {
            "prompt": "Say hi.",
            "sampling": {"max_tokens": 8},
            "webhook": {"url": receiver.url("/hook")},
        },
    )
    [hit] = receiver.wait("/hook", 1, timeout_s=120)
    event = json.loads(hit.body)
    expect(
        event["type"] == "job.completed" and event["data"]["id"] == job_id,
        f"job.completed for {job_id} signed {hit.headers.get('webhook-signature', '')[:12]}...",
    )


@phase("the openai SDK against the gateway container")
def openai_call(url: str, key: str) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key)
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is 2+2?"}], max_tokens=16
    )
    expect(
        completion.choices[0].message.content is not None,
        f"chat.completions: {completion.choices[0].message.content!r}",
    )


def burst(api: httpx.Client, n: int, name: str, tokens: int = 64) -> list[str]:
    return [
        submit(
            api,
            {
                "prompt": f"{name} {i}: once upon a time",
                "sampling": {"max_tokens": tokens, "ignore_eos": True, "temperature": 0},
            },
        )
        for i in range(n)
    ]


@phase("the Redis container restarted mid-burst")
def redis_restart(api: httpx.Client) -> None:
    ids = burst(api, 30, "redis")
    time.sleep(3)
    sh("podman", "restart", "-t", "10", container("redis"))
    jobs = finished(api, ids, 900)
    statuses = sorted({job["status"] for job in jobs.values()})
    expect(statuses == ["succeeded"], f"{len(ids)} jobs across the restart: {statuses}")


@phase("the worker container's main process SIGKILLed mid-job")
def worker_kill(api: httpx.Client, receiver: Receiver) -> None:
    name = container("worker-cpu")
    restarts = int(_inspect(name, ".RestartCount") or 0)
    job_id = submit(
        api,
        {
            "prompt": "A long story:",
            "sampling": {"max_tokens": 400, "ignore_eos": True},
            "webhook": {"url": receiver.url("/kill")},
        },
    )
    deadline = time.monotonic() + 300
    while api.get(f"/v1/jobs/{job_id}").json()["status"] != "running":
        if time.monotonic() > deadline:
            raise SystemExit("deploy-check: the job never started")
        time.sleep(0.5)
    time.sleep(2)
    pid = _inspect(name, ".State.Pid")
    os.kill(int(pid), 9)  # as the OOM killer would
    job = finished(api, [job_id], 900)[job_id]
    after = int(_inspect(name, ".RestartCount") or 0)
    expect(after > restarts, f"the restart policy brought {name} back ({restarts} -> {after})")
    expect(
        job["status"] == "succeeded" and job["attempts"] == 2,
        f"the killed job {job['status']} on attempt {job['attempts']}",
    )
    time.sleep(10)  # any second event would be out by now
    deliveries = receiver.to("/kill")
    hooks = _completed_hooks(deliveries)
    ids = hooks.get(job_id, set())
    expect(
        set(hooks) == {job_id}
        and len(ids) == 1
        and all(json.loads(r.body)["type"] == "job.completed" for r in deliveries),
        f"one job.completed webhook ({len(deliveries)} deliveries, {len(ids)} id)",
    )


def _completed_hooks(deliveries: list[Any]) -> dict[str, set[str]]:
    """Per job, the webhook ids of the ``job.completed`` events delivered (a retry of one
    event keeps its id)."""
    by_job: dict[str, set[str]] = {}
    for request in deliveries:
        event = json.loads(request.body)
        if event["type"] == "job.completed":
            by_job.setdefault(event["data"]["id"], set()).add(request.headers["webhook-id"])
    return by_job


SENTINEL_URL = "redis+sentinel://sentinel-1:26379,sentinel-2:26379,sentinel-3:26379/structq/0"


def _primary() -> str:
    """The primary's name as the first Sentinel knows it ('' while it cannot say)."""
    out = _redis_cli("sentinel-1", "-p", "26379", "sentinel", "get-master-addr-by-name", "structq")
    return out.split()[0] if out.split() else ""


def _replica_in_sync() -> bool:
    out = _redis_cli("redis", "info", "replication")
    return "connected_slaves:1" in out and "state=online" in out


@phase("the ha profile: the Redis primary SIGKILLed mid-burst, the replica promoted")
def failover(api: httpx.Client, receiver: Receiver) -> None:
    deadline = time.monotonic() + 120
    while _primary() != "redis" or not _replica_in_sync():
        if time.monotonic() > deadline:
            raise SystemExit("deploy-check: the Sentinels never agreed on a synced primary")
        time.sleep(1)
    hook = receiver.url("/ha")
    ids = [
        submit(
            api,
            {
                "prompt": f"ha {i}: once upon a time",
                "sampling": {"max_tokens": 64, "ignore_eos": True, "temperature": 0},
                "webhook": {"url": hook},
            },
        )
        for i in range(30)
    ]
    # Every job was acknowledged at least this long before the kill: far beyond one host's
    # replication lag, so docs/lifecycle.md says none of them may be lost.
    time.sleep(3)
    # `podman kill`: SIGKILL, and the restart policy leaves it down (podman-run(1)), as a dead
    # node stays down; killed from the host instead, it was back within a second, before the
    # Sentinels' 5 s down-after, and no failover happened.
    killed_at = time.monotonic()
    sh("podman", "kill", "--signal", "KILL", container("redis"))
    while _primary() in ("redis", ""):
        if time.monotonic() - killed_at > 120:
            raise SystemExit("deploy-check: no failover within 120 s")
        time.sleep(0.5)
    expect(True, f"the Sentinels promoted {_primary()} {time.monotonic() - killed_at:.0f} s after")
    jobs = finished(api, ids, 900)
    statuses = sorted({job["status"] for job in jobs.values()})
    expect(statuses == ["succeeded"], f"{len(ids)} jobs across the failover: {statuses}, 0 lost")
    after = finished(api, burst(api, 1, "after the failover"), 300)
    expect(
        [job["status"] for job in after.values()] == ["succeeded"],
        "a job submitted after the failover",
    )

    def all_completed(got: list[Any]) -> bool:
        return {json.loads(r.body)["data"]["id"] for r in got} >= set(ids)

    receiver.wait_until("/ha", all_completed, timeout_s=120)
    time.sleep(10)  # any second event would be out by now
    by_job = _completed_hooks(receiver.to("/ha"))
    expect(
        sorted(len(hooks) for hooks in by_job.values()) == [1] * len(ids),
        f"one job.completed webhook per job ({len(by_job)} jobs)",
    )
    # The old primary started again, as an operator or an orchestrator would: the Sentinels
    # make it a replica of the new one.
    sh("podman", "start", container("redis"))
    deadline = time.monotonic() + 120
    role = ""
    while "role:slave" not in role:
        if time.monotonic() > deadline:
            raise SystemExit(f"deploy-check: the old primary never became a replica: {role}")
        time.sleep(1)
        role = _redis_cli("redis", "info", "replication")
    expect(True, f"the old primary, started again, is a replica of {_primary()}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only-images", action="store_true", help="stop after the builds")
    parser.add_argument("--no-ha", action="store_true", help="skip the ha profile's failover")
    args = parser.parse_args(argv)
    started = time.monotonic()
    compose = preflight()
    configure_podman()
    base_images()
    images()
    if args.only_images:
        return
    key, env = secrets()
    env["STRUCTQ_WEBHOOK_ALLOWED_NETWORKS"] = json.dumps([SUBNET])
    url = "http://" + env["STRUCTQ_PUBLISH_PORT"]
    with (
        stack(compose, env, ["cpu"]),
        Receiver(HOST_ON_NETWORK) as receiver,
        httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {key}"}) as api,
    ):
        phase("health: the gateway ready, the worker's engine up")(wait_ready)(api, 1200)
        output_types(api)
        webhook(api, receiver)
        openai_call(url, key)
        redis_restart(api)
        worker_kill(api, receiver)
    if not args.no_ha:
        ha_env = {**env, "STRUCTQ_REDIS_URL": SENTINEL_URL}
        with (
            stack(compose, ha_env, ["cpu", "ha"]),
            Receiver(HOST_ON_NETWORK) as receiver,
            httpx.Client(
                base_url=url, timeout=30, headers={"Authorization": f"Bearer {key}"}
            ) as api,
        ):
            phase("health, through the Sentinels")(wait_ready)(api, 1200)
            failover(api, receiver)
    print(f"deploy-check: passed in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
