"""Records that cross a process boundary through Redis, other than the job itself
(``shared.jobs``): each is written by one kind of process and read by another, through
these models on both sides.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from shared.jobs import BatchWebhookEvent, WebhookEvent

__all__ = [
    "AdapterRecord",
    "WebhookDelivery",
    "WebhookWorkerAnnouncement",
    "WorkerAnnouncement",
]


class _Record(BaseModel):
    # Readers ignore fields a newer writer added (rolling upgrades), rather than fail.
    model_config = ConfigDict(extra="ignore", frozen=True)


class WorkerAnnouncement(_Record):
    """A worker's heartbeat key (``shared.keys.worker_key``): it is up, with its engine loaded,
    serving ``model`` from ``queue``. Written by the worker, read by the gateway (the model list,
    the janitor) and the probes."""

    worker_id: str
    model: str
    queue: str
    max_model_len: int | None = None
    # The LoRA adapters it serves beside its model (STRUCTQ_LORA_MODULES): name -> folder.
    adapters: dict[str, str] = {}
    pid: int
    ready_at: datetime


class AdapterRecord(_Record):
    """A LoRA adapter, as its workers announce it (``shared.keys.ADAPTERS``): the base model
    whose pool serves it, its folder there, and when a worker last announced it (epoch s).
    Written by the workers with every heartbeat, read by the gateway to route jobs."""

    parent: str
    root: str
    seen: float


class WebhookDelivery(_Record):
    """One event of one job (or batch) to deliver (``shared.keys.delivery_key``'s ``spec``
    field): stored by the status change that makes it due, read by the webhook worker for every
    attempt."""

    id: str  # the webhook-id, the same on every attempt
    job_id: str  # the job's id, or the batch's: its attempts are listed under it (hooks_key)
    event: WebhookEvent | BatchWebhookEvent
    url: str
    payload: str  # the exact body to send (and sign)
    # For the webhook worker's log lines (a batch's delivery has neither).
    model: str | None = None
    request_id: str | None = None  # the request that submitted the job (``Job.request_id``)


class WebhookWorkerAnnouncement(_Record):
    """A webhook worker's ready key (``shared.keys.WEBHOOK_WORKER_PREFIX``, renewed within
    ``WEBHOOK_WORKER_TTL_S``): it is up and delivering. Written by the webhook worker, read by
    its probe (``python -m worker check --webhooks``) and the test stacks."""

    worker_id: str
    pid: int
    ready_at: datetime
