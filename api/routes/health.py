"""Endpoints for probes and scrapers: ``/healthz`` (process up), ``/readyz`` (Redis
reachable), ``/metrics`` (Prometheus; docs/observability.md). None asks for an API key."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from api.metrics import metrics_response

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> dict[str, str]:
    # A Redis error here becomes a 503 through the gateway's error handler.
    await request.app.state.redis.ping()
    return {"status": "ready"}


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    return await metrics_response(request.app.state.redis, request.app.state.settings)
