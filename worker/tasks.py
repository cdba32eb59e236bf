"""The one Celery task: run a job by id (the record itself lives in the job store)."""

from __future__ import annotations

from shared.keys import TASK_NAME
from worker.app import app, runner

__all__ = ["run_job"]


@app.task(name=TASK_NAME, ignore_result=True)
def run_job(job_id: str) -> None:
    runner().run(job_id)
