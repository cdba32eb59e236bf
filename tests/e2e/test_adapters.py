"""LoRA adapters on the bundled model, end to end: two adapters made here with ``peft`` (their
weights random and non-zero), declared on the bundled model's pool (this module swaps the
session's worker for one with STRUCTQ_LORA_MODULES, and back), asked for by `model` = name on
the native and OpenAI routes, batched with the base model's jobs in the same engine steps.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis

from scripts.stack import Stack
from shared.keys import ALL_INDEX, queue_lists
from shared.settings import DEFAULT_MODEL
from tests.e2e.conftest import restart_worker, wait_for
from tests.e2e.models import make_lora_adapter

pytestmark = pytest.mark.e2e

ADAPTERS = ("e2e-lora-a", "e2e-lora-b")
PROMPT = [{"role": "user", "content": "What's the capital of Latvia?"}]
# Greedy, seeded, short: the same request on the base model and on each adapter.
SAMPLING = {"temperature": 0, "seed": 11, "max_tokens": 24}


@pytest.fixture(scope="module")
def adapters(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """The two adapters, served by the bundled model's pool for this module."""
    from worker.settings import WorkerSettings

    cache = WorkerSettings.load().cache_dir
    folders = {
        name: make_lora_adapter(cache, tmp_path_factory.mktemp(name), seed=seed)
        for seed, name in enumerate(ADAPTERS, start=1)
    }
    modules = json.dumps({name: str(folder) for name, folder in folders.items()})
    stack.stop_worker()
    restart_worker(stack, {"STRUCTQ_LORA_MODULES": modules})
    yield folders
    stack.stop_worker()
    restart_worker(stack)


def _bulk(api: httpx.Client, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    response = api.post("/v1/jobs/batch", json={"jobs": jobs})
    assert response.status_code == 200, response.text
    rows = response.json()["data"]
    assert all(row["status"] == 202 for row in rows), rows
    done = wait_for(api, [row["id"] for row in rows])
    return [done[row["id"]] for row in rows]


def test_an_adapter_changes_the_output_of_the_same_greedy_request(api, adapters) -> None:
    jobs = [{"messages": PROMPT, "sampling": SAMPLING}]
    jobs += [{"messages": PROMPT, "sampling": SAMPLING, "model": name} for name in ADAPTERS]
    base, *adapted = _bulk(api, jobs)
    assert all(job["status"] == "succeeded" for job in (base, *adapted)), (base, adapted)
    assert base["model"] == DEFAULT_MODEL and "adapter" not in base
    assert "Riga" in base["result"]["text"], base["result"]["text"]
    texts = {base["result"]["text"]}
    for name, job in zip(ADAPTERS, adapted, strict=True):
        assert (job["model"], job["adapter"]) == (DEFAULT_MODEL, name)
        texts.add(job["result"]["text"])
    # Three different answers: each adapter's weights changed what the model writes.
    assert len(texts) == 3, texts
    # Greedy and seeded: the same adapter job alone gives the same answer again (alone both
    # times: a batch of another shape may flip a near-tied pick, see the next test).
    [alone] = _bulk(api, [jobs[1]])
    [again] = _bulk(api, [jobs[1]])
    assert again["result"]["text"] == alone["result"]["text"]


def test_base_and_adapter_jobs_share_engine_steps(api, adapters) -> None:
    jobs = []
    for _ in range(2):
        for model in (DEFAULT_MODEL, *ADAPTERS):
            jobs.append({"messages": PROMPT, "sampling": SAMPLING, "model": model})
    done = _bulk(api, jobs)
    assert all(job["status"] == "succeeded" for job in done), done
    # Submitted together, all six advanced in the same steps: base and both adapters batched.
    assert all(job["engine"]["max_batch"] >= 3 for job in done), [j["engine"] for j in done]
    by_model: dict[str | None, list[dict[str, Any]]] = {}
    for job in done:
        by_model.setdefault(job.get("adapter"), []).append(job)
    assert set(by_model) == {None, *ADAPTERS}

    def steps(job: dict[str, Any]) -> range:
        return range(job["engine"]["first_step"], job["engine"]["last_step"] + 1)

    # Some engine step ran a base job, an adapter-a job and an adapter-b job together.
    assert any(
        set(steps(base)) & set(steps(a)) & set(steps(b))
        for base in by_model[None]
        for a in by_model[ADAPTERS[0]]
        for b in by_model[ADAPTERS[1]]
    ), [(job.get("adapter"), job["engine"]) for job in done]
    # Batched with adapters, the base model's jobs still answer as the base model alone does
    # (vLLM's CPU LoRA kernels would give them the last slot's adapter: worker/adapters.py).
    for job in by_model[None]:
        assert job["result"]["text"] == "The capital of Latvia is Riga.", job["result"]
    # No job ran with another's weights: no adapter's answer is the base's or the other's. (Two
    # copies of one adapter job may differ: random adapter weights leave near-tied logits, and
    # vLLM's CPU kernels are not batch-invariant, so a greedy pick can flip with the batch's
    # shape; a CI run saw it.)
    texts = {name: {j["result"]["text"] for j in jobs} for name, jobs in by_model.items()}
    a, b = (texts[name] for name in ADAPTERS)
    assert not (a & b) and not ((a | b) & texts[None]), texts


def test_the_model_list_shows_each_adapter_with_its_parent(api, adapters) -> None:
    cards = {card["id"]: card for card in api.get("/v1/models").json()["data"]}
    assert cards[DEFAULT_MODEL]["parent"] is None
    for name, folder in adapters.items():
        card = cards[name]
        assert card["parent"] == DEFAULT_MODEL
        assert card["root"] == str(folder.resolve())
        assert card["workers"] == 1


def test_the_openai_route_serves_an_adapter_by_name(stack, api, adapters) -> None:
    client = openai.OpenAI(base_url=f"{stack.api_url}/v1", api_key="unused", max_retries=0)
    models = {m.id: m for m in client.models.list().data}
    assert models["e2e-lora-a"].model_dump()["parent"] == DEFAULT_MODEL
    base = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=PROMPT, temperature=0, seed=11, max_tokens=24
    )
    adapted = client.chat.completions.create(
        model="e2e-lora-a", messages=PROMPT, temperature=0, seed=11, max_tokens=24
    )
    assert adapted.model == "e2e-lora-a"
    assert adapted.choices[0].message.content != base.choices[0].message.content
    # The native route answered the same request the same way.
    [native] = _bulk(api, [{"messages": PROMPT, "sampling": SAMPLING, "model": "e2e-lora-a"}])
    assert native["result"]["text"] == adapted.choices[0].message.content


def test_an_unknown_adapter_is_404_and_nothing_is_enqueued(stack, api, adapters) -> None:
    client = redis.Redis.from_url(stack.redis_url)
    jobs_before = client.zcard(ALL_INDEX)
    response = api.post("/v1/jobs", json={"messages": PROMPT, "model": "e2e-lora-zzz"})
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "model_not_found"
    assert "e2e-lora-zzz" in response.json()["error"]["message"]
    sdk = openai.OpenAI(base_url=f"{stack.api_url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="e2e-lora-zzz", messages=PROMPT, max_tokens=4)
    assert client.zcard(ALL_INDEX) == jobs_before
    assert not any(client.llen(name) for name in queue_lists(DEFAULT_MODEL))
