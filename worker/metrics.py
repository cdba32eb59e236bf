"""The GPU worker's Prometheus metrics (names and meaning: docs/observability.md), served on
STRUCTQ_METRICS_PORT from this process; with STRUCTQ_ENGINE_STATS, vLLM's own ``vllm:``
metrics are registered in the same registry by vLLM and served beside them.

Recording a finished job costs a few counter and histogram updates on the dispatcher thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from shared.errors import ErrorCode
from shared.jobs import Job, JobStatus
from shared.metrics import LATENCY_BUCKETS
from worker.engine_types import Generation

__all__ = ["JobMetrics"]

_FINISHED = Counter(
    "structq_worker_jobs_finished_total",
    "Jobs this worker ended, by status and error code (empty for succeeded).",
    ["model", "status", "code"],
)
_REQUEUED = Counter(
    "structq_worker_runs_requeued_total",
    "Runs given back to the queue (a drain, the engine's death).",
    ["model"],
)
_QUEUE_WAIT = Histogram(
    "structq_job_queue_wait_seconds",
    "Submit to the start of the run.",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
_FIRST_TOKEN = Histogram(
    "structq_job_time_to_first_token_seconds",
    "Hand-over to the engine to the job's first token.",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
_ENGINE = Histogram(
    "structq_job_engine_seconds",
    "Hand-over to the engine to the job's last token.",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
_TOTAL = Histogram(
    "structq_job_duration_seconds",
    "Submit to finish.",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
_PROMPT_TOKENS = Counter(
    "structq_prompt_tokens_total", "Prompt tokens of finished runs.", ["model"]
)
_GENERATED_TOKENS = Counter(
    "structq_generation_tokens_total", "Generated tokens of finished runs.", ["model"]
)
_INFLIGHT = Gauge("structq_worker_inflight_jobs", "Jobs claimed and not yet recorded.", ["model"])
_DRAINS = Counter("structq_worker_drains_total", "SIGTERM drains begun.", ["model"])
_ENGINE_DEATHS = Counter("structq_engine_deaths_total", "Engine deaths seen.", ["model"])
_CUT_OFFS = Counter(
    "structq_worker_cut_offs_total",
    "Times the worker found its heartbeat may have lapsed (a stall or a partition longer than "
    "STRUCTQ_HEARTBEAT_TTL_S) and checked its claims.",
    ["model"],
)
_FENCED = Counter(
    "structq_worker_fenced_runs_total",
    "Runs aborted because their job was given to another run while this worker was cut off.",
    ["model"],
)


# The (status, code) pairs a run can end with.
_OUTCOMES = [
    ("succeeded", ""),
    ("cancelled", ErrorCode.CANCELLED.value),
    ("expired", ErrorCode.EXPIRED.value),
    *(
        ("failed", code.value)
        for code in (
            ErrorCode.ENGINE_REJECTED,
            ErrorCode.OUTPUT_TRUNCATED,
            ErrorCode.OUTPUT_INVALID,
            ErrorCode.DEADLINE_EXCEEDED,
            ErrorCode.MAX_ATTEMPTS_EXCEEDED,
            ErrorCode.UNREADABLE_JOB,
            ErrorCode.INTERNAL_ERROR,
        )
    ),
]


class JobMetrics:
    """The metrics of one worker's model (its label values resolved once)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self._requeued = _REQUEUED.labels(model)
        self._queue_wait = _QUEUE_WAIT.labels(model)
        self._first_token = _FIRST_TOKEN.labels(model)
        self._engine = _ENGINE.labels(model)
        self._total = _TOTAL.labels(model)
        self._prompt = _PROMPT_TOKENS.labels(model)
        self._generated = _GENERATED_TOKENS.labels(model)
        self._drains = _DRAINS.labels(model)
        self._deaths = _ENGINE_DEATHS.labels(model)
        self._cut_offs = _CUT_OFFS.labels(model)
        self._fenced = _FENCED.labels(model)
        # Every outcome's series from 0, so that a rate sees its first event.
        for status, code in _OUTCOMES:
            _FINISHED.labels(model, status, code)

    def recorded(self, job: Job, generation: Generation | None) -> None:
        """A run's outcome was written: ``job`` as recorded, ``generation`` the engine's."""
        if job.status is JobStatus.QUEUED:
            self._requeued.inc()
            return
        if not job.status.terminal:
            return
        code = job.error.code.value if job.error is not None else ""
        _FINISHED.labels(self.model, job.status.value, code).inc()
        if job.started_at is not None:
            self._queue_wait.observe((job.started_at - job.created_at).total_seconds())
        if job.finished_at is not None:
            self._total.observe((job.finished_at - job.created_at).total_seconds())
        if generation is not None:
            self._prompt.inc(generation.prompt_tokens)
            self._generated.inc(generation.completion_tokens)
            self._engine.observe(generation.engine_s)
            if generation.first_token_s is not None:
                self._first_token.observe(generation.first_token_s)

    def drain(self) -> None:
        self._drains.inc()

    def engine_died(self) -> None:
        self._deaths.inc()

    def cut_off(self) -> None:
        self._cut_offs.inc()

    def fenced(self) -> None:
        self._fenced.inc()

    def watch(self, in_flight: Callable[[], int], steps: Callable[[], int]) -> None:
        """Read the jobs in flight and the engine's step count when scraped."""
        _INFLIGHT.labels(self.model).set_function(in_flight)
        REGISTRY.register(_Steps(self.model, steps))


class _Steps(Collector):
    def __init__(self, model: str, steps: Callable[[], int]) -> None:
        self._model, self._steps = model, steps

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "structq_engine_steps", "Engine steps that produced output.", labels=["model"]
        )
        family.add_metric([self._model], self._steps())
        yield family
