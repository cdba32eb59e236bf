"""What the gateway checks a job with beyond its schema, before it is stored: the spec's size
limits, the prompt's length against the model's context (with the model's tokenizer), the
compile check of its output type; and the queue caps (queue depth per model, queued jobs per
key) with the errors that refuse a job over them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from api.auth import Caller
from api.compile_check import CompileChecker
from api.errors import QueueFull, SpecTooLarge, TooManyQueued, invalid_field
from api.models import ModelDirectory
from api.settings import ApiSettings
from api.spec_limits import check_spec
from api.tokens import PromptCounter
from shared.async_store import AsyncJobStore
from shared.errors import StructqError
from shared.jobs import JobCreate, JobStatus
from shared.keys import client_index, model_queued_index

__all__ = ["Admission", "check_caps", "refusal"]


@dataclass
class Admission:
    """What the gateway checks a job's content with beyond its schema: which pool serves its
    model, each model's prompt counter (when the gateway has its tokenizer) and the compile
    checker."""

    counters: dict[str, PromptCounter] = field(default_factory=dict)
    checker: CompileChecker | None = None
    models: ModelDirectory | None = None

    @classmethod
    def from_settings(cls, settings: ApiSettings, redis: aioredis.Redis | None = None) -> Admission:
        folders = {
            model: path
            for model in settings.models
            if (path := settings.tokenizer_path(model)) is not None
        }
        counters = {model: PromptCounter(path) for model, path in folders.items()}
        checker = None
        if settings.compile_check:
            checker = CompileChecker(
                folders,
                settings.compile_timeout_s,
                settings.compile_workers,
                redis,
            )
        return cls(counters, checker, ModelDirectory(settings, redis))

    async def check(
        self, body: JobCreate, model: str, settings: ApiSettings, fit_max_tokens: bool
    ) -> JobCreate:
        """``body`` as it may be queued (its max_tokens fitted to the context when asked),
        or a 422 naming what is over which limit."""
        try:
            check_spec(body.output_type, settings)
        except SpecTooLarge as exc:
            raise invalid_field(("body", "output_type"), str(exc)) from None
        counter = self.counters.get(model)
        if counter is not None:
            text_length = len(body.prompt or "") + sum(len(m.content) for m in body.messages or [])
            where = "prompt" if body.prompt is not None else "messages"
            try:
                if text_length > 20_000:  # a long prompt: tokenize it off the event loop
                    prompt_tokens = await asyncio.to_thread(counter.count, body)
                else:
                    prompt_tokens = counter.count(body)
            except ValueError as exc:
                raise invalid_field(("body", where), str(exc)) from None
            room = settings.max_model_len - prompt_tokens
            max_tokens = body.sampling.max_tokens
            if fit_max_tokens and 0 < room < max_tokens:
                max_tokens = room
                sampling = body.sampling.model_copy(update={"max_tokens": room})
                body = body.model_copy(update={"sampling": sampling})
            if prompt_tokens + max_tokens > settings.max_model_len:
                raise invalid_field(
                    ("body", where),
                    f"the prompt is {prompt_tokens} tokens and max_tokens is {max_tokens}: "
                    f"{prompt_tokens + max_tokens} tokens, more than the model's context of "
                    f"{settings.max_model_len} (STRUCTQ_MAX_MODEL_LEN)",
                )
        if self.checker is not None:
            problem = await self.checker.check(model, body.output_type)
            if problem is not None:
                raise invalid_field(
                    ("body", "output_type"), f"the output type is refused: {problem}"
                )
        return body


async def check_caps(
    store: AsyncJobStore, settings: ApiSettings, caller: Caller, model: str
) -> None:
    """The queue-depth and per-key caps, for a job queued other than by ``submit`` (whose
    create script checks them atomically): a retry."""
    async with store.redis.pipeline(transaction=False) as pipe:
        pipe.zcard(model_queued_index(model))
        pipe.zcard(client_index(caller.owner or "", JobStatus.QUEUED.value))
        depth, mine = await pipe.execute()
    if settings.max_queue_depth and depth >= settings.max_queue_depth:
        raise refusal("queue_depth", depth, model, caller)
    if caller.owner and settings.max_queued_per_key and mine >= settings.max_queued_per_key:
        raise refusal("queued_per_client", mine, model, caller)


def refusal(limit: str, count: int, model: str, caller: Caller) -> StructqError:
    """The error for a cap that refuses a job (``limit`` as the create script names it)."""
    if limit == "queue_depth":
        return QueueFull(
            f"the queue of {model} holds {count} jobs (STRUCTQ_MAX_QUEUE_DEPTH); retry later"
        )
    return TooManyQueued(
        f"key {caller.name!r} has {count} queued jobs (STRUCTQ_MAX_QUEUED_PER_KEY); retry "
        "once some have started"
    )
