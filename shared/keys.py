"""Every Redis key, prefix, TTL, queue and task name structq uses, in one place.

Keys are namespaced under ``structq:`` so a Redis shared with other apps stays readable (Celery's
queue lists are named by :func:`queue_name`; Celery stores a queue as a Redis list of that exact
name, and its priority levels add suffixes, see Celery's Redis transport docs). Lua scripts get
the names they touch from here, as keys or prefixes, and build none themselves.
"""

from __future__ import annotations

__all__ = [
    "ADAPTERS",
    "BATCHES_ACTIVE",
    "BATCHES_INDEX_PREFIX",
    "BATCH_CUSTOM_IDS_PREFIX",
    "BATCH_INFLIGHT_PREFIX",
    "BATCH_LINES_PREFIX",
    "BATCH_LOCK_PREFIX",
    "BATCH_LOCK_TTL_S",
    "BATCH_PREFIX",
    "FILES_INDEX_PREFIX",
    "FILE_DATA_PREFIX",
    "FILE_PREFIX",
    "ALL_INDEX",
    "BELL_PREFIX",
    "CANCEL_CHANNEL",
    "CLIENT_INDEX_PREFIX",
    "COMPILE_TIMEOUT_VERDICT_TTL_S",
    "COMPILE_VERDICT_PREFIX",
    "COMPILE_VERDICT_TTL_S",
    "DEADLINES",
    "DEAD_LETTER",
    "DELIVERY_PREFIX",
    "DONE_CHANNEL",
    "HOOKS_PREFIX",
    "IDEMPOTENCY_PREFIX",
    "JANITOR_LOCK",
    "JOBS_TRANSPORT",
    "JOB_PREFIX",
    "MODEL_QUEUED_PREFIX",
    "PRIORITY_LEVELS",
    "QUEUE_PREFIX",
    "QUEUE_SEP",
    "RATE_PREFIX",
    "STATUS_INDEX_PREFIX",
    "STREAM_PREFIX",
    "STREAM_TTL_S",
    "TASK_NAME",
    "WEBHOOKS_TRANSPORT",
    "WEBHOOK_QUEUE",
    "WEBHOOK_SCHEDULE",
    "WEBHOOK_TASK_NAME",
    "WEBHOOK_WORKER_PREFIX",
    "WEBHOOK_WORKER_TTL_S",
    "WORKER_CANCELS_PREFIX",
    "WORKER_JOBS_PREFIX",
    "WORKERS_INDEX",
    "WORKER_PREFIX",
    "WORKER_QUEUE_PREFIX",
    "bell_key",
    "client_index",
    "delivery_key",
    "hooks_key",
    "idempotency_key",
    "job_id_of_tag",
    "job_key",
    "kombu_priority",
    "kombu_priority_steps",
    "model_queued_index",
    "queue_list",
    "queue_lists",
    "queue_name",
    "status_index",
    "stream_key",
    "task_id_for",
    "worker_cancels_key",
    "worker_jobs_key",
    "worker_key",
]

# Hash per job. ``status`` (the state machine's current state, the guard of every change),
# ``spec`` (the request as submitted, JSON, never rewritten), ``state`` (everything that
# changes: status, times, attempts, worker, result or error; JSON, rewritten by each change),
# ``run`` (the token of the latest claim; a run's own writes must carry it) and ``owner`` (its
# worker), ``msg`` (the delivery tag of the job's current task message), ``deadline`` (epoch s,
# '' for none), ``model`` and ``client`` (for the indexes), ``cancel`` (a running job's pending
# cancel), ``hook`` (the key of its latest webhook delivery, which the next one waits for).
JOB_PREFIX = "structq:job:"

# Sorted sets of job ids: every job by creation time, and one per status by the time the job
# entered it (``structq:index:<status>``). They back listing, the dead-letter view and the
# janitor's scan of running jobs.
ALL_INDEX = "structq:index:all"
STATUS_INDEX_PREFIX = "structq:index:"
# One client's (API key's) jobs: ``<prefix><client>:all`` and ``<prefix><client>:<status>``.
CLIENT_INDEX_PREFIX = "structq:index:client:"
# One model's queued jobs, ``<prefix><model>``: what its queue-depth limit counts (jobs, not
# messages: a cancelled job's message still in the list does not count).
MODEL_QUEUED_PREFIX = "structq:index:queued-of:"

# Sorted set: queued jobs that have a deadline, scored by it (epoch seconds).
DEADLINES = "structq:deadlines"

# Sorted set: jobs that ended ``max_attempts_exceeded``, by when; `retry` takes them out.
DEAD_LETTER = "structq:dead"

# String per (client, Idempotency-Key): "<body sha256> <job id>", with the idempotency TTL.
IDEMPOTENCY_PREFIX = "structq:idem:"

# Pub/sub channel: ids of running jobs a client asked to cancel; the owning worker aborts them.
CANCEL_CHANNEL = "structq:cancel"

