"""What the request-body guards (NUL characters, card numbers) share: read the body once, find the JSON
fields a predicate flags, answer a problem document, or hand the untouched body on to the app."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import orjson
from starlette.types import Message, Receive, Send

from services.ingest.problems import PROBLEM_JSON, Problem

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


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


def flagged_paths(value: Any, flags_key: Callable[[str], bool], flags_value: Callable[[Any], bool],
                  path: str = "") -> Iterator[str]:
    """Dotted paths (`items.0.name`) of the keys and scalar values of a parsed JSON document that are flagged."""
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{path}.{key}" if path else str(key)
            if flags_key(key):
                yield here
            yield from flagged_paths(item, flags_key, flags_value, here)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from flagged_paths(item, flags_key, flags_value, f"{path}.{index}" if path else str(index))
    elif flags_value(value):
        yield path or "body"


async def send_problem(send: Send, problem: Problem) -> None:
    payload = orjson.dumps(problem.model_dump(mode="json"))
    await send({"type": "http.response.start", "status": problem.status,
                "headers": [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
