"""``make demo``: start Redis, a worker and the gateway, run the seed examples as jobs through
the Python client (``structq.Client``), print each output and its parsed value, and shut
everything down (checking nothing is left running).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time

import structq
from scripts.seed_jobs import SEED_JOBS
from scripts.stack import Stack


def main() -> int:
    with Stack() as stack:
        client = structq.Client(stack.api_url)
        print(
            "\nThe local stack runs without API keys (STRUCTQ_INSECURE_NO_AUTH=true, development "
            "only; a deployment configures STRUCTQ_API_KEYS)."
        )
        print("Submitting the seed examples to", stack.api_url, "with structq.Client", flush=True)
        submitted = []
        for label, body in SEED_JOBS:
            job = client.submit(
                body.get("prompt") or body["messages"],
                body.get("output_type"),
                **body.get("sampling", {}),
            )
            submitted.append((label, body, job))
            print(f"  client.submit({label:<11}) -> {job.status.value}  {job.id}")
        started = time.monotonic()
        for _, _, job in submitted:
            with contextlib.suppress(structq.JobTimeout):
                job.wait(timeout=max(1.0, 300 - (time.monotonic() - started)))
        print(f"\nResults (all done in {time.monotonic() - started:.1f}s):")
        ok = True
        for label, body, job in submitted:
            question = body.get("prompt") or body["messages"][-1]["content"]
            print(f"\n[{label}] {question}")
            try:
                value = job.result(timeout=0)
            except structq.JobTimeout:
                ok = False
                print("  not finished in time")
            except structq.JobFailed as exc:
                ok = False
                print(f"  FAILED {exc.code}: {exc.message}")
            else:
                result = job.record.result
                assert result is not None
                print(f"  text : {result.text!r}")
                print(f"  value: {json.dumps(value)}  ({type(value).__name__})")
                print(f"  usage: {result.usage}  finish: {result.finish_reason}")
        ok = _openai_clients(stack.api_url) and ok
    print("\nAll seed examples succeeded." if ok else "\nSome seed examples did not succeed.")
    return 0 if ok else 1


def _openai_clients(api_url: str) -> bool:
    """The same service through the OpenAI-compatible routes, as the seeds' clients use it."""
    import openai
    import outlines
    from outlines.types import Regex

    print("\nThe OpenAI-compatible routes, with the openai SDK and outlines.from_vllm:")
    try:
        with openai.OpenAI(base_url=f"{api_url}/v1", api_key="unused") as client:
            served = [m.id for m in client.models.list().data]
            print(f"  GET /v1/models -> {served}")
            reply = client.chat.completions.create(
                model=served[0],
                messages=[{"role": "user", "content": "What's the capital of Latvia?"}],
                max_tokens=20,
                temperature=0,
            )
            print(f"  chat.completions.create -> {reply.choices[0].message.content!r}")
            model = outlines.from_vllm(client, served[0])
            ssn = model("Generate a fake social security number.", Regex(r"\d{3}-\d{2}-\d{4}"))
            print(f"  outlines, Regex(r'\\d{{3}}-\\d{{2}}-\\d{{4}}') -> {ssn!r}")
            chunks = list(model.stream("Tell me a short story about a cat.", max_tokens=24))
            print(f"  outlines, stream -> {len(chunks)} chunks: {''.join(chunks)!r}")
    except openai.OpenAIError as exc:
        print(f"  FAILED: {exc}")
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