# Pub/sub channel: space-separated ids of jobs that just reached a terminal status, published
# by the script that writes them (one message per script call, however many jobs it ended),
# so a long-polling client wakes the moment its job is readable.
DONE_CHANNEL = "structq:done"

# Webhooks. A hash per delivery (one event of one job, retried under one webhook-id): its
# spec and payload, attempts so far, state, ``after`` (the job's previous delivery, whose first
# attempt it waits for) and ``waits`` (how often it has waited). The Celery queue the webhook
# worker consumes, the task it runs, and a sorted set of deliveries waiting for their next
# attempt (by its time).
DELIVERY_PREFIX = "structq:delivery:"
WEBHOOK_QUEUE = "structq.webhooks"
WEBHOOK_TASK_NAME = "structq.deliver_webhook"
WEBHOOK_SCHEDULE = "structq:webhooks:scheduled"
# String per live webhook worker (``shared.records.WebhookWorkerAnnouncement``, renewed well
# within WEBHOOK_WORKER_TTL_S): its readiness and liveness.
WEBHOOK_WORKER_PREFIX = "structq:webhook-worker:"
WEBHOOK_WORKER_TTL_S = 15
# A list per job of its webhook attempts (JSON), shown as the job's `webhook_deliveries`.
HOOKS_PREFIX = "structq:hooks:"

# String per live worker: its announcement (``shared.records.WorkerAnnouncement``) with a short
# TTL that the worker keeps renewing once its engine is up; it disappears when the worker dies.
WORKER_PREFIX = "structq:worker:"
# Sorted set: every worker that announced itself, scored by when its announcement expires (ms),
# so readers find the workers without scanning the keyspace. Members whose announcement
# expired and whose ledger is empty are dropped by the janitor.
WORKERS_INDEX = "structq:workers"
# Hash: every LoRA adapter a worker announced, by name: ``shared.records.AdapterRecord`` JSON
# (its base model, folder, when last announced). Kept beyond its workers' lives, so the gateway
# still routes an adapter's jobs to its pool's queue while the pool is scaled to zero.
ADAPTERS = "structq:adapters"
# Hash per worker, ``<prefix><worker id>``: job id -> run token of every job it has claimed
# and not yet finished. Kept by the same scripts that claim and finish jobs, so a running job
# is always in its worker's ledger; the janitor reads a dead worker's to re-queue its jobs.
WORKER_JOBS_PREFIX = "structq:worker-jobs:"
# Set per worker: its running jobs a client asked to cancel (read by the worker every few
# seconds, a backstop for a pub/sub message it missed).
WORKER_CANCELS_PREFIX = "structq:worker-cancels:"

# A streaming job's output as the worker generates it: one Redis stream per job, entries
# {"a": run, "d": text delta}, then {"a": run, "end": "1"} once the job's terminal status is
# written. Kept STREAM_TTL_S after its last entry.
STREAM_PREFIX = "structq:stream:"
STREAM_TTL_S = 600

# The gateway's janitor: one round at a time across gateway processes (a short lock).
JANITOR_LOCK = "structq:janitor"
# GCRA state per API key (its theoretical arrival time), for the per-key rate limit.
RATE_PREFIX = "structq:rate:"
# Compile-check verdicts by the spec's hash, shared by every gateway: a definite one (compiles,
# does not) for a week, a timeout for an hour (a less busy machine may do better).
COMPILE_VERDICT_PREFIX = "structq:compile:"
COMPILE_VERDICT_TTL_S = 7 * 86_400
COMPILE_TIMEOUT_VERDICT_TTL_S = 3600

# Files (``/v1/files``): a hash per file with its ``FileObject`` JSON (``meta``); its content in
# the Redis file store as a list of chunks (``<data prefix><id>``); a sorted set per owner of
# their files by creation time. All with the file's retention as TTL.
FILE_PREFIX = "structq:file:"
FILE_DATA_PREFIX = "structq:file-data:"
FILES_INDEX_PREFIX = "structq:files:"

# Batches (``/v1/batches``): a hash per batch (``batch``: the ``Batch`` JSON; ``cursor``: the
# byte offset and line number up to which its input is enqueued; ``cancel``: asked to stop);
# a hash of its lines (line number -> what became of it: its job ids or its error); a set of
# the lines in flight; a set of the custom_ids seen. A sorted set per owner of their batches,
# and one of the batches some gateway must drive (``BATCHES_ACTIVE``), each driven by one
# gateway process at a time (a lock with a short TTL, renewed while it drives).
BATCH_PREFIX = "structq:batch:"
BATCH_LINES_PREFIX = "structq:batch-lines:"
BATCH_INFLIGHT_PREFIX = "structq:batch-inflight:"
BATCH_CUSTOM_IDS_PREFIX = "structq:batch-cids:"
BATCHES_INDEX_PREFIX = "structq:batches:"
BATCHES_ACTIVE = "structq:batches-active"
BATCH_LOCK_PREFIX = "structq:batch-lock:"
BATCH_LOCK_TTL_S = 15

