"""The gateway's errors: its own error classes (beside the shared ones of ``shared.errors``),
and its one mapping from errors to HTTP answers.

Every error body has the same shape: ``{"error": {"code", "message"}}``, plus ``detail`` (the
list of field problems) for a request that failed validation. Nothing else leaks out.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from api.metrics import refused
from api.request_ids import HEADER, request_id_of
from shared.errors import ErrorCode, ServiceUnavailable, StructqError

__all__ = [
    "CompileBusy",
    "Forbidden",
    "InvalidRequest",
    "JobFailedError",
    "JobRefused",
    "JobTimedOut",
    "JobsInFlight",
    "ModelNotFound",
    "QueueFull",
    "RateLimited",
    "SpecTooLarge",
    "TooManyQueued",
    "Unauthorized",
    "install_error_handlers",
    "invalid_field",
    "openai_error",
    "openai_error_response",
    "validation_detail",
]

log = logging.getLogger(__name__)


# Refusals of a request, before anything is enqueued.


class InvalidRequest(StructqError):
    """A request this server refuses; ``param`` names the field (OpenAI's error shape)."""

    code = ErrorCode.INVALID_REQUEST
    http_status = 422

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message, param=param)


class SpecTooLarge(ValueError):
    """A spec over one of the limits; the message names it. (A ``ValueError``: raised inside
    request validation, where it becomes a 422 with the field's location.)"""


class Unauthorized(StructqError):
    code = ErrorCode.UNAUTHORIZED
    http_status = 401
    headers = {"WWW-Authenticate": 'Bearer realm="structq"'}  # noqa: RUF012


class Forbidden(StructqError):
    code = ErrorCode.FORBIDDEN
    http_status = 403


class ModelNotFound(StructqError):
    code = ErrorCode.MODEL_NOT_FOUND
    http_status = 404


class RateLimited(StructqError):
    code = ErrorCode.RATE_LIMITED
    http_status = 429
    retryable = True

    def __init__(self, message: str, retry_after_s: float, **extra: object) -> None:
        super().__init__(message, **extra)
        self.headers = {"Retry-After": str(max(1, math.ceil(retry_after_s)))}


class TooManyQueued(StructqError):
    """The key already has STRUCTQ_MAX_QUEUED_PER_KEY jobs waiting."""

    code = ErrorCode.TOO_MANY_QUEUED
    http_status = 429
    retryable = True
    headers = {"Retry-After": "5"}  # noqa: RUF012


class QueueFull(StructqError):
    """The model's queue is deeper than STRUCTQ_MAX_QUEUE_DEPTH: come back later."""

    code = ErrorCode.QUEUE_FULL
    http_status = 503
    retryable = True
    headers = {"Retry-After": "10"}  # noqa: RUF012


class CompileBusy(StructqError):
    """Every compile-check process is busy: the spec could not be checked in time."""

    code = ErrorCode.COMPILE_BUSY
    http_status = 503
    retryable = True


# A synchronous (OpenAI-compatible) request whose jobs did not give an answer.


class JobTimedOut(StructqError):
    code = ErrorCode.TIMEOUT
    http_status = 504


class JobFailedError(StructqError):
    code = ErrorCode.JOB_FAILED
    http_status = 500


class JobRefused(StructqError):
    code = ErrorCode.ENGINE_REJECTED
    http_status = 400


class JobsInFlight(StructqError):
    """Redis failed after the request's jobs were queued: they are cancelled (as far as Redis
    lets us), and a retry would queue new ones, so the client is told not to retry blindly."""

    code = ErrorCode.SERVICE_UNAVAILABLE
    http_status = 503


def invalid_field(loc: tuple[str | int, ...], msg: str) -> RequestValidationError:
    """A validation error for one field, found after pydantic's own checks."""
    return RequestValidationError([{"type": "value_error", "loc": loc, "msg": msg}])


def _body(code: str, message: str, **extra: object) -> dict[str, object]:
    return {"error": {"code": code, "message": message}, **extra}


# Routes that answer errors in OpenAI's shape, for the openai SDK and the clients built on it.
_OPENAI_PATHS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/models",
    "/v1/files",
    "/v1/batches",
)


