"""The one Celery task: run a job by id (the record itself lives in the job store)."""

from __future__ import annotations

from celery.exceptions import Reject

from shared.keys import TASK_NAME
from worker.app import app, runner
from worker.runner import NotTaking

__all__ = ["run_job"]


@app.task(name=TASK_NAME, ignore_result=True)
def run_job(job_id: str) -> None:
    try:
        runner().run(job_id)
    except NotTaking:
        # Draining or engine gone: the message goes back to the queue, unacknowledged here.
        raise Reject("this worker is not taking jobs", requeue=True) from None
