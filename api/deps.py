"""FastAPI dependencies, as ``Annotated`` aliases the routes declare.

They are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in a thread pool,
a thread hop per dependency per request that cost the gateway a large share of its throughput.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from api.settings import ApiSettings
from api.waiters import CompletionWaiters
from shared.store import AsyncJobStore

__all__ = ["ClientDep", "SettingsDep", "StoreDep", "WaitersDep"]


async def _settings(request: Request) -> ApiSettings:
    return request.app.state.settings


async def _store(request: Request) -> AsyncJobStore:
    return request.app.state.store


async def _waiters(request: Request) -> CompletionWaiters:
    return request.app.state.waiters


async def _client(request: Request) -> str:
    # Who is calling: scopes Idempotency-Keys. One shared scope until API keys exist.
    return "anonymous"


ClientDep = Annotated[str, Depends(_client)]
SettingsDep = Annotated[ApiSettings, Depends(_settings)]
StoreDep = Annotated[AsyncJobStore, Depends(_store)]
WaitersDep = Annotated[CompletionWaiters, Depends(_waiters)]
