"""FastAPI dependencies, as ``Annotated`` aliases the routes declare."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from api.settings import ApiSettings
from api.waiters import CompletionWaiters
from shared.store import AsyncJobStore

__all__ = ["SettingsDep", "StoreDep", "WaitersDep"]


def _settings(request: Request) -> ApiSettings:
    return request.app.state.settings


def _store(request: Request) -> AsyncJobStore:
    return request.app.state.store


def _waiters(request: Request) -> CompletionWaiters:
    return request.app.state.waiters


SettingsDep = Annotated[ApiSettings, Depends(_settings)]
StoreDep = Annotated[AsyncJobStore, Depends(_store)]
WaitersDep = Annotated[CompletionWaiters, Depends(_waiters)]
