"""Idempotency-Key on every POST (Stripe's semantics and the IETF httpapi draft's).

- Same key, same caller, same method + path + body -> the first response is replayed (with the header
  `Idempotent-Replayed: true`), whatever happened in between.
- Same key with a different body (or another endpoint) -> 422.
- A retry while the first request is still being processed -> 409.
- Keys are scoped per caller (the API key id), and kept at least 24 hours (purged after `RETENTION`).
- The header is optional: without it a POST is simply not deduplicated by the edge (usage events are
  deduplicated downstream on (customer, transaction_id) anyway). Stripe webhooks are exempt (Stripe
  deduplication is by event id).

Mechanics: a unique row (caller, key) is inserted in its own transaction *before* the work runs (status
`in_flight`); a concurrent retry finds it and gets 409. After the work the row is completed with the
response (status, body, content headers) in a second transaction, and only then is the response sent, so a
client that saw a response can always replay it. A 5xx or an exception deletes the row: the work did not
complete, and the client's retry must be allowed to run it again. A row left `in_flight` by a crashed
process is taken over after `STALE_LOCK`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.ingest.auth import Authenticator, presented_token_of
from services.ingest.body_guard import read_body, replaying
from services.ingest.problems import Problem, problem_bytes, problem_type
from shared.adapters.postgres.schema.edge import idempotency_keys

HEADER = "idempotency-key"
MAX_KEY_LENGTH = 255
RETENTION = timedelta(hours=48)  # NOTE: the contract is ">= 24 h"; twice that covers a day-long outage.
STALE_LOCK = timedelta(minutes=2)
_REPLAYED_HEADERS = ("content-type", "location", "retry-after")


class Decision(StrEnum):
    PROCEED = "proceed"
    REPLAY = "replay"
    IN_FLIGHT = "in_flight"
    MISMATCH = "mismatch"


@dataclass(frozen=True)
class StoredResponse:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Begin:
    decision: Decision
    stored: StoredResponse | None = None


def fingerprint(method: str, path: str, query: str, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), query.encode()):
        digest.update(part)
        digest.update(b"\n")
    digest.update(body)
    return digest.hexdigest()


class IdempotencyStore:
    """The `idempotency_keys` table: begin (claim or find), complete, release, purge."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine

    def begin(self, caller: str, key: str, print_: str) -> Begin:
        t = idempotency_keys
        with self._engine.begin() as conn:
            claimed = conn.execute(insert(t).values(caller=caller, idempotency_key=key, fingerprint=print_,
                                                    status="in_flight")
                                   .on_conflict_do_nothing().returning(t.c.caller)).first()
            if claimed is not None:
                return Begin(Decision.PROCEED)
            row = conn.execute(sa.select(t, (t.c.locked_at < sa.func.now() - STALE_LOCK).label("stale"))
                               .where(t.c.caller == caller, t.c.idempotency_key == key)
                               .with_for_update()).one_or_none()
            if row is None:  # purged or released between the two statements: claim it now
                conn.execute(insert(t).values(caller=caller, idempotency_key=key, fingerprint=print_,
                                              status="in_flight"))
                return Begin(Decision.PROCEED)
            if row.fingerprint != print_:
                return Begin(Decision.MISMATCH)
            if row.status == "completed":
                return Begin(Decision.REPLAY, StoredResponse(row.response_status, dict(row.response_headers or {}),
                                                             bytes(row.response_body or b"")))
            if row.stale:
                conn.execute(sa.update(t).where(t.c.caller == caller, t.c.idempotency_key == key)
                             .values(locked_at=sa.func.now()))
                return Begin(Decision.PROCEED)
            return Begin(Decision.IN_FLIGHT)

    def complete(self, caller: str, key: str, response: StoredResponse) -> None:
        t = idempotency_keys
        with self._engine.begin() as conn:
            conn.execute(sa.update(t).where(t.c.caller == caller, t.c.idempotency_key == key)
                         .values(status="completed", response_status=response.status,
                                 response_headers=response.headers, response_body=response.body,
                                 completed_at=sa.func.now()))

    def release(self, caller: str, key: str) -> None:
        t = idempotency_keys
        with self._engine.begin() as conn:
            conn.execute(sa.delete(t).where(t.c.caller == caller, t.c.idempotency_key == key,
                                            t.c.status == "in_flight"))

    def purge_expired(self) -> int:
        t = idempotency_keys
        with self._engine.begin() as conn:
            return conn.execute(sa.delete(t).where(t.c.created_at < sa.func.now() - RETENTION)).rowcount


