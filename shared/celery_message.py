"""Celery task messages (protocol 2), written by the gateway without a Celery producer.

The gateway stores a job and enqueues its task in one atomic Redis script, so a job is never
stored without its message nor enqueued without its record, and the async handler never
blocks on a synchronous Celery publish. The envelope is exactly what
``celery.Celery.send_task`` writes for the Redis transport (see
``tests/shared/test_celery_message.py``, which compares the two), and the worker is a
plain Celery worker that consumes it.
"""

from __future__ import annotations

import base64
import json
import os
import socket

from shared.keys import TASK_NAME

__all__ = ["task_message"]

_ORIGIN = f"structq-gateway@{socket.gethostname()}"
# The task's (args, kwargs, embed) triple; embed carries no callbacks, chains or chords.
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def task_message(
    job_id: str,
    queue: str,
    *,
    task_id: str | None = None,
    priority: int = 0,
    task: str = TASK_NAME,
) -> str:
    """The JSON envelope Kombu's Redis transport expects on the queue's list.

    ``task_id`` (also the delivery tag) must be unique among messages in flight; by default it
    is the job id, which is, as long as a job has one message at a time.
    """
    task_id = task_id or job_id
    body = json.dumps([[job_id], {}, _EMBED]).encode()
    return json.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "lang": "py",
                "task": task,
                "id": task_id,
                "shadow": None,
                "eta": None,
                "expires": None,
                "group": None,
                "group_index": None,
                "retries": 0,
                "timelimit": [None, None],
                "root_id": task_id,
                "parent_id": None,
                "argsrepr": repr([job_id]),
                "kwargsrepr": "{}",
                "origin": f"{_ORIGIN}:{os.getpid()}",
                "ignore_result": True,
                "replaced_task_nesting": 0,
                "stamped_headers": None,
                "stamps": {},
            },
            "properties": {
                "correlation_id": task_id,
                "reply_to": "",
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": priority,
                "body_encoding": "base64",
                "delivery_tag": task_id,
            },
        }
    )
