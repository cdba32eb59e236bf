"""The gateway's hand-written task message must be the one Celery itself would send."""

from __future__ import annotations

import base64
import json

import pytest
from celery import Celery

from shared.celery_message import task_message
from shared.keys import (
    PRIORITY_LEVELS,
    TASK_NAME,
    kombu_priority,
    kombu_priority_steps,
    queue_list,
    queue_lists,
    queue_name,
)


def test_message_matches_what_celery_send_task_writes(redis_client, redis_url):
    app = Celery(broker=redis_url)
    app.send_task(TASK_NAME, args=["job-1"], queue="q", ignore_result=True)
    theirs = json.loads(redis_client.lpop("q"))
    ours = json.loads(task_message("job-1", "q"))

    assert ours.keys() == theirs.keys()
    assert ours["headers"].keys() == theirs["headers"].keys()
    assert ours["properties"].keys() == theirs["properties"].keys()
    for key in ("content-type", "content-encoding"):
        assert ours[key] == theirs[key]
    same_headers = (
        "lang",
        "task",
        "retries",
        "timelimit",
        "argsrepr",
        "kwargsrepr",
        "ignore_result",
    )
    for key in same_headers:
        assert ours["headers"][key] == theirs["headers"][key], key
    for key in ("delivery_mode", "delivery_info", "priority", "body_encoding"):
        assert ours["properties"][key] == theirs["properties"][key], key
    assert base64.b64decode(ours["body"]) == base64.b64decode(theirs["body"])
    assert (
        ours["headers"]["id"] == ours["headers"]["root_id"] == ours["properties"]["correlation_id"]
    )


@pytest.mark.parametrize("priority", range(PRIORITY_LEVELS))
def test_a_priority_lands_in_the_list_celery_would_use(redis_client, redis_url, priority):
    from worker.app import celery_config
    from worker.settings import WorkerSettings

    app = Celery(broker=redis_url)
    app.conf.update(celery_config(WorkerSettings(model="m")))
    app.send_task(
        TASK_NAME, args=["job-1"], queue=queue_name("m"), priority=kombu_priority(priority)
    )
    theirs = json.loads(redis_client.lpop(queue_list("m", priority)))
    ours = json.loads(task_message("job-1", queue_name("m"), priority=kombu_priority(priority)))
    assert ours["properties"]["priority"] == theirs["properties"]["priority"]
    assert all(redis_client.llen(name) == 0 for name in queue_lists("m"))


def test_higher_priority_lists_are_popped_first():
    # Kombu's Redis transport BRPOPs its lists in priority-step order.
    assert [kombu_priority(p) for p in (3, 2, 1, 0)] == sorted(kombu_priority_steps())
    assert queue_lists("m")[0] == queue_name("m")
