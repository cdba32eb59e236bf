"""``python -m worker``: a Celery worker with the options a vLLM engine needs.

Equivalent to ``celery -A worker.app worker --pool threads --concurrency $STRUCTQ_MAX_INFLIGHT
-Q structq.jobs.$STRUCTQ_MODEL``. The guard below matters: vLLM spawns processes that import
the main module again.
"""

from __future__ import annotations


def main() -> None:
    from shared.keys import queue_name
    from worker.app import app, settings

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


if __name__ == "__main__":
    main()
