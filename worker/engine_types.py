"""What passes between the dispatcher (``worker.runner``) and the engine thread
(``worker.engine``): a :class:`Request` in, a :class:`Done` out (with its :class:`Generation`,
or the failure that left it without one), and the :class:`AbortReason` a running request is
stopped for.

Plain records, without vLLM: the outcome building (``worker.outcomes``) and its tests use them
without an engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from shared.errors import JobFailure

if TYPE_CHECKING:
    from vllm import SamplingParams

__all__ = ["AbortReason", "Done", "Generation", "Request"]


class AbortReason(StrEnum):
    """Why the worker stops a request before it finishes (the ``reason`` of its
    ``JobAborted``)."""

    CANCELLED = "cancelled"  # its client asked
    DEADLINE = "deadline"  # its deadline (or STRUCTQ_MAX_RUN_S) passed
    DRAIN = "drain"  # the worker is shutting down and ran out of time
    FENCED = "fenced"  # its job was given to another run while this worker was cut off


@dataclass(frozen=True, slots=True)
class Generation:
    """A finished (or aborted) request: its text and how the engine ran it."""

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    first_step: int
    last_step: int
    max_batch: int
    engine_s: float = 0.0  # from submit() to the last token: the engine's share of the job
    first_token_s: float | None = None  # from submit() to the first token (None: no token)


@dataclass(slots=True)
class Request:
    """One request for the engine. ``on_delta`` (streaming only) is called on the engine thread
    with each step's new text, so it must not block."""

    request_id: str
    prompt: str
    params: SamplingParams
    on_delta: Callable[[str], None] | None = None
    adapter: str | None = None  # the LoRA adapter to run it with (None: the base model)
    # Kept by the engine thread:
    internal_id: str = ""
    submitted: float = field(default_factory=time.perf_counter)
    text: str = ""
    completion_tokens: int = 0
    prompt_tokens: int = 0
    first_step: int = 0
    last_step: int = 0
    max_batch: int = 0
    first_token_at: float = 0.0  # perf_counter() at the step of its first token

    def generation(self, finish_reason: str | None) -> Generation:
        return Generation(
            text=self.text,
            finish_reason=finish_reason,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            first_step=self.first_step,
            last_step=self.last_step,
            max_batch=self.max_batch,
            engine_s=time.perf_counter() - self.submitted,
            first_token_s=self.first_token_at - self.submitted if self.first_token_at else None,
        )


@dataclass(frozen=True, slots=True)
class Done:
    """A request the engine is finished with: its generation, or why it has none (or only a
    partial one: ``JobAborted`` carries what was generated)."""

    request_id: str
    generation: Generation | None
    error: JobFailure | None = None
