"""Refuse NUL characters in paths, query strings and JSON bodies with a 422, before any handler runs.

PostgreSQL text and JSONB values cannot hold U+0000, and none of our identifiers or fields has a use for
it: letting one through would fail deep in a query (a 500) instead of telling the caller what is wrong.
The usage ingest endpoint is exempt because it answers per event (`shared.sdk.events` refuses NUL in an
event); Stripe webhooks are exempt because the signature must be checked on the untouched body first.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote_to_bytes

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.ingest.problems import PROBLEM_JSON, FieldError, Problem, problem_type

_ESCAPED_NUL = b"\\u0000"


def _paths_with_nul(value: Any, path: str) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{path}.{key}" if path else str(key)
            if "\x00" in key:
                yield here
            yield from _paths_with_nul(item, here)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths_with_nul(item, f"{path}.{index}" if path else str(index))
    elif isinstance(value, str) and "\x00" in value:
        yield path or "body"


def nul_fields(body: bytes) -> list[str]:
    """Dotted paths of JSON fields (keys or string values) holding U+0000; [] when there is none."""
    if b"\x00" not in body and _ESCAPED_NUL not in body:
        return []
    try:
        return list(_paths_with_nul(orjson.loads(body), ""))
    except orjson.JSONDecodeError:
        return ["body"] if b"\x00" in body else []


async def _refuse(send: Send, fields: list[str]) -> None:
    problem = Problem(type=problem_type("nul-character"), title="NUL character refused", status=422,
                      detail="text values must not contain the NUL character (U+0000)",
                      errors=[FieldError(field=f, reason="contains U+0000") for f in fields])
    payload = orjson.dumps(problem.model_dump(mode="json"))
    await send({"type": "http.response.start", "status": 422,
                "headers": [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


class NulGuardMiddleware:
    def __init__(self, app: ASGIApp, *, exempt_paths: frozenset[str]) -> None:
        self.app = app
        self.exempt_paths = exempt_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt_paths:
            await self.app(scope, receive, send)
            return
        if "\x00" in scope["path"]:
            await _refuse(send, ["path"])
            return
        if b"\x00" in unquote_to_bytes(scope.get("query_string", b"")):
            await _refuse(send, ["query"])
            return
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        fields = nul_fields(body)
        if fields:
            await _refuse(send, fields)
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
