"""``python -m worker``: a Celery worker with the options a vLLM engine needs.

Equivalent to ``celery -A worker.app worker --pool threads --concurrency $STRUCTQ_MAX_INFLIGHT
-Q structq.jobs.$STRUCTQ_MODEL``. The guard below matters: vLLM spawns processes that import
the main module again.
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


if __name__ == "__main__":
    main()
