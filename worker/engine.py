"""The resident engine: one vLLM ``LLMEngine`` stepping continuously on its own thread.

The worker's dispatcher hands it requests in batches (:meth:`Engine.submit`); the engine thread
admits whatever arrived since the last step (``add_request``), runs one ``step()``, and puts
each finished request on a list the dispatcher takes (:meth:`Engine.take_done`), waking it once
per step that finished anything. A request that arrives while others are generating joins the
running batch at the next step: continuous batching across jobs.

Requests ask for their final output only (vLLM's cheapest mode, as ``LLM.generate`` does),
except streaming jobs, which get each step's new text. How each request ran (its first and
last engine step, the largest batch it was part of) is counted from the engine-core outputs of
every step, whatever the output mode.

Only this module imports vllm's engine; it is built once per worker process, in the worker's
start-up hook (``worker.app``). What it takes and hands back is in ``worker.engine_types``; its
arguments come from ``worker.engine_args``.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.errors import EngineDead, EngineRejected, JobAborted
from shared.jobs import Message
from worker.engine_args import engine_kwargs
from worker.engine_types import AbortReason, Done, Request

if TYPE_CHECKING:
    from vllm.lora.request import LoRARequest
    from vllm.v1.engine.llm_engine import LLMEngine

    from worker.settings import WorkerSettings

__all__ = ["Engine"]

log = logging.getLogger(__name__)

# How long the idle engine thread waits for work before re-checking whether to stop.
_IDLE_POLL_S = 0.5


@dataclass(frozen=True, slots=True)
class _Abort:
    """Stop a running request (``request_id``; None: every one) for ``reason``."""

    request_id: str | None
    reason: AbortReason


class Engine:
    """A vLLM engine owned by one thread; other threads hand it requests and take what is done."""

    def __init__(
        self,
        llm: LLMEngine,
        on_dead: Callable[[BaseException], None],
        on_done: Callable[[], None] = lambda: None,
        adapters: Mapping[str, LoRARequest] | None = None,
    ) -> None:
        self._llm = llm
        self._adapters = dict(adapters or {})
        self._on_dead = on_dead
        self._on_done = on_done
        self._tokenizer = llm.get_tokenizer()
        self._inbox: queue.SimpleQueue[list[Request] | _Abort | None] = queue.SimpleQueue()
        self._running: dict[str, Request] = {}
        self._by_internal: dict[str, Request] = {}
        self._done: list[Done] = []
        self._done_lock = threading.Lock()
        self._steps = 0
        self._dead: BaseException | None = None
        self._stopping = threading.Event()
        self._count_steps(llm)
        self._thread = threading.Thread(target=self._loop, name="structq-engine", daemon=True)
        self._thread.start()

    @classmethod
    def start(
        cls,
        settings: WorkerSettings,
        model_path: Path,
        on_dead: Callable[[BaseException], None],
        on_done: Callable[[], None] = lambda: None,
    ) -> Engine:
        from vllm.engine.arg_utils import EngineArgs
        from vllm.lora.request import LoRARequest
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.llm_engine import LLMEngine

        log.info("starting vLLM engine for %s from %s", settings.model, model_path)
        # With its statistics on (STRUCTQ_ENGINE_STATS), vLLM registers its Prometheus metrics,
        # and would also log a summary line every 10 s: not unless asked for.
        os.environ.setdefault("VLLM_LOG_STATS_INTERVAL", "1e9")
        args = EngineArgs(**engine_kwargs(settings, model_path))
        # The batch-size defaults of vLLM's offline LLM class (throughput-oriented; on CPU 256
        # sequences, 4096 tokens a step), so the worker and the raw-vLLM baseline match.
        llm = LLMEngine.from_engine_args(args, usage_context=UsageContext.LLM_CLASS)
        adapters = {
            name: LoRARequest(name, number, str(folder))
            for number, (name, folder) in enumerate(sorted(settings.lora_modules.items()), 1)
        }
        for adapter in adapters.values():
            # Loaded now, so a broken adapter stops the worker at start rather than failing
            # its first jobs (vLLM keeps up to max_cpu_loras of them loaded, and reloads one
            # it evicted when a job asks for it).
            log.info("loading LoRA adapter %s from %s", adapter.lora_name, adapter.lora_path)
            llm.add_lora(adapter)
        return cls(llm, on_dead, on_done, adapters)

    @property
    def steps(self) -> int:
        return self._steps

    @property
    def alive(self) -> bool:
        return self._dead is None and not self._stopping.is_set()

    def render_chat(self, messages: Sequence[Message]) -> str:
        """The chat as the model's chat template writes it, ready for the assistant's turn."""
        text = self._tokenizer.apply_chat_template(
            [m.model_dump() for m in messages], add_generation_prompt=True, tokenize=False
        )
        assert isinstance(text, str)
        return text

    def submit(self, requests: list[Request]) -> None:
        """Queue requests for the next step; each comes back through :meth:`take_done`."""
        if not requests:
            return
        if self._dead is not None or self._stopping.is_set():
            with self._done_lock:
                self._done.extend(
                    Done(r.request_id, None, EngineDead("the engine is not running"))
                    for r in requests
                )
            self._on_done()
            return
        self._inbox.put(requests)

    def take_done(self) -> list[Done]:
        """Every request finished (or failed, or aborted) since the last call."""
        with self._done_lock:
            done, self._done = self._done, []
        return done

    def abort(self, request_id: str, reason: AbortReason) -> None:
        """Stop a request between steps; it comes back with ``JobAborted`` carrying what it had
        generated. Its batch-mates go on. A request already finished is left alone."""
        self._inbox.put(_Abort(request_id, reason))

    def abort_all(self, reason: AbortReason) -> None:
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
                if self._done:
                    self._on_done()
        except BaseException as exc:  # the engine process died, or vLLM broke: nothing runs on
            self._dead = exc
            log.critical("the vLLM engine died: %r", exc)
            self._fail_all(EngineDead(f"the engine died: {exc!r}"))
            self._on_dead(exc)

    def _finished(self, done: Done) -> None:
        with self._done_lock:
            self._done.append(done)

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
                for req in item:
                    adapter = None
                    if req.adapter is not None:
                        adapter = self._adapters.get(req.adapter)
                        if adapter is None:
                            self._finished(Done(req.request_id, None, self._unknown(req.adapter)))
                            continue
                    try:
                        req.internal_id = self._llm.add_request(
                            req.request_id, req.prompt, req.params, lora_request=adapter
                        )
                    except (VLLMClientError, ValueError, TypeError) as exc:
                        self._finished(Done(req.request_id, None, EngineRejected(str(exc))))
                    else:
                        self._running[req.request_id] = req
                        self._by_internal[req.internal_id] = req
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _unknown(self, adapter: str) -> EngineRejected:
        served = ", ".join(sorted(self._adapters)) or "none"
        return EngineRejected(
            f"the LoRA adapter {adapter!r} is not served by this worker (its adapters: {served}; "
            "every worker of a pool must declare the same STRUCTQ_LORA_MODULES)"
        )

    def _abort(self, abort: _Abort) -> None:
        if abort.request_id is None:
            doomed = list(self._running.values())
        else:
            req = self._running.get(abort.request_id)
            doomed = [] if req is None else [req]
        if not doomed:
            return
        for req in doomed:
            if req.on_delta is None:
                self._read_partial(req)
        self._llm.abort_request([req.request_id for req in doomed])
        for req in doomed:
            self._forget(req)
            generation = req.generation("abort")
            error = JobAborted(
                abort.reason, f"aborted ({abort.reason})", generation.text, generation
            )
            self._finished(Done(req.request_id, generation, error))

    def _read_partial(self, req: Request) -> None:
        """What a final-output-only request has generated so far, read from vLLM's detokenizer
        (it hands out no output for an aborted request)."""
        try:
            state = self._llm.output_processor.request_states.get(req.internal_id)
            detokenizer = None if state is None else state.detokenizer
            if state is None or detokenizer is None:
                return
            req.text = detokenizer.get_next_output_text(True, False)
            req.completion_tokens = detokenizer.num_output_tokens()
            req.prompt_tokens = len(state.prompt_token_ids or ())
        except Exception:  # an internal of vLLM's: without it the abort just has no text
            log.exception("could not read the partial output of %s", req.request_id)

    def _forget(self, req: Request) -> None:
        self._running.pop(req.request_id, None)
        self._by_internal.pop(req.internal_id, None)

    def _collect(self, outputs: list[Any]) -> None:
        for out in outputs:
            req = self._running.get(out.request_id)
            if req is None:
                continue
            completion = out.outputs[0]
            if req.on_delta is not None:  # DELTA: this step's new text and tokens
                req.text += completion.text
                req.completion_tokens += len(completion.token_ids)
                req.on_delta(completion.text)
            else:  # FINAL_ONLY: the whole output, once
                req.text = completion.text
                req.completion_tokens = len(completion.token_ids)
            if out.prompt_token_ids is not None:
                req.prompt_tokens = len(out.prompt_token_ids)
            if out.finished:
                self._forget(req)
                self._finished(Done(req.request_id, req.generation(completion.finish_reason)))

    def _count_steps(self, llm: LLMEngine) -> None:
        """Count every engine step, and the requests that advanced in it, from the engine-core
        outputs each ``step()`` processes (final-output-only requests produce no
        ``RequestOutput`` until they finish)."""
        # Any, deliberately: vLLM types ``process_outputs`` as a method, which may not be assigned.
        processor: Any = llm.output_processor
        process = processor.process_outputs

        def counted(engine_core_outputs: list[Any], *args: Any, **kwargs: Any) -> Any:
            if engine_core_outputs:
                self._steps += 1
                step, batch, by_internal = self._steps, len(engine_core_outputs), self._by_internal
                now = time.perf_counter()
                for output in engine_core_outputs:
                    req = by_internal.get(output.request_id)
                    if req is not None:
                        if not req.first_step:
                            req.first_step, req.first_token_at = step, now
                        req.last_step = step
                        if batch > req.max_batch:
                            req.max_batch = batch
            return process(engine_core_outputs, *args, **kwargs)

        processor.process_outputs = counted

    def _fail_all(self, error: EngineDead) -> None:
        pending: list[Request] = list(self._running.values())
        self._running.clear()
        self._by_internal.clear()
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, list):
                pending.extend(item)
        with self._done_lock:
            self._done.extend(Done(req.request_id, None, error) for req in pending)
        self._on_done()
