"""The baseline: raw vLLM offline (``vllm.LLM.generate``, the seeds' "offline batched
inference"), with the worker's own engine settings and request translation.

It runs in a process of its own for the whole benchmark, beside the worker, and does one thing
at a time when the benchmark asks (``RawEngine``): each raw run sits next to the structq run
of the same workload, so the two sides share the machine's state of the moment (its speed
drifts by tens of percent over minutes here). An idle vLLM engine waits on its queue and takes
no CPU, so only one engine works at a time.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from shared.jobs import Job
from worker.engine_args import engine_kwargs
from worker.model import prepare_default_model
from worker.settings import WorkerSettings
from worker.structured import sampling_params

Body = dict[str, Any]


class Baseline:
    def __init__(self, share: float, model_path: Path | None = None) -> None:
        """``share``: the part of the engine's default memory this one takes (two engines are
        resident, this one and the worker's, which is given the same figure). ``model_path``:
        another model than the worker settings'."""
        from vllm import LLM

        settings = WorkerSettings.load()
        model_path = model_path or settings.model_path or prepare_default_model(settings.cache_dir)
        kwargs = engine_kwargs(settings, model_path)
        if settings.gpu_memory_utilization is None:
            kwargs["gpu_memory_utilization"] = round(kwargs["gpu_memory_utilization"] * share, 3)
        self.gpu_memory_utilization: float = kwargs["gpu_memory_utilization"]
        started = time.perf_counter()
        self.llm = LLM(**kwargs)
        self.cold_start_s = time.perf_counter() - started
        self._tokenizer = self.llm.get_tokenizer()

    def _request(self, body: Body) -> tuple[str, Any]:
        from vllm.sampling_params import RequestOutputKind

        job = Job.model_validate({**body, "id": "baseline", "model": "baseline"})
        if job.messages is None:
            prompt = job.prompt
        else:
            prompt = self._tokenizer.apply_chat_template(
                [m.model_dump() for m in job.messages], add_generation_prompt=True, tokenize=False
            )
        params = sampling_params(job)
        # LLM.generate only needs each request's final output: the cheapest mode there is.
        params.output_kind = RequestOutputKind.FINAL_ONLY
        return prompt, params

    def burst(self, bodies: list[Body]) -> dict[str, float]:
        """All requests at once, as ``LLM.generate`` of the whole list; with the CPU time of
        this process (vLLM's frontend: building, tokenizing, detokenizing) and of the engine's
        own processes."""
        engine_before = _children_cpu()
        cpu_before = time.process_time()
        started = time.perf_counter()
        prompts, params = zip(*(self._request(b) for b in bodies), strict=True)
        outputs = self.llm.generate(list(prompts), list(params), use_tqdm=False)
        wall = time.perf_counter() - started
        tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
        return {
            "jobs": len(bodies),
            "wall_s": wall,
            "tokens": tokens,
            "tokens_per_s": tokens / wall,
            "jobs_per_s": len(bodies) / wall,
            "frontend_cpu_s": time.process_time() - cpu_before,
            "engine_cpu_s": _children_cpu() - engine_before,
        }

    def single(self, body: Body, repeats: int) -> list[float]:
        """The time of the same request alone, ``repeats`` times."""
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            prompt, params = self._request(body)
            self.llm.generate([prompt], [params], use_tqdm=False)
            times.append(time.perf_counter() - started)
        return times


def _children_cpu() -> float:
    """CPU seconds of this process's children (vLLM's EngineCore and its workers)."""
    import psutil

    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            continue
    return total


def serve(conn: Connection, log_path: str, share: float, model_path: str | None = None) -> None:
    """The raw engine's process: build it, say so, then run what the benchmark sends
    (``("burst", bodies)`` or ``("single", (body, repeats))``) until it sends None."""
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)  # vLLM logs to stdout: keep it off the benchmark's table
    os.dup2(log, 2)
    baseline = Baseline(share, Path(model_path) if model_path else None)
    conn.send(
        {
            "cold_start_s": baseline.cold_start_s,
            "gpu_memory_utilization": baseline.gpu_memory_utilization,
        }
    )
    try:
        while (request := conn.recv()) is not None:
            kind, args = request
            conn.send(baseline.burst(args) if kind == "burst" else baseline.single(*args))
    finally:
        # A multiprocessing child ends without running atexit hooks: vLLM would leave its
        # EngineCore process behind.
        baseline.llm.llm_engine.engine_core.shutdown()


class RawEngine:
    """The parent's handle on the raw engine's process (spawned: vLLM's own EngineCore process
    must not inherit a forked copy of the benchmark)."""

    def __init__(self, log_path: Path, share: float = 0.5, model_path: Path | None = None) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._log_path = log_path
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=serve,
            args=(child, str(log_path), share, str(model_path) if model_path else None),
            name="raw-vllm",
            daemon=False,
        )
        self._proc.start()
        child.close()
        ready = self._recv()
        self.cold_start_s: float = ready["cold_start_s"]
        self.gpu_memory_utilization: float = ready["gpu_memory_utilization"]

    def _recv(self) -> Any:
        try:
            return self._conn.recv()
        except EOFError:
            log = self._log_path
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
            raise RuntimeError(f"the raw vLLM process stopped; its log ends:\n{tail}") from None

    def burst(self, bodies: list[Body]) -> dict[str, float]:
        self._conn.send(("burst", bodies))
        return self._recv()

    def single(self, body: Body, repeats: int = 1) -> list[float]:
        self._conn.send(("single", (body, repeats)))
        return self._recv()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send(None)
        self._proc.join(60)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(10)
        self._conn.close()

    def __enter__(self) -> RawEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
