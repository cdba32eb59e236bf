"""Builds the gateway app; nothing but wiring.

Run it with ``python -m api`` (settings from ``STRUCTQ_*``) or
``uvicorn --factory api.main:create_app``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from fastapi import FastAPI

from api.admission import Admission
from api.auth import KeyRing, rate_script
from api.batch_driver import BatchDriver
from api.batches import Batches
from api.deps import Gateway
from api.errors import install_error_handlers
from api.file_store import FileStore, RedisFileStore, S3FileStore
from api.files import Files
from api.janitor import Janitor
from api.limits import BodyLimit
from api.metrics import HttpMetrics
from api.request_ids import RequestIds
from api.routes import admin, batches, bulk, files, health, jobs, openai
from api.settings import ApiSettings
from api.waiters import CompletionWaiters
from shared.async_store import AsyncJobStore
from shared.redis_pools import async_client

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def _file_store(settings: ApiSettings, client: aioredis.Redis) -> FileStore:
    if settings.file_store == "s3":
        assert settings.s3_bucket is not None  # ApiSettings requires it with s3
        return S3FileStore.connect(
            settings.s3_bucket, settings.s3_prefix, settings.s3_endpoint_url, settings.s3_region
        )
    return RedisFileStore(client)


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or ApiSettings.load()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = async_client(settings.redis_url, settings.redis_max_connections)
        app.state.redis = client
        app.state.store = AsyncJobStore(client, settings.job_ttl_s)
        app.state.rate_script = rate_script(client)
        app.state.admission = Admission.from_settings(settings, client)
        checker = app.state.admission.checker
        warming = None
        if checker is not None:  # start the compile processes without holding up start-up
            warming = asyncio.create_task(checker.warm())
        # Streaming relays block on XREAD: their own pool, so they never starve other requests.
        app.state.stream_redis = async_client(settings.redis_url, settings.stream_max_connections)
        app.state.waiters = CompletionWaiters(client)
        await app.state.waiters.start()
        app.state.gateway = Gateway(
            settings, app.state.store, app.state.admission, app.state.waiters
        )
        janitor = Janitor(app.state.store, settings)
        janitor.start()
        app.state.files = Files(client, _file_store(settings, client), settings)
        app.state.batches = Batches(client, app.state.files, settings)
        driver = BatchDriver(
            client,
            app.state.store,
            app.state.batches,
            app.state.files,
            settings,
            app.state.admission,
        )
        driver.start()
        try:
            yield
        finally:
            await driver.stop()
            await janitor.stop()
            if warming is not None:
                warming.cancel()
            if checker is not None:
                checker.close()
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
    app.state.keys = KeyRing(settings.api_keys)
    if not settings.api_keys:
        log.warning("STRUCTQ_INSECURE_NO_AUTH: no API keys, every caller is an admin")
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, streamed=("/v1/files",))
    app.add_middleware(HttpMetrics)  # outermost: it counts BodyLimit's 413s too
    app.add_middleware(RequestIds)  # outermost: every response carries X-Request-ID
    install_error_handlers(app)
    app.include_router(bulk.router)
    app.include_router(jobs.router)
    app.include_router(openai.router)
    app.include_router(files.router)
    app.include_router(batches.router)
    app.include_router(admin.router)
    app.include_router(health.router)
    return app
