"""The baseline: raw vLLM offline (``vllm.LLM.generate``, the seeds' "offline batched
inference"), with the worker's own engine settings and request translation.

Run by the benchmark in a process of its own, so that only one engine holds the machine at a
time: ``python -m bench.baseline PLAN.json RESULTS.json``.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from shared.jobs import Job
from worker.engine import engine_kwargs
from worker.model import prepare_default_model
from worker.settings import WorkerSettings
from worker.structured import sampling_params

Body = dict[str, Any]


class Baseline:
    def __init__(self) -> None:
        from vllm import LLM

        settings = WorkerSettings.load()
        model_path = settings.model_path or prepare_default_model(settings.cache_dir)
        started = time.perf_counter()
        self.llm = LLM(**engine_kwargs(settings, model_path))
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
        """All requests at once, as ``LLM.generate`` of the whole list."""
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


def main(plan_path: str, out_path: str) -> None:
    plan = json.loads(Path(plan_path).read_text())
    baseline = Baseline()
    results: dict[str, Any] = {"cold_start_s": baseline.cold_start_s, "burst": {}, "schema": {}}
    baseline.burst(plan["warmup"])
    for name, bodies in plan["burst"].items():
        print(f"[baseline] {name}: {len(bodies)} requests", file=sys.stderr, flush=True)
        results["burst"][name] = baseline.burst(bodies)
    latency = baseline.single(plan["latency"]["body"], plan["latency"]["repeats"])
    results["latency"] = {"samples_s": latency, "p50_s": statistics.median(latency)}
    for name, bodies in plan["schema"].items():
        print(f"[baseline] {name}: {len(bodies)} requests", file=sys.stderr, flush=True)
        results["schema"][name] = baseline.burst(bodies)
    fresh = [baseline.single(body, 1)[0] for body in plan["fresh_schema"]]
    known = baseline.single(plan["fresh_schema"][0], len(fresh))
    results["fresh_schema"] = {
        "new_schema_p50_s": statistics.median(fresh),
        "known_schema_p50_s": statistics.median(known),
    }
    Path(out_path).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
