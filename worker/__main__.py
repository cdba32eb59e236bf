"""``python -m worker``: a Celery worker with the options a vLLM engine needs.

Equivalent to ``celery -A worker.app worker --pool threads --concurrency 1 -Q
structq.worker.$STRUCTQ_WORKER_ID``: the worker takes its model's job messages itself (see
``worker.intake``). The guard below matters: vLLM spawns processes that import the main module
again.

``python -m worker check`` (``--webhooks`` for the webhook worker) is the probe: exit 0 when
this worker's announcement key is in Redis (the engine has loaded and its heartbeat is
fresh), 1 otherwise. The worker is found by STRUCTQ_WORKER_ID (STRUCTQ_WEBHOOK_WORKER_ID)
when set (set it to the pod or container name), else by this host's name, as the default
worker id starts with it.
"""

from __future__ import annotations

import sys


def main() -> None:
    from worker.app import app, exit_code, settings, worker_queue

    app.worker_main(
        [
            # No banner on stdout: the logs are one JSON object per line.
            *(["--quiet"] if settings.log_format == "json" else []),
            "worker",
            "--pool=threads",
            "--concurrency=1",
            f"--queues={worker_queue(settings)}",
            f"--hostname=structq-{settings.worker_id}@%h",
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
        ]
    )
    # Non-zero after the engine died: the supervisor must start a fresh worker.
    sys.exit(exit_code())


def check(webhooks: bool = False) -> int:
    """0 when this host's (or STRUCTQ_WORKER_ID's) worker has announced itself, else 1."""
    import fnmatch
    import os
    import socket

    import redis

    from shared.keys import WEBHOOK_WORKER_PREFIX
    from shared.redis_pools import sync_client
    from shared.settings import CommonSettings
    from shared.workers import live_workers_sync

    settings = CommonSettings()
    worker_id = os.environ.get("STRUCTQ_WEBHOOK_WORKER_ID" if webhooks else "STRUCTQ_WORKER_ID")
    pattern = worker_id or f"{socket.gethostname()}-*"
    client = sync_client(settings.redis_url, timeout_s=5)
    try:
        if webhooks:
            keys = client.scan_iter(match=f"{WEBHOOK_WORKER_PREFIX}{pattern}", count=1000)
            found = next((k.decode() for k in keys), None)
        else:
            names = [w.worker_id for w in live_workers_sync(client)]
            found = next((name for name in names if fnmatch.fnmatchcase(name, pattern)), None)
    except redis.RedisError as exc:
        print(f"check: Redis unreachable: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    if found is None:
        print(f"check: no announcement of {pattern} in Redis", file=sys.stderr)
        return 1
    print(f"check: {found} is up")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["check"]:
        sys.exit(check(webhooks="--webhooks" in sys.argv[2:]))
    main()
