"""The gateway's one mapping from errors to HTTP answers.

Every error body has the same shape: ``{"error": {"code", "message"}}``, plus ``detail`` (the
list of field problems) for a request that failed validation. Nothing else leaks out.
"""

from __future__ import annotations

import logging

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from shared.errors import ServiceUnavailable, StructqError

__all__ = ["install_error_handlers", "invalid_field"]

log = logging.getLogger(__name__)


def invalid_field(loc: tuple[str | int, ...], msg: str) -> RequestValidationError:
    """A validation error for one field, found after pydantic's own checks."""
    return RequestValidationError([{"type": "value_error", "loc": loc, "msg": msg}])


def _body(code: str, message: str, **extra: object) -> dict[str, object]:
    return {"error": {"code": code, "message": message}, **extra}


async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
    detail = [
        {"loc": list(err["loc"]), "msg": err["msg"], "type": err["type"]} for err in exc.errors()
    ]
    summary = "; ".join(
        f"{'.'.join(str(p) for p in d['loc'] if p != 'body') or 'body'}: {d['msg']}" for d in detail
    )
    return JSONResponse(status_code=422, content=_body("invalid_request", summary, detail=detail))


async def _structq(_: Request, exc: StructqError) -> JSONResponse:
    headers = {"Retry-After": "1"} if exc.retryable else None
    body = {"error": {"code": exc.code, "message": exc.message, **exc.extra}}
    return JSONResponse(status_code=exc.http_status, content=body, headers=headers)


async def _redis_down(request: Request, exc: redis.exceptions.RedisError) -> JSONResponse:
    log.warning("redis error on %s %s: %s", request.method, request.url.path, exc)
    return await _structq(request, ServiceUnavailable("the job store is unavailable; retry"))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)  # type: ignore[arg-type]
    app.add_exception_handler(StructqError, _structq)  # type: ignore[arg-type]
    app.add_exception_handler(redis.exceptions.RedisError, _redis_down)  # type: ignore[arg-type]
