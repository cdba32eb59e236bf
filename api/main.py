"""Builds the gateway app; nothing but wiring.

Run it with ``python -m api`` (settings from ``STRUCTQ_*``) or
``uvicorn --factory api.main:create_app``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.errors import install_error_handlers
from api.janitor import Janitor
from api.routes import admin, health, jobs, openai
from api.settings import ApiSettings
from api.waiters import CompletionWaiters
from shared.redis_pools import async_client
from shared.store import AsyncJobStore

__all__ = ["create_app"]


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or ApiSettings.load()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = async_client(settings.redis_url, settings.redis_max_connections)
        app.state.redis = client
        app.state.store = AsyncJobStore(client, settings.job_ttl_s)
        # Streaming relays block on XREAD: their own pool, so they never starve other requests.
        app.state.stream_redis = async_client(settings.redis_url, settings.stream_max_connections)
        app.state.waiters = CompletionWaiters(client)
        await app.state.waiters.start()
        janitor = Janitor(app.state.store, settings)
        janitor.start()
        try:
            yield
        finally:
            await janitor.stop()
            await app.state.waiters.stop()
            await app.state.stream_redis.aclose()
            await client.aclose()

    app = FastAPI(
        title="structq",
        version="0.1.0",
        summary="Queue-backed structured LLM generation.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(jobs.router)
    app.include_router(openai.router)
    app.include_router(admin.router)
    app.include_router(health.router)
    return app
