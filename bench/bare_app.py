"""The gateway benchmark's yardstick: a bare FastAPI endpoint that parses the same job body
(``JobCreate``, with all its checks) and does one Redis pipeline (SET + LPUSH), served with
the same uvicorn settings as structq's gateway."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from fastapi import FastAPI

from shared.jobs import JobCreate


def create_app() -> FastAPI:
    client = aioredis.from_url(os.environ["STRUCTQ_REDIS_URL"])

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await client.aclose()

    app = FastAPI(lifespan=lifespan)

    @app.post("/v1/jobs", status_code=202)
    async def create(body: JobCreate) -> dict[str, str]:
        job_id = str(uuid.uuid4())
        async with client.pipeline(transaction=False) as pipe:
            pipe.set(f"bare:job:{job_id}", body.model_dump_json())
            pipe.lpush("bare:queue", job_id)
            await pipe.execute()
        return {"id": job_id, "status": "queued"}

    return app


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(
        "bench.bare_app:create_app",
        factory=True,
        host="127.0.0.1",
        port=int(os.environ["STRUCTQ_PORT"]),
        log_level="info",
        access_log=False,
    )
