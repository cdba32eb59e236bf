"""Builds the gateway app; nothing but wiring.

Run it with ``python -m api`` (settings from ``STRUCTQ_*``) or
``uvicorn --factory api.main:create_app``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from fastapi import FastAPI

from api.errors import install_error_handlers
from api.routes import health, jobs
from api.settings import ApiSettings
from api.waiters import CompletionWaiters
from shared.store import AsyncJobStore

__all__ = ["create_app"]


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or ApiSettings.load()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Blocking pool: past its size a request waits for a connection; redis-py's default
        # pool refuses outright ("Too many connections"), turning a burst into 503s.
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.redis_url, max_connections=settings.redis_max_connections, timeout=10
        )
        client = aioredis.Redis(connection_pool=pool)
        app.state.redis = client
        app.state.store = AsyncJobStore(client, settings.job_ttl_s)
        app.state.waiters = CompletionWaiters(client)
        await app.state.waiters.start()
        try:
            yield
        finally:
            await app.state.waiters.stop()
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
    app.include_router(health.router)
    return app
