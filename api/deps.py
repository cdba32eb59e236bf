"""FastAPI dependencies, as ``Annotated`` aliases the routes declare."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from api.settings import ApiSettings
from shared.store import AsyncJobStore

__all__ = ["SettingsDep", "StoreDep"]


def _settings(request: Request) -> ApiSettings:
    return request.app.state.settings


def _store(request: Request) -> AsyncJobStore:
    return request.app.state.store


SettingsDep = Annotated[ApiSettings, Depends(_settings)]
StoreDep = Annotated[AsyncJobStore, Depends(_store)]
