"""The client's exceptions: every one a :class:`StructqError` with the API's ``code``, its
``message`` and whether trying again could succeed (``retryable``).

An HTTP error of the gateway (``{"error": {"code", "message", ...}}``) is an :class:`APIError`
of the subclass of its status; a job that ended without a result is a :class:`JobFailed`
carrying the job's ``error.code`` (``output_truncated``, ``deadline_exceeded``, ``cancelled``,
...) and the job itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from structq.models import JobRecord

__all__ = [
    "APIConnectionError",
    "APIError",
    "AuthenticationError",
    "ConflictError",
    "InvalidRequest",
    "JobFailed",
    "JobTimeout",
    "NotFound",
    "OutputValidationError",
    "PermissionDenied",
    "RateLimited",
    "ServerError",
    "ServiceUnavailable",
    "StructqError",
    "WebhookVerificationError",
]

# Job error codes for which running the job again (``Job.retry()``) may well succeed.
_RETRYABLE_JOB_CODES = frozenset(
    {"max_attempts_exceeded", "deadline_exceeded", "expired", "internal_error", "unreadable_job"}
)


class StructqError(Exception):
    """Base of every error the client raises."""

    code: str = "error"
    retryable: bool = False

    def __init__(self, message: str, *, code: str | None = None, retryable: bool | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if retryable is not None:
            self.retryable = retryable

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


class APIError(StructqError):
    """The gateway answered an error: ``status`` is the HTTP status, ``body`` the error
    object (``code``, ``message`` and any more fields, e.g. a conflicting job's ``status``),
    ``detail`` the field problems of a 422, ``retry_after`` the ``Retry-After`` in seconds."""

    def __init__(
        self,
        message: str,
        *,
        code: str,
        status: int,
        body: dict[str, Any] | None = None,
        detail: Any = None,
        retry_after: float | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message, code=code, retryable=retryable)
        self.status = status
        self.body = body or {}
        self.detail = detail
        self.retry_after = retry_after


class InvalidRequest(APIError):
    """422: the request was refused; nothing was enqueued (``detail`` lists the problems)."""


class AuthenticationError(APIError):
    """401: no API key, or an invalid one."""


class PermissionDenied(APIError):
    """403: the key may not do this (e.g. an admin endpoint)."""


class NotFound(APIError):
    """404: no such job (or another key's)."""


class ConflictError(APIError):
    """409: the request does not fit the job's state (``body["status"]``)."""


class RateLimited(APIError):
    """429: the key's rate limit or its cap of queued jobs; ``retry_after`` says when."""

    retryable = True


class ServiceUnavailable(APIError):
    """503: the queue is full or the job store unreachable; ``retry_after`` says when."""

    retryable = True


class ServerError(APIError):
    """Any other 5xx."""


class APIConnectionError(StructqError):
    """The gateway could not be reached (after the client's retries)."""

    code = "connection_error"
    retryable = True


class JobTimeout(StructqError):
    """A wait ended before the job finished; the job goes on (``job``)."""

    code = "timeout"
    retryable = True

    def __init__(self, message: str, job: JobRecord | None = None) -> None:
        super().__init__(message)
        self.job = job


class JobFailed(StructqError):
    """The job ended ``failed``, ``cancelled`` or ``expired``: ``code`` is its ``error.code``,
    ``text`` the partial output (if any), ``job`` the record."""

    def __init__(self, job: JobRecord) -> None:
        error = job.error
        code = error.code if error is not None else str(job.status)
        message = error.message if error is not None else f"job {job.id} ended {job.status}"
        super().__init__(
            f"job {job.id} {job.status}: {message}",
            code=code,
            retryable=code in _RETRYABLE_JOB_CODES,
        )
        self.job = job
        self.job_id = job.id
        self.text = error.text if error is not None else None


class StreamReset(StructqError):
    """A streamed job was re-run (its worker died or was cut off) and the re-run wrote
    otherwise than the text already streamed: that text is void. The job goes on; its record
    (``Job.refresh``, ``Job.result``) has the final output."""

    code = "stream_reset"
    retryable = True

    def __init__(self, job_id: str) -> None:
        super().__init__(
            f"job {job_id} was re-run and wrote otherwise than the text streamed so far; "
            "that text is void: read the job for its output"
        )
        self.job_id = job_id


class OutputValidationError(StructqError):
    """The job succeeded but its value does not validate as the requested Python type."""

    code = "output_invalid"

    def __init__(self, message: str, job: JobRecord | None = None) -> None:
        super().__init__(message)
        self.job = job


class WebhookVerificationError(StructqError):
    """A webhook whose signature, headers or timestamp do not verify."""

    code = "invalid_signature"


_BY_STATUS: dict[int, type[APIError]] = {
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    409: ConflictError,
    422: InvalidRequest,
    429: RateLimited,
    503: ServiceUnavailable,
}


def api_error(
    status: int,
    body: Any,
    retry_after: float | None = None,
) -> APIError:
    """The exception for an error answer: ``body`` is the parsed JSON (or None)."""
    error: dict[str, Any] = {}
    detail: Any = None
    if isinstance(body, dict):
        raw = body.get("error")
        if isinstance(raw, dict):
            error = raw
            detail = body.get("detail", raw.get("detail"))
        elif "detail" in body:  # a framework answer (e.g. an unknown route)
            detail = body["detail"]
    code = str(error.get("code") or _default_code(status))
    message = str(error.get("message") or detail or f"HTTP {status}")
    kind = _BY_STATUS.get(status, ServerError if status >= 500 else APIError)
    return kind(
        message,
        code=code,
        status=status,
        body=error,
        detail=detail,
        retry_after=retry_after,
        retryable=status in (429, 503) or None,
    )


def _default_code(status: int) -> str:
    return {
        401: "unauthorized",
        403: "forbidden",
        404: "not_found",
        405: "not_found",
        409: "conflict",
        422: "invalid_request",
        429: "rate_limited",
        503: "service_unavailable",
    }.get(status, "internal_error" if status >= 500 else "error")
