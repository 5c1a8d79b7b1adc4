"""What the request-body guards (nesting depth, NUL characters, card numbers) share: read the body once,
find the JSON fields a predicate flags, answer a problem document, or hand the untouched body on to the
app; and the depth guard itself."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.ingest.problems import PROBLEM_JSON, FieldError, Problem, problem_bytes, problem_type

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# NOTE: our request bodies nest three or four levels at most; 32 leaves room and stays far from Python's
# recursion limit (~1000) that deep bodies hit in the JSON parser and the validators.
MAX_JSON_DEPTH = 32


def is_guarded(scope: Scope, exempt_paths: frozenset[str]) -> bool:
    """Does a body guard look at this request (an HTTP call with a body, on a path not exempt)?"""
    return scope["type"] == "http" and scope["method"] in BODY_METHODS and scope["path"] not in exempt_paths


async def read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def replaying(body: bytes, receive: Receive | None) -> Receive:
    """A receive channel that gives the app the body already read, then the client's later messages (or,
    without a client channel, a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        if receive is None:
            return {"type": "http.disconnect"}
        return await receive()

    return replay


def flagged_paths(value: Any, flags_key: Callable[[str], bool], flags_value: Callable[[Any], bool]) -> Iterator[str]:
    """Dotted paths (`items.0.name`) of the keys and scalar values of a parsed JSON document that are flagged.

    Walked with an explicit stack, in document order: a recursive walk raised RecursionError (a 500) on a
    body nested ~990 levels deep, which orjson still parses."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, dict):
            children: list[tuple[str, Any]] = []
            for key, child in item.items():
                here = f"{path}.{key}" if path else str(key)
                if flags_key(key):
                    yield here
                children.append((here, child))
            stack.extend(reversed(children))
        elif isinstance(item, list):
            stack.extend(reversed([(f"{path}.{i}" if path else str(i), child) for i, child in enumerate(item)]))
        elif flags_value(item):
            yield path or "body"


def json_depth_exceeds(body: bytes, limit: int) -> bool:
    """Is the JSON document nested deeper than `limit` arrays/objects? Bodies with fewer brackets than
    `limit` are not parsed (the common case costs two C-speed counts); a body that is not JSON is not
    too deep (the route answers its own parse error)."""
    if body.count(b"{") + body.count(b"[") <= limit:
        return False
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return "depth limit" in str(exc)  # orjson refuses documents deeper than 1024 levels
    level: list[tuple[int, Any]] = [(1, document)]
    while level:
        depth, item = level.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            level.extend((depth + 1, child) for child in (item.values() if isinstance(item, dict) else item))
    return False


class DepthGuardMiddleware:
    """Refuse JSON bodies nested deeper than `max_depth` with a 422 before anything parses them.

    No request of ours nests more than a few levels; a body nested ~990 levels deep made Python's JSON
    parsing and the guards' walks hit the recursion limit (a 500 or a bare 400)."""

    def __init__(self, app: ASGIApp, *, max_depth: int, exempt_paths: frozenset[str]) -> None:
        self.app = app
        self.max_depth = max_depth
        self.exempt_paths = exempt_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not is_guarded(scope, self.exempt_paths):
            await self.app(scope, receive, send)
            return
        body = await read_body(receive)
        if json_depth_exceeds(body, self.max_depth):
            await send_problem(send, Problem(
                type=problem_type("too-deep"), title="Body nested too deeply", status=422,
                detail=f"JSON bodies may nest at most {self.max_depth} objects or arrays",
                errors=[FieldError(field="body", reason=f"nested deeper than {self.max_depth} levels")]))
            return
        await self.app(scope, replaying(body, receive), send)


async def send_problem(send: Send, problem: Problem) -> None:
    payload = problem_bytes(problem)
    await send({"type": "http.response.start", "status": problem.status,
                "headers": [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