async def _send_problem(send: Send, problem: Problem, extra: dict[str, str] | None = None) -> None:
    body = problem_bytes(problem)
    headers = [(b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": problem.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class IdempotencyMiddleware:
    """ASGI middleware applying the Idempotency-Key contract to every POST except `exempt_paths`.

    The caller is identified with the app's `Authenticator` (`app.state.authenticator`); a request whose
    key does not authenticate is passed through untouched (the route answers 401).
    """

    def __init__(self, app: ASGIApp, *, store: IdempotencyStore, exempt_paths: frozenset[str]) -> None:
        self.app = app
        self.store = store
        self.exempt_paths = exempt_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] in self.exempt_paths:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        key = headers.get(HEADER)
        if key is None:
            await self.app(scope, receive, send)
            return
        if not key or len(key) > MAX_KEY_LENGTH:
            await _send_problem(send, Problem(type=problem_type("idempotency-key"), title="Invalid Idempotency-Key",
                                              status=422, detail=f"1 to {MAX_KEY_LENGTH} characters"))
            return
        caller = await self._caller(scope, headers)
        if caller is None:
            await self.app(scope, receive, send)
            return

        body = await read_body(receive)
        print_ = fingerprint(scope["method"], scope["path"], scope.get("query_string", b"").decode(), body)
        begun = await run_in_threadpool(self.store.begin, caller, key, print_)
        if begun.decision is Decision.MISMATCH:
            await _send_problem(send, Problem(
                type=problem_type("idempotency-key-reused"), title="Idempotency-Key reused", status=422,
                detail="this Idempotency-Key was already used with a different request body or endpoint"))
            return
        if begun.decision is Decision.IN_FLIGHT:
            await _send_problem(send, Problem(
                type=problem_type("idempotency-key-in-flight"), title="Request in progress", status=409,
                detail="a request with this Idempotency-Key is still being processed; retry later"),
                {"Retry-After": "1"})
            return
        if begun.decision is Decision.REPLAY and begun.stored is not None:
            await _send_stored(send, begun.stored, replayed=True)
            return

        captured = _Capture()
        try:
            # The app's answer is captured for the key's record; the app is kept off the client's channel.
            await self.app(scope, replaying(body, None), captured.send)
        except BaseException:
            await run_in_threadpool(self.store.release, caller, key)
            raise
        response = captured.response()
        if response.status >= 500:
            await run_in_threadpool(self.store.release, caller, key)
        else:
            await run_in_threadpool(self.store.complete, caller, key, response)
        await _send_stored(send, response, replayed=False, all_headers=captured.headers)

    async def _caller(self, scope: Scope, headers: Headers) -> str | None:
        authenticator: Authenticator = scope["app"].state.authenticator  # installed by the composition root
        token = presented_token_of(headers)
        if token is None:
            return None
        principal = await run_in_threadpool(authenticator.authenticate, token)
        return principal.key_id if principal is not None else None


class _Capture:
    def __init__(self) -> None:
        self.status = 500
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            self.chunks.append(message.get("body", b""))

    def response(self) -> StoredResponse:
        kept = {k.decode().lower(): v.decode() for k, v in self.headers
                if k.decode().lower() in _REPLAYED_HEADERS}
        return StoredResponse(self.status, kept, b"".join(self.chunks))


async def _send_stored(send: Send, response: StoredResponse, *, replayed: bool,
                       all_headers: list[tuple[bytes, bytes]] | None = None) -> None:
    headers: list[Any]
    if all_headers is not None:
        headers = [(k, v) for k, v in all_headers if k.lower() != b"content-length"]
    else:
        headers = [(k.encode(), v.encode()) for k, v in response.headers.items()]
    headers.append((b"content-length", str(len(response.body)).encode()))
    if replayed:
        headers.append((b"idempotent-replayed", b"true"))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})
