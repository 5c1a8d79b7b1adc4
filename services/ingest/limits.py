"""Request-size limit: a body larger than `settings.max_request_bytes` gets 413 before any work is done.

Checked on `Content-Length` when present and counted while streaming otherwise (chunked uploads).
Batch-size limits (events per request) are validation rules of the routes themselves (422).
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.ingest.problems import PROBLEM_JSON, Problem, problem_bytes, problem_type


class _TooLargeError(Exception):
    pass


def _too_large(limit: int) -> tuple[dict[str, object], dict[str, object]]:
    body = problem_bytes(Problem(type=problem_type("request-too-large"), title="Payload too large", status=413,
                                 detail=f"request bodies are limited to {limit} bytes"))
    return ({"type": "http.response.start", "status": 413,
             "headers": [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode())]},
            {"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(send)
            return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLargeError
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLargeError:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        start, body = _too_large(self.max_bytes)
        await send(start)
        await send(body)
