"""structq's errors: a small hierarchy whose behaviour is in attributes.

``http_status`` is what the gateway answers (its one exception handler maps these), ``code``
is the stable machine-readable name clients match on (also the ``error.code`` of a failed
job), ``retryable`` says whether running the same job again could succeed.
"""

from __future__ import annotations

__all__ = [
    "EngineDead",
    "EngineRejected",
    "JobFailure",
    "JobNotFound",
    "OutputInvalid",
    "OutputTruncated",
    "ServiceUnavailable",
    "StructqError",
]


class StructqError(Exception):
    code = "internal_error"
    http_status = 500
    retryable = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class JobNotFound(StructqError):
    code = "job_not_found"
    http_status = 404


class ServiceUnavailable(StructqError):
    """Redis is unreachable or refuses writes: try again shortly."""

    code = "service_unavailable"
    http_status = 503
    retryable = True


class JobFailure(StructqError):
    """A job that ran and failed; the job ends ``failed`` with this code and message."""

    code = "job_failed"

    def __init__(self, message: str, text: str | None = None) -> None:
        super().__init__(message)
        self.text = text


class OutputTruncated(JobFailure):
    """Generation hit ``max_tokens`` before the output conformed to its type."""

    code = "output_truncated"


class OutputInvalid(JobFailure):
    """The engine stopped on its own but the output does not conform (should not happen)."""

    code = "output_invalid"


class EngineRejected(JobFailure):
    """The engine refused the request (vLLM's validation error): running it again won't help."""

    code = "engine_rejected"


class EngineDead(JobFailure):
    """The engine process died under the job."""

    code = "engine_dead"
    retryable = True