def _openai_route(request: Request) -> bool:
    return request.url.path.startswith(_OPENAI_PATHS)


def _openai_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def openai_error(status: int, message: str, code: str, param: object = None) -> dict[str, object]:
    """The ``error`` object of OpenAI's error body."""
    return {"message": message, "type": _openai_type(status), "param": param, "code": code}


def openai_error_response(exc: StructqError, headers: dict[str, str] | None = None) -> JSONResponse:
    """``exc`` answered in OpenAI's error shape, with ``headers`` added."""
    response = _openai_response(
        exc.http_status, exc.message, exc.code, exc.extra.get("param"), exc.retryable
    )
    response.headers.update({**exc.headers, **(headers or {})})
    return response


def _openai_response(
    status: int, message: str, code: str, param: object, retryable: bool
) -> JSONResponse:
    # The openai SDK retries 409s and 5xx unless told not to: a retry would submit new jobs.
    headers = {"Retry-After": "1"} if retryable else {"x-should-retry": "false"}
    body = {"error": openai_error(status, message, code, param)}
    return JSONResponse(status_code=status, content=body, headers=headers)


def validation_detail(errors: Sequence[Any]) -> tuple[str, list[dict[str, Any]]]:
    """A validation failure as the API reports it: a one-line summary, and each field's
    problem (``detail``)."""
    detail = [{"loc": list(err["loc"]), "msg": err["msg"], "type": err["type"]} for err in errors]
    summary = "; ".join(
        f"{'.'.join(str(p) for p in d['loc'] if p != 'body') or 'body'}: {d['msg']}" for d in detail
    )
    return summary, detail


async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    summary, detail = validation_detail(exc.errors())
    refused(422, ErrorCode.INVALID_REQUEST)
    if _openai_route(request):
        param = ".".join(str(p) for p in detail[0]["loc"] if p != "body") if detail else None
        return _openai_response(
            422, summary, ErrorCode.INVALID_REQUEST, param or None, retryable=False
        )
    return JSONResponse(
        status_code=422, content=_body(ErrorCode.INVALID_REQUEST, summary, detail=detail)
    )


async def _structq(request: Request, exc: StructqError) -> JSONResponse:
    refused(exc.http_status, exc.code)
    if _openai_route(request):
        return openai_error_response(exc)
    headers = {"Retry-After": "1"} if exc.retryable else {}
    body = {"error": {"code": exc.code, "message": exc.message, **exc.extra}}
    return JSONResponse(
        status_code=exc.http_status, content=body, headers={**headers, **exc.headers}
    )


async def _redis_down(request: Request, exc: redis.exceptions.RedisError) -> JSONResponse:
    log.warning("redis error on %s %s: %s", request.method, request.url.path, exc)
    return await _structq(request, ServiceUnavailable("the job store is unavailable; retry"))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # A bug of ours: the client learns only that, never a trace, a path or another's data.
    # This handler runs outside the request-id middleware: the id comes from the scope.
    request_id = request_id_of(request.scope)
    extra = {"request_id": request_id} if request_id else {}
    log.error(
        "unhandled error on %s %s", request.method, request.url.path, exc_info=exc, extra=extra
    )
    message = "internal error; the gateway's log has the details"
    refused(500, ErrorCode.INTERNAL_ERROR)
    if _openai_route(request):
        response = _openai_response(500, message, ErrorCode.INTERNAL_ERROR, None, retryable=False)
    else:
        response = JSONResponse(status_code=500, content=_body(ErrorCode.INTERNAL_ERROR, message))
    if request_id:
        response.headers[HEADER] = request_id
    return response


def install_error_handlers(app: FastAPI) -> None:
    # Starlette types a handler as taking any Exception; each of these takes the class it is
    # registered for, which is what Starlette passes it.
    handlers: list[tuple[type[Exception], Any]] = [
        (RequestValidationError, _validation),
        (StructqError, _structq),
        (redis.exceptions.RedisError, _redis_down),
    ]
    for kind, handler in handlers:
        app.add_exception_handler(kind, handler)
    app.add_exception_handler(Exception, _unexpected)
