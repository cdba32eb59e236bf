"""Which pool serves a requested model name, and the model list (``/v1/models``).

A *pool* is the workers of one base model, behind that model's queue: STRUCTQ_MODEL and each of
STRUCTQ_EXTRA_MODELS. A LoRA adapter is served by the pool of its base model
(STRUCTQ_LORA_MODULES on its workers): its jobs go to that queue with the adapter named in the
job, and the engine batches them with the base model's and other adapters' jobs.

The gateway learns adapters from the workers: each announces its own with every heartbeat
(``shared.keys.ADAPTERS``), and the gateway keeps routing an adapter for STRUCTQ_ADAPTER_TTL_S
after it was last announced, so a pool scaled to zero still takes its adapters' jobs. A name
that is neither a served model nor a known adapter is a 404 before anything is enqueued.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis
from pydantic import ValidationError

from api.errors import ModelNotFound
from api.settings import ApiSettings
from shared.keys import ADAPTERS
from shared.records import AdapterRecord
from shared.workers import live_workers

__all__ = ["ModelDirectory", "Route", "model_cards"]

# How long the adapters read from Redis are used before they are read again, and how soon a
# name not among them makes the gateway read them again (a worker that just came up).
_FRESH_S = 2.0
_MISS_REREAD_S = 0.25


@dataclass(frozen=True, slots=True)
class Route:
    """Where a job goes: its pool's model (the queue), and the adapter it runs with."""

    model: str
    adapter: str | None = None


class ModelDirectory:
    """The served models (from the settings) and the adapters (from Redis, read at most every
    ``_FRESH_S``, sooner for a name not known yet)."""

    def __init__(self, settings: ApiSettings, client: aioredis.Redis | None) -> None:
        self._settings = settings
        self._models = frozenset(settings.models)
        self._redis = client
        self._adapters: dict[str, str] = {}  # adapter -> its base model
        self._read_at = -float("inf")
        self._lock = asyncio.Lock()

    async def route(self, name: str | None) -> Route:
        """The pool and adapter for the ``model`` a job asks for (None: STRUCTQ_MODEL)."""
        if name is None:
            return Route(self._settings.model)
        if name in self._models:
            return Route(name)
        parent = await self._parent(name)
        if parent is None:
            raise ModelNotFound(
                f"unknown model {name!r}: it does not exist here; served: "
                f"{', '.join(self._settings.models)}, and the LoRA adapters their workers "
                "announce (GET /v1/models)",
                param="model",
            )
        return Route(parent, name)

    async def _parent(self, name: str) -> str | None:
        age = time.monotonic() - self._read_at
        if self._redis is not None and (
            age >= _FRESH_S or (name not in self._adapters and age >= _MISS_REREAD_S)
        ):
            async with self._lock:
                if time.monotonic() - self._read_at >= _MISS_REREAD_S:
                    self._adapters = await self._read(self._redis)
                    self._read_at = time.monotonic()
        return self._adapters.get(name)

    async def _read(self, client: aioredis.Redis) -> dict[str, str]:
        raw = cast(dict[bytes, bytes], await client.hgetall(ADAPTERS))
        oldest = time.time() - self._settings.adapter_ttl_s
        adapters = {}
        for name, value in raw.items():
            try:
                record = AdapterRecord.model_validate_json(value)
            except ValidationError:  # not ours to fix; the next announcement rewrites it
                continue
            if record.seen >= oldest and record.parent in self._models:
                adapters[name.decode()] = record.parent
        return adapters


async def model_cards(client: aioredis.Redis) -> dict[str, dict[str, Any]]:
    """What running workers serve (their announcements), as vLLM's server lists it: each base
    model, and each LoRA adapter with its folder as ``root`` and its base model as ``parent``;
    each with the number of live workers serving it."""
    cards: dict[str, dict[str, Any]] = {}

    def card(name: str, root: str, parent: str | None, ready: int, length: int | None) -> None:
        entry = cards.setdefault(
            name,
            {
                "id": name,
                "object": "model",
                "created": ready,
                "owned_by": "structq",
                "root": root,
                "parent": parent,
                "max_model_len": length,
                "workers": 0,
            },
        )
        entry["workers"] += 1
        entry["created"] = min(entry["created"], ready)

    for worker in await live_workers(client):
        ready = int(worker.ready_at.timestamp())
        card(worker.model, worker.model, None, ready, worker.max_model_len)
        for name, root in worker.adapters.items():
            card(name, root, worker.model, ready, worker.max_model_len)
    return cards
