"""FastAPI dependencies, as ``Annotated`` aliases the routes declare.

They are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in a thread pool,
a thread hop per dependency per request that cost the gateway a large share of its throughput.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import Depends, Request

from api.admission import Admission
from api.settings import ApiSettings
from api.waiters import CompletionWaiters
from shared.async_store import AsyncJobStore

__all__ = [
    "AdmissionDep",
    "Gateway",
    "GatewayDep",
    "SettingsDep",
    "StoreDep",
    "StreamsDep",
    "WaitersDep",
]


@dataclass(frozen=True, slots=True)
class Gateway:
    """What a gateway process holds while it runs, built once at start-up: one dependency
    hands all of it to a route (each dependency costs every request a call)."""

    settings: ApiSettings
    store: AsyncJobStore
    admission: Admission
    waiters: CompletionWaiters


async def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


async def _settings(request: Request) -> ApiSettings:
    return request.app.state.settings


async def _store(request: Request) -> AsyncJobStore:
    return request.app.state.store


async def _admission(request: Request) -> Admission:
    return request.app.state.admission


async def _waiters(request: Request) -> CompletionWaiters:
    return request.app.state.waiters


async def _streams(request: Request) -> aioredis.Redis:
    """The Redis pool of the streaming relays (their XREADs block: kept apart)."""
    return request.app.state.stream_redis


AdmissionDep = Annotated[Admission, Depends(_admission)]
SettingsDep = Annotated[ApiSettings, Depends(_settings)]
StoreDep = Annotated[AsyncJobStore, Depends(_store)]
WaitersDep = Annotated[CompletionWaiters, Depends(_waiters)]
StreamsDep = Annotated[aioredis.Redis, Depends(_streams)]
GatewayDep = Annotated[Gateway, Depends(_gateway)]
