"""The gateway's hand-written task message must be the one Celery itself would send."""

from __future__ import annotations

import base64
import json

from celery import Celery

from shared.celery_message import task_message
from shared.keys import TASK_NAME


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
