"""FastAPI dependencies, as ``Annotated`` aliases the routes declare.

They are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in a thread pool,
a thread hop per dependency per request that cost the gateway a large share of its throughput.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from api.service import Admission
from api.settings import ApiSettings
from api.waiters import CompletionWaiters
from shared.store import AsyncJobStore

__all__ = ["AdmissionDep", "SettingsDep", "StoreDep", "WaitersDep"]


async def _settings(request: Request) -> ApiSettings:
    return request.app.state.settings


async def _store(request: Request) -> AsyncJobStore:
    return request.app.state.store


async def _admission(request: Request) -> Admission:
    return request.app.state.admission


async def _waiters(request: Request) -> CompletionWaiters:
    return request.app.state.waiters


AdmissionDep = Annotated[Admission, Depends(_admission)]
SettingsDep = Annotated[ApiSettings, Depends(_settings)]
StoreDep = Annotated[AsyncJobStore, Depends(_store)]
WaitersDep = Annotated[CompletionWaiters, Depends(_waiters)]
