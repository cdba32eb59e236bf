"""The resident engine: one vLLM ``LLMEngine`` stepping continuously on its own thread.

Celery task threads hand requests to :meth:`Engine.submit` and wait on the returned future.
The engine thread admits whatever arrived since the last step (``add_request``), runs one
``step()``, and hands each finished request its result. A request that arrives while others
are generating joins the running batch at the next step: continuous batching across jobs.

Only this module imports vllm's engine; it is built once per worker process, in the worker's
start-up hook (``worker.app``).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.errors import EngineDead, EngineRejected, JobAborted
from shared.jobs import Message

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.v1.engine.llm_engine import LLMEngine

    from worker.settings import WorkerSettings

__all__ = ["Engine", "Generation", "engine_kwargs"]

log = logging.getLogger(__name__)

# How long the idle engine thread waits for work before re-checking whether to stop.
_IDLE_POLL_S = 0.5


@dataclass(frozen=True, slots=True)
class Generation:
    """A finished request: its text and how the engine ran it."""

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    first_step: int
    last_step: int
    max_batch: int
    engine_s: float = 0.0  # from submit() to the last token: the engine's share of the job


@dataclass(frozen=True, slots=True)
class _Abort:
    """Stop a running request (``request_id``; None: every one) for ``reason``."""

    request_id: str | None
    reason: str


@dataclass(slots=True)
class _Request:
    request_id: str
    prompt: str
    params: SamplingParams
    future: Future[Generation]
    on_delta: Callable[[str], None] | None = None
    submitted: float = field(default_factory=time.perf_counter)
    parts: list[str] = field(default_factory=list)
    completion_tokens: int = 0
    prompt_tokens: int = 0
    first_step: int = 0
    last_step: int = 0
    max_batch: int = 0

    def generation(self, finish_reason: str | None) -> Generation:
        return Generation(
            text="".join(self.parts),
            finish_reason=finish_reason,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            first_step=self.first_step,
            last_step=self.last_step,
            max_batch=self.max_batch,
            engine_s=time.perf_counter() - self.submitted,
        )


_UNCHUNKED_TOKEN_BUDGET = 4096


def engine_kwargs(settings: WorkerSettings, model_path: Path) -> dict[str, Any]:
    """vLLM's engine arguments from the worker's settings, as keywords of ``EngineArgs`` (and of
    ``vllm.LLM``, which the benchmark's raw-vLLM baseline builds with the very same ones)."""
    from vllm.platforms import current_platform

    on_cpu = current_platform.is_cpu()
    if on_cpu and settings.cpu_reserved_cores is not None:
        # Read by the EngineCore process vLLM spawns, which inherits this environment.
        os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(settings.cpu_reserved_cores)
    chunked = not on_cpu if settings.chunked_prefill is None else settings.chunked_prefill
    scheduling: dict[str, Any] = {}
    if not chunked:
        # Whole prompts only: the budget must hold the longest one (4096 is vLLM-CPU's default).
        scheduling = dict(
            enable_chunked_prefill=False,
            max_num_batched_tokens=max(settings.max_model_len, _UNCHUNKED_TOKEN_BUDGET),
        )
    return dict(
        model=str(model_path),
        served_model_name=[settings.model],
        max_model_len=settings.max_model_len,
        dtype=_dtype(settings.dtype, on_cpu),
        gpu_memory_utilization=settings.gpu_memory_utilization or (0.3 if on_cpu else 0.9),
        enforce_eager=on_cpu if settings.enforce_eager is None else settings.enforce_eager,
        max_num_seqs=settings.max_num_seqs,
        structured_outputs_config={
            "backend": settings.structured_outputs_backend,
            "disable_any_whitespace": settings.json_compact,
        },
        disable_log_stats=True,
        **scheduling,
    )


def _dtype(setting: str, on_cpu: bool) -> str:
    if setting != "auto" or not on_cpu:
        return setting
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return setting
    # Without these, torch emulates bf16 matmuls: measured here 30 tok/s vs 161 in float32.
    native_bf16 = any(flag in flags for flag in ("avx512_bf16", "amx_bf16"))
    return setting if native_bf16 else "float32"


class Engine:
    """A vLLM engine owned by one thread; every other thread talks to it through futures."""

    def __init__(self, llm: LLMEngine, on_dead: Callable[[BaseException], None]) -> None:
        self._llm = llm
        self._on_dead = on_dead
        self._tokenizer = llm.get_tokenizer()
        self._inbox: queue.SimpleQueue[_Request | _Abort | None] = queue.SimpleQueue()
        self._running: dict[str, _Request] = {}
        self._steps = 0
        self._dead: BaseException | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="structq-engine", daemon=True)
        self._thread.start()

    @classmethod
    def start(
        cls, settings: WorkerSettings, model_path: Path, on_dead: Callable[[BaseException], None]
    ) -> Engine:
        from vllm.v1.engine.llm_engine import LLMEngine

        log.info("starting vLLM engine for %s from %s", settings.model, model_path)
        from vllm.engine.arg_utils import EngineArgs
        from vllm.usage.usage_lib import UsageContext

        args = EngineArgs(**engine_kwargs(settings, model_path))
        # The batch-size defaults of vLLM's offline LLM class (throughput-oriented; on CPU 256
        # sequences, 4096 tokens a step), so the worker and the raw-vLLM baseline match.
        llm = LLMEngine.from_engine_args(args, usage_context=UsageContext.LLM_CLASS)
        return cls(llm, on_dead)

    @property
    def steps(self) -> int:
        return self._steps

    def render_chat(self, messages: list[Message]) -> str:
        """The chat as the model's chat template writes it, ready for the assistant's turn."""
        return self._tokenizer.apply_chat_template(
            [m.model_dump() for m in messages], add_generation_prompt=True, tokenize=False
        )

    def submit(
        self,
        request_id: str,
        prompt: str,
        params: SamplingParams,
        on_delta: Callable[[str], None] | None = None,
    ) -> Future[Generation]:
        """Queue a request; ``on_delta`` (called on the engine thread, so it must not block)
        gets each step's new text."""
        future: Future[Generation] = Future()
        if self._dead is not None or self._stopping.is_set():
            future.set_exception(EngineDead("the engine is not running"))
            return future
        self._inbox.put(_Request(request_id, prompt, params, future, on_delta))
        return future

    @property
    def alive(self) -> bool:
        return self._dead is None and not self._stopping.is_set()

    def abort(self, request_id: str, reason: str) -> None:
        """Stop a request between steps; its future fails with ``JobAborted`` carrying what
        it had generated. Its batch-mates go on. A request already finished is left alone."""
        self._inbox.put(_Abort(request_id, reason))

    def abort_all(self, reason: str) -> None:
        """Stop every request submitted so far (a drain that ran out of time)."""
        self._inbox.put(_Abort(None, reason))

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Stop the loop, fail what is still pending, and shut vLLM's engine processes down."""
        self._stopping.set()
        self._inbox.put(None)
        self._thread.join(timeout_s)
        self._fail_all(EngineDead("the worker is shutting down"))
        try:
            self._llm.engine_core.shutdown()
        except Exception:  # the engine may already be gone; nothing more to free then
            log.exception("error while shutting the engine down")

    # -- the engine thread --------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while not self._stopping.is_set():
                self._admit(block=not self._running)
                if self._running:
                    self._collect(self._llm.step())
        except BaseException as exc:  # the engine process died, or vLLM broke: nothing runs on
            self._dead = exc
            log.critical("the vLLM engine died: %r", exc)
            self._fail_all(EngineDead(f"the engine died: {exc!r}"))
            self._on_dead(exc)

    def _admit(self, block: bool) -> None:
        """Add every request that arrived since the last step; wait for one when idle."""
        from vllm.exceptions import VLLMClientError

        try:
            item = self._inbox.get(timeout=_IDLE_POLL_S) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while item is not None:
            if isinstance(item, _Abort):
                self._abort(item)
            else:
                try:
                    self._llm.add_request(item.request_id, item.prompt, item.params)
                except (VLLMClientError, ValueError, TypeError) as exc:
                    item.future.set_exception(EngineRejected(str(exc)))
                else:
                    self._running[item.request_id] = item
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _abort(self, abort: _Abort) -> None:
        if abort.request_id is None:
            doomed = list(self._running.values())
        else:
            req = self._running.get(abort.request_id)
            doomed = [] if req is None else [req]
        if not doomed:
            return
        self._llm.abort_request([req.request_id for req in doomed])
        for req in doomed:
            del self._running[req.request_id]
            generation = req.generation("abort")
            req.future.set_exception(
                JobAborted(abort.reason, f"aborted ({abort.reason})", generation.text, generation)
            )

    def _collect(self, outputs: list[Any]) -> None:
        self._steps += 1
        step, batch = self._steps, len(outputs)
        for out in outputs:
            req = self._running.get(out.request_id)
            if req is None:
                continue
            completion = out.outputs[0]
            req.parts.append(completion.text)
            if req.on_delta is not None:
                req.on_delta(completion.text)
            req.completion_tokens += len(completion.token_ids)
            if out.prompt_token_ids is not None:
                req.prompt_tokens = len(out.prompt_token_ids)
            req.first_step = req.first_step or step
            req.last_step = step
            req.max_batch = max(req.max_batch, batch)
            if out.finished:
                del self._running[out.request_id]
                req.future.set_result(req.generation(completion.finish_reason))

    def _fail_all(self, error: EngineDead) -> None:
        pending: list[_Request | _Abort] = list(self._running.values())
        self._running.clear()
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                pending.append(item)
        for req in pending:
            if isinstance(req, _Request) and not req.future.done():
                req.future.set_exception(error)
