"""``python -m worker``: a Celery worker with the options a vLLM engine needs.

Equivalent to ``celery -A worker.app worker --pool threads --concurrency $STRUCTQ_MAX_INFLIGHT
-Q structq.jobs.$STRUCTQ_MODEL``. The guard below matters: vLLM spawns processes that import
the main module again.

``python -m worker check`` (``--webhooks`` for the webhook worker) is the probe: exit 0 when
this worker's announcement key is in Redis (the engine has loaded and its heartbeat is
fresh), 1 otherwise. The worker is found by STRUCTQ_WORKER_ID (STRUCTQ_WEBHOOK_WORKER_ID)
when set (set it to the pod or container name), else by this host's name, as the default
worker id starts with it.
"""

from __future__ import annotations

import sys


def main() -> None:
    from shared.keys import queue_name
    from worker.app import app, exit_code, settings

    app.worker_main(
        [
            "worker",
            "--pool=threads",
            f"--concurrency={settings.max_inflight}",
            f"--queues={queue_name(settings.model)}",
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
    import os
    import socket

    import redis

    from shared.keys import WEBHOOK_WORKER_PREFIX, WORKER_PREFIX
    from shared.settings import CommonSettings

    settings = CommonSettings()
    prefix = WEBHOOK_WORKER_PREFIX if webhooks else WORKER_PREFIX
    worker_id = os.environ.get("STRUCTQ_WEBHOOK_WORKER_ID" if webhooks else "STRUCTQ_WORKER_ID")
    pattern = f"{prefix}{worker_id}" if worker_id else f"{prefix}{socket.gethostname()}-*"
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        found = next(iter(client.scan_iter(match=pattern, count=1000)), None)
    except redis.RedisError as exc:
        print(f"check: Redis unreachable: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    if found is None:
        print(f"check: no announcement {pattern} in Redis", file=sys.stderr)
        return 1
    print(f"check: {found.decode()} is up")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["check"]:
        sys.exit(check(webhooks="--webhooks" in sys.argv[2:]))
    main()
