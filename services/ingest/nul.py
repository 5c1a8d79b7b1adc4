"""Refuse NUL characters in paths, query strings and JSON bodies with a 422, before any handler runs.

PostgreSQL text and JSONB values cannot hold U+0000, and none of our identifiers or fields has a use for
it: letting one through would fail deep in a query (a 500) instead of telling the caller what is wrong.
The usage ingest endpoint is exempt because it answers per event (`shared.sdk.events` refuses NUL in an
event); Stripe webhooks are exempt because the signature must be checked on the untouched body first.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_to_bytes

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from services.ingest.body_guard import BODY_METHODS, flagged_paths, read_body, replaying, send_problem
from services.ingest.problems import FieldError, Problem, problem_type

_ESCAPED_NUL = b"\\u0000"


def _holds_nul(value: Any) -> bool:
    return isinstance(value, str) and "\x00" in value


def nul_fields(body: bytes) -> list[str]:
    """Dotted paths of JSON fields (keys or string values) holding U+0000; [] when there is none."""
    if b"\x00" not in body and _ESCAPED_NUL not in body:
        return []
    try:
        return list(flagged_paths(orjson.loads(body), _holds_nul, _holds_nul))
    except orjson.JSONDecodeError:
        return ["body"] if b"\x00" in body else []


async def _refuse(send: Send, fields: list[str]) -> None:
    await send_problem(send, Problem(
        type=problem_type("nul-character"), title="NUL character refused", status=422,
        detail="text values must not contain the NUL character (U+0000)",
        errors=[FieldError(field=f, reason="contains U+0000") for f in fields]))


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
        if scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        body = await read_body(receive)
        fields = nul_fields(body)
        if fields:
            await _refuse(send, fields)
            return
        await self.app(scope, replaying(body, receive), send)