# The Celery task every job message names. The gateway writes these messages itself.
TASK_NAME = "structq.run_job"

# Prefix of the Celery queue for one model's pool: ``structq.jobs.<model>``.
QUEUE_PREFIX = "structq.jobs."
# List per model, ``<prefix><model>``: a doorbell. Whoever pushes job messages onto an empty
# bell leaves one token in it; an idle worker blocks on it (BRPOP) instead of polling the queue,
# then takes what is queued in bulk. At most one token waits.
BELL_PREFIX = "structq:bell:"
# Celery queue each worker's Celery consumer listens on, ``<prefix><worker id>``: job messages
# are taken in bulk by the worker's own consumer step (``worker.intake``), not by Celery's.
WORKER_QUEUE_PREFIX = "structq.worker."

# Kombu's Redis transport keeps messages a consumer has taken but not acknowledged in a hash
# (tag -> message) and a sorted set (tag -> when taken), and restores them to their queue after
# the visibility timeout. Its default names are outside the project's prefix: these are
# structq's, for the job queues and (separately, with a short visibility timeout) the webhook
# queue. Every Celery client of those queues must use the same names.
JOBS_TRANSPORT = {
    "unacked_key": "structq:unacked",
    "unacked_index_key": "structq:unacked_index",
    "unacked_mutex_key": "structq:unacked_mutex",
}
WEBHOOKS_TRANSPORT = {
    "unacked_key": "structq:webhooks:unacked",
    "unacked_index_key": "structq:webhooks:unacked_index",
    "unacked_mutex_key": "structq:webhooks:unacked_mutex",
}

# Job priorities (higher runs first) and the Redis list each one's messages go to. Kombu's
# Redis transport keeps one list per priority step, named ``<queue><sep><step>`` (step 0 is
# the bare queue name) and pops them in step order; structq's priority 3 is kombu's step 0.
PRIORITY_LEVELS = 4
QUEUE_SEP = ":"
_KOMBU_STEP = 3


def job_key(job_id: str) -> str:
    return f"{JOB_PREFIX}{job_id}"


def worker_key(worker_id: str) -> str:
    return f"{WORKER_PREFIX}{worker_id}"


def worker_jobs_key(worker_id: str) -> str:
    return f"{WORKER_JOBS_PREFIX}{worker_id}"


def worker_cancels_key(worker_id: str) -> str:
    return f"{WORKER_CANCELS_PREFIX}{worker_id}"


def queue_name(model: str) -> str:
    """The Celery queue (a Redis list of this name) that the pool serving ``model`` consumes."""
    return f"{QUEUE_PREFIX}{model}"


def bell_key(model: str) -> str:
    return f"{BELL_PREFIX}{model}"


def queue_list(model: str, priority: int) -> str:
    """The Redis list holding ``model``'s job messages of ``priority``."""
    step = kombu_priority(priority)
    return queue_name(model) if step == 0 else f"{queue_name(model)}{QUEUE_SEP}{step}"


def queue_lists(model: str) -> list[str]:
    """Every list of ``model``'s queue, highest priority first (what a worker pops)."""
    return [queue_list(model, p) for p in reversed(range(PRIORITY_LEVELS))]


def kombu_priority(priority: int) -> int:
    """A message's kombu priority (0 pops first) for a structq priority (higher runs first)."""
    return (PRIORITY_LEVELS - 1 - priority) * _KOMBU_STEP


def kombu_priority_steps() -> list[int]:
    return [kombu_priority(p) for p in reversed(range(PRIORITY_LEVELS))]


def status_index(status: str) -> str:
    return f"{STATUS_INDEX_PREFIX}{status}"


def model_queued_index(model: str) -> str:
    """The model's queued jobs (what its queue-depth limit counts), kept by the same scripts."""
    return f"{MODEL_QUEUED_PREFIX}{model}"


def client_index(client: str, status: str | None = None) -> str:
    """The jobs one client (API key name) submitted: all of them, or those in ``status``.
    Kept by the same scripts that keep the global indexes."""
    return f"{CLIENT_INDEX_PREFIX}{client}:{status or 'all'}"


def idempotency_key(client: str, key: str) -> str:
    return f"{IDEMPOTENCY_PREFIX}{client}:{key}"


def task_id_for(job_id: str, suffix: str = "") -> str:
    """A task message id (also its delivery tag) for ``job_id``: the job id, plus a suffix on
    re-queued messages so that no two messages in flight (kombu keys unacked ones by it) share
    an id."""
    return f"{job_id}~{suffix}" if suffix else job_id


def job_id_of_tag(tag: str) -> str:
    """The job a task message id belongs to (see :func:`task_id_for`)."""
    return tag.partition("~")[0]


def stream_key(job_id: str) -> str:
    return f"{STREAM_PREFIX}{job_id}"


def delivery_key(delivery_id: str) -> str:
    return f"{DELIVERY_PREFIX}{delivery_id}"


def hooks_key(job_id: str) -> str:
    return f"{HOOKS_PREFIX}{job_id}"
