"""Request body size limit, before anything else reads the body."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import openai_error
from api.metrics import refused
from shared.errors import ErrorCode

__all__ = ["BodyLimit"]

_METHODS_WITH_BODY = {"POST", "PUT", "PATCH"}


class BodyLimit:
    """Pure ASGI middleware: a body over ``max_bytes`` gets 413 without reaching the app (a
    lying or absent Content-Length included: the body is counted as it arrives). Paths in
    ``streamed`` pass through untouched: their routes read the body as a stream and enforce
    their own, larger limit (file uploads)."""

    def __init__(self, app: ASGIApp, max_bytes: int, streamed: tuple[str, ...] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.streamed = streamed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in _METHODS_WITH_BODY
            or scope["path"] in self.streamed
        ):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending it all
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(scope, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: disconnect notices, as usual

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, send: Send) -> None:
        message = f"request body larger than {self.max_bytes} bytes (STRUCTQ_MAX_BODY_BYTES)"
        refused(413, ErrorCode.PAYLOAD_TOO_LARGE)
        error: dict[str, object]
        if scope["path"].startswith(("/v1/chat/completions", "/v1/completions")):
            error = openai_error(413, message, ErrorCode.PAYLOAD_TOO_LARGE)
        else:
            error = {"code": ErrorCode.PAYLOAD_TOO_LARGE, "message": message}
        body = json.dumps({"error": error}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
