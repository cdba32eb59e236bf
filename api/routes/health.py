"""Health endpoints for probes: ``/healthz`` (process up) and ``/readyz`` (Redis reachable)."""

from __future__ import annotations

from fastapi import APIRouter, Request

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
