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
from functools import lru_cache

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
    body = base64.b64encode(
        b'[["' + _escaped(job_id).encode() + b'"], {}, ' + _EMBED_JSON + b"]"
    ).decode()
    return _template(queue, priority, task) % {
        "body": body,
        "id": _escaped(task_id),
        "argsrepr": _escaped(repr([job_id])),
    }


def _escaped(value: str) -> str:
    """``value`` as it appears between the quotes of a JSON string."""
    return json.dumps(value)[1:-1]


_EMBED_JSON = json.dumps(_EMBED).encode()


@lru_cache(maxsize=1024)
def _template(queue: str, priority: int, task: str) -> str:
    """The envelope for one queue, priority and task, with %-placeholders for what changes per
    message (built once: a job's message is then a string substitution, not a JSON dump)."""
    marks = {name: f"@@{name}@@" for name in ("body", "id", "argsrepr")}
    envelope = json.dumps(
        {
            "body": marks["body"],
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "lang": "py",
                "task": task,
                "id": marks["id"],
                "shadow": None,
                "eta": None,
                "expires": None,
                "group": None,
                "group_index": None,
                "retries": 0,
                "timelimit": [None, None],
                "root_id": marks["id"],
                "parent_id": None,
                "argsrepr": marks["argsrepr"],
                "kwargsrepr": "{}",
                "origin": f"{_ORIGIN}:{os.getpid()}",
                "ignore_result": True,
                "replaced_task_nesting": 0,
                "stamped_headers": None,
                "stamps": {},
            },
            "properties": {
                "correlation_id": marks["id"],
                "reply_to": "",
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": priority,
                "body_encoding": "base64",
                "delivery_tag": marks["id"],
            },
        }
    ).replace("%", "%%")
    for name, mark in marks.items():
        envelope = envelope.replace(mark, f"%({name})s")
    return envelope
