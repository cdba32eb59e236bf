"""One line of a batch: read from the input file into job bodies, and answered in the output
or error file, in OpenAI's batch line formats.

An input line is ``{"custom_id", "method": "POST", "url", "body"}``, ``url`` the batch's
endpoint; for ``/v1/jobs`` a bare native job body (with an optional ``custom_id`` beside its
fields) is taken too. ``body`` is what the endpoint takes as a single request, checked the
same way: a line it would refuse gets the same error, in the error file.

An output line is ``{"id", "custom_id", "response": {"status_code", "request_id", "body"},
"error": null}``; ``body`` is what the endpoint would have answered (for ``/v1/jobs``, the job's
record with its result: text, parsed ``value``, usage). A line that failed goes to the error
file, with ``error: {"code", "message"}`` (and ``response`` when a job ran).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from api.errors import openai_error, validation_detail
from api.openai.requests import ChatRequest, CompletionRequest, chat_jobs, completion_jobs
from api.openai.responses import chat_response, completion_response, outcome
from api.settings import ApiSettings
from shared.errors import ErrorCode, StructqError
from shared.jobs import JobCreate, JobPublic, JobStatus

__all__ = ["Line", "LineRefused", "answer", "never_ran", "parse", "refused_line"]


@dataclass(frozen=True, slots=True)
class Line:
    custom_id: str
    bodies: list[JobCreate]
    fit_max_tokens: bool  # as the OpenAI routes do when a request gives no max_tokens
    n: int = 1  # choices per prompt (OpenAI's ``n``)


class LineRefused(Exception):
    """A line that runs no job: what a single request of it would have got."""

    def __init__(self, custom_id: str, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.custom_id, self.status, self.code, self.message = custom_id, status, code, message

    def entry(self) -> dict[str, Any]:
        return {"status": self.status, "code": self.code, "message": self.message}


def _refuse(custom_id: str, message: str, status: int = 400) -> LineRefused:
    return LineRefused(custom_id, status, ErrorCode.INVALID_REQUEST, message)


def parse(raw: bytes, number: int, endpoint: str, settings: ApiSettings, timeout_s: float) -> Line:
    """The jobs a line asks for (not yet checked against the deployment: ``service.prepare``
    does that), or LineRefused. ``timeout_s``: what is left of the batch's window, the jobs'
    deadline unless a native line sets its own."""
    fallback = f"line-{number + 1}"
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise _refuse(fallback, f"line {number + 1} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _refuse(fallback, f"line {number + 1} is not a JSON object")
    custom_id = data.get("custom_id")
    if "body" in data or endpoint != "/v1/jobs":
        if not isinstance(custom_id, str) or not custom_id:
            raise _refuse(fallback, "each line needs a custom_id (a non-empty string)")
        if data.get("method", "POST") != "POST":
            raise _refuse(custom_id, "method must be POST")
        if data.get("url", endpoint) != endpoint:
            raise _refuse(custom_id, f"url must be the batch's endpoint, {endpoint}")
        body = data.get("body")
        if not isinstance(body, dict):
            raise _refuse(custom_id, "body must be a JSON object")
    else:  # a bare native job body
        body = {k: v for k, v in data.items() if k != "custom_id"}
        custom_id = custom_id if isinstance(custom_id, str) and custom_id else fallback
    try:
        return _translate(custom_id, endpoint, body, settings, timeout_s)
    except ValidationError as exc:
        summary, _ = validation_detail(exc.errors())
        raise LineRefused(custom_id, 422, ErrorCode.INVALID_REQUEST, summary) from None
    except StructqError as exc:
        raise LineRefused(custom_id, exc.http_status, exc.code, exc.message) from None


def _translate(
    custom_id: str, endpoint: str, body: dict[str, Any], settings: ApiSettings, timeout_s: float
) -> Line:
    if endpoint == "/v1/jobs":
        job = JobCreate.model_validate(body)
        update: dict[str, Any] = {"stream": False}
        if job.deadline is None and job.timeout_s is None:
            update["timeout_s"] = timeout_s
        return Line(custom_id, [job.model_copy(update=update)], False)
    request: ChatRequest | CompletionRequest
    if endpoint == "/v1/chat/completions":
        request = ChatRequest.model_validate({**body, "stream": False})
        jobs = chat_jobs(request, settings.max_tokens_limit, timeout_s)
        fit = request.max_tokens is None and request.max_completion_tokens is None
    else:
        request = CompletionRequest.model_validate({**body, "stream": False})
        jobs = completion_jobs(request, settings.max_tokens_limit, timeout_s)
        fit = request.max_tokens is None
    if request.model is None:
        jobs = [job.model_copy(update={"model": settings.model}) for job in jobs]
    return Line(custom_id, jobs, fit, request.n or 1)


def _line(custom_id: str, response: dict[str, Any] | None, error: dict[str, Any] | None) -> bytes:
    line = {
        "id": f"batch_req_{uuid.uuid4().hex}",
        "custom_id": custom_id,
        "response": response,
        "error": error,
    }
    return json.dumps(line, separators=(",", ":")).encode()


def refused_line(custom_id: str, entry: dict[str, Any]) -> bytes:
    """The error line of a line that ran no job (``LineRefused.entry``)."""
    return _line(custom_id, None, {"code": entry["code"], "message": entry["message"]})


def never_ran(raw: bytes, code: ErrorCode) -> bytes:
    """The error line of a line the batch never reached (cancelled, or past its window)."""
    try:
        custom_id = str(json.loads(raw).get("custom_id") or "")
    except (ValueError, AttributeError):
        custom_id = ""
    message = (
        "the batch was cancelled"
        if code is ErrorCode.BATCH_CANCELLED
        else ("the batch's completion window passed")
    )
    return _line(custom_id, None, {"code": code, "message": message + " before this line ran"})


def answer(
    endpoint: str, custom_id: str, jobs: list[JobPublic | None], n: int = 1
) -> tuple[bool, bytes]:
    """(whether it is an output line, the line) for a line whose jobs all finished."""
    if any(job is None for job in jobs):
        error = {"code": ErrorCode.JOB_NOT_FOUND, "message": "the line's job record is gone"}
        return False, _line(custom_id, None, error)
    done = [job for job in jobs if job is not None]
    request_id = done[0].id
    if endpoint == "/v1/jobs":
        job = done[0]
        body = json.loads(job.model_dump_json(by_alias=True))
        if job.status is JobStatus.SUCCEEDED:
            return True, _line(custom_id, _response(200, request_id, body), None)
        return False, _line(custom_id, _response(200, request_id, body), _job_error(job))
    outcomes = [outcome(job, job.id) for job in done]
    failed = next(
        ((job, o.error) for job, o in zip(done, outcomes, strict=True) if o.error is not None),
        None,
    )
    if failed is not None:
        job, failure = failed
        status = failure.http_status
        body = {"error": openai_error(status, failure.message, failure.code)}
        return False, _line(custom_id, _response(status, request_id, body), _job_error(job))
    model = done[0].served_name
    if endpoint == "/v1/chat/completions":
        rid = "chatcmpl-" + request_id.replace("-", "")
        body = chat_response(rid, model, outcomes, n)
    else:
        rid = "cmpl-" + request_id.replace("-", "")
        body = completion_response(rid, model, outcomes, n)
    return True, _line(custom_id, _response(200, request_id, body), None)


def _job_error(job: JobPublic) -> dict[str, Any]:
    """A failed line's ``error``: its job's own (``cancelled``, ``expired``, ...)."""
    if job.error is not None:
        return {"code": job.error.code, "message": job.error.message}
    return {"code": job.status.value, "message": f"the job ended {job.status.value}"}


def _response(status: int, request_id: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"status_code": status, "request_id": request_id, "body": body}
