"""The engine thread hands each request its LoRA adapter, and fails one asking for an adapter
this worker does not serve (with a reason naming it) while its batch-mates go on. A stand-in
for vLLM's LLMEngine: only what the engine thread calls."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any, cast

from shared.errors import ErrorCode
from worker.engine import Engine
from worker.engine_types import Done, Request


class _FakeLLM:
    def __init__(self) -> None:
        self.added: list[tuple[str, Any]] = []
        self.output_processor = SimpleNamespace(process_outputs=lambda outputs, *a, **k: None)
        self.engine_core = SimpleNamespace(shutdown=lambda: None)

    def get_tokenizer(self) -> object:
        return object()

    def add_request(self, request_id: str, prompt: str, params: Any, lora_request: Any = None):
        self.added.append((request_id, lora_request))
        return f"internal-{request_id}"

    def step(self) -> list[Any]:
        time.sleep(0.01)
        return []


def test_requests_get_their_adapter_and_an_unknown_adapter_fails_alone() -> None:
    llm = _FakeLLM()
    woke = threading.Event()
    sql = SimpleNamespace(lora_name="sql")
    engine = Engine(
        cast(Any, llm), on_dead=lambda exc: None, on_done=woke.set, adapters={"sql": sql}
    )
    try:
        params = cast(Any, None)
        engine.submit(
            [
                Request("base.1", "hi", params),
                Request("sql.1", "hi", params, adapter="sql"),
                Request("ghost.1", "hi", params, adapter="ghost"),
            ]
        )
        assert woke.wait(5)
        deadline = time.monotonic() + 5
        while len(llm.added) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert llm.added == [("base.1", None), ("sql.1", sql)]
        [done] = engine.take_done()
        assert isinstance(done, Done) and done.request_id == "ghost.1"
        assert done.error is not None and done.error.code is ErrorCode.ENGINE_REJECTED
        assert "'ghost' is not served by this worker (its adapters: sql" in done.error.message
    finally:
        engine.shutdown(timeout_s=5)
