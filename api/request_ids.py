"""Request ids: every request gets one, every response carries it (``X-Request-ID``).

The id is the request's ``X-Request-ID`` when it is a sane one (at most 128 characters of
``A-Z a-z 0-9 . _ : -``), else a new one (32 hex digits). While the request is served it is in
the log context (``shared.logs``), so the gateway's log lines about it carry it, and a job it
submits stores it (``Job.request_id``): the worker's and the webhook worker's lines about the
job carry it too.
"""

from __future__ import annotations

import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import logs

__all__ = ["HEADER", "SCOPE_KEY", "RequestIds", "request_id_of"]

HEADER = "X-Request-ID"
# Where the id is kept in the ASGI scope: for handlers that run outside the log context (the
# handler of unexpected errors runs after this middleware has returned).
SCOPE_KEY = "structq.request_id"

_VALID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_HEADER_RAW = HEADER.lower().encode()


def request_id_of(scope: Scope) -> str | None:
    value = scope.get(SCOPE_KEY)
    return value if isinstance(value, str) else None


def _incoming(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == _HEADER_RAW:
            text = value.decode("latin-1")
            return text if _VALID.fullmatch(text) else None
    return None


class RequestIds:
    """Pure ASGI middleware: the request's id in the log context and on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming(scope) or uuid.uuid4().hex
        scope[SCOPE_KEY] = request_id
        header = (_HEADER_RAW, request_id.encode())

        async def with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", ()) if h[0].lower() != _HEADER_RAW]
                message = {**message, "headers": [*headers, header]}
            await send(message)

        with logs.bind(request_id=request_id):
            await self.app(scope, receive, with_id)
