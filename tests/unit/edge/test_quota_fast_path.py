"""The decision endpoints' fast path (``services.ingest.quota_fast_path``): it answers the plain request
itself, with the route's own answer, and hands every other request, body intact, to the full stack (whose
401 / 403 / 413 / 422 answers are then the ones the API always gave). Real quota use cases over the
in-memory store; the full stack is a recording ASGI app."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from starlette.types import Message, Receive, Scope, Send

from services.ingest.auth import Authenticator, Principal, hash_token
from services.ingest.auth import Scope as KeyScope
from services.ingest.metrics import EdgeMetrics
from services.ingest.problems import install_problem_handlers
from services.ingest.quota_fast_path import QuotaFastPath
from services.ingest.quota_wiring import quota_service
from services.ingest.service_layer.quota_alerts import AlertNotifications
from shared.adapters.catalog_file import load_default_catalog
from shared.adapters.clock import ManualClock
from tests.unit.edge.quota_fakes import FakeNotifier, FakeQuotaStore

pytestmark = pytest.mark.unit

NOW = datetime(2026, 3, 28, 12, 0, tzinfo=UTC)
ADMIN = "admin-token"
ACME_KEY = "bk_acme-ingest"
ACME_READ_KEY = "bk_acme-read"
CREDITS = "/v1/quota/orgs/acme/report-credits"


class FullStack:
    """Stands for the FastAPI stack: records what it was handed and answers 299."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        self.bodies.append(message.get("body", b""))
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def _authenticator() -> Authenticator:
    authenticator = Authenticator(engine=None, admin_token=ADMIN)  # type: ignore[arg-type]
    keys = {hash_token(ACME_KEY): Principal("k1", frozenset({KeyScope.INGEST}), org_id="acme"),
            hash_token(ACME_READ_KEY): Principal("k2", frozenset({KeyScope.READ}), org_id="acme")}
    authenticator._cache.get_many(keys, lambda digests: {d: keys[d] for d in digests})
    return authenticator


async def build() -> tuple[QuotaFastPath, FullStack, Any]:
    quota = quota_service(FakeQuotaStore(), ManualClock(NOW), load_default_catalog(),
                          AlertNotifications(FakeNotifier()))
    await quota.admin.set_plan("acme", "Lite")
    stack = FullStack()
    handlers: dict[Any, Any] = {}
    install_problem_handlers(SimpleNamespace(add_exception_handler=handlers.__setitem__))  # type: ignore[arg-type]
    fast = QuotaFastPath(stack, state=SimpleNamespace(quota=quota), exception_handlers=handlers,
                         authenticator=_authenticator(), metrics=EdgeMetrics(), max_body_bytes=1000)
    return fast, stack, quota


async def call(app: QuotaFastPath, body: bytes, *, path: str = CREDITS, token: str | None = ACME_KEY,
               headers: list[tuple[bytes, bytes]] = (), query: bytes = b"") -> tuple[int, dict[bytes, bytes], bytes]:
    auth = [(b"authorization", f"Bearer {token}".encode())] if token else []
    scope = {"type": "http", "method": "POST", "path": path, "query_string": query,
             "headers": [*auth, (b"content-type", b"application/json"), *headers]}
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start, content = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], dict(start["headers"]), content


async def test_a_plain_credit_request_is_answered_by_the_fast_path_with_the_use_case_s_answer() -> None:
    fast, stack, quota = await build()
    status, headers, body = await call(fast, b'{"user_id":"ann","enquiry_id":"e1"}')
    assert (status, headers[b"content-type"], stack.bodies) == (200, b"application/json", [])
    replay = await quota.admission.use_credit("acme", "ann", "e1")
    assert orjson.loads(body) == replay.body()  # the stored first answer, field for field
    assert orjson.loads(body)["org_remaining"] == 19  # Lite: 20 reports a month, one used


async def test_a_retried_enquiry_is_replayed_with_the_header_and_an_identical_body() -> None:
    fast, _, _ = await build()
    first = await call(fast, b'{"user_id":"ann","enquiry_id":"e1"}')
    again = await call(fast, b'{"enquiry_id":"e1","user_id":"ann"}')
    assert (again[0], again[2]) == (first[0], first[2])
    assert again[1][b"idempotent-replayed"] == b"true" and b"idempotent-replayed" not in first[1]


async def test_a_refusal_is_the_route_s_problem_document() -> None:
    fast, _, quota = await build()
    await quota.admin.set_user_limit("acme", 1)
    await call(fast, b'{"user_id":"ann","enquiry_id":"e1"}')
    status, headers, body = await call(fast, b'{"user_id":"ann","enquiry_id":"e2"}')
    problem = orjson.loads(body)
    assert (status, headers[b"content-type"]) == (429, b"application/problem+json")
    assert (problem["reason"], problem["code"], problem["user_remaining"]) == ("user_limit_reached",
                                                                               "user_limit_reached", 0)
    assert int(headers[b"retry-after"]) == 4 * 86400 - 12 * 3600  # to the end of March (UTC)


async def test_an_enquiry_run_by_another_user_is_answered_by_the_app_s_handler_for_its_refusal() -> None:
    fast, stack, _ = await build()
    await call(fast, b'{"user_id":"ann","enquiry_id":"e1"}')
    status, _, body = await call(fast, b'{"user_id":"bob","enquiry_id":"e1"}')
    assert (status, orjson.loads(body)["code"], stack.bodies) == (409, "enquiry_conflict", [])


@pytest.mark.parametrize(("body", "options"), [
    (b'{"user_id":"ann","enquiry_id":"e1"}', {"token": None}),  # no key: the stack's 401
    (b'{"user_id":"ann","enquiry_id":"e1"}', {"token": "bk_unknown"}),  # not cached: the stack looks it up
    (b'{"user_id":"ann","enquiry_id":"e1"}', {"token": ACME_READ_KEY}),  # wrong scope: 403
    (b'{"user_id":"ann","enquiry_id":"e1"}', {"path": "/v1/quota/orgs/other/report-credits"}),  # another org
    (b'{"user_id":"ann","enquiry_id":"e1"}', {"headers": [(b"idempotency-key", b"k1")]}),  # its semantics
    (b'{"user_id":"ann","enquiry_id":"e1"}', {"query": b"x=1"}),
    (b'{"user_id":"ann","enquiry_id":"e1","extra":{"deep":[1]}}', {}),
    (b'{"user_id":"ann"}', {}),
    (b'{"user_id":"ann","enquiry_id":7}', {}),
    (b'{"user_id":"ann","enquiry_id":"has space"}', {}),
    (b'{"user_id":"ann","enquiry_id":"' + b"e" * 201 + b'"}', {}),
    (b'{"user_id":"ann","enquiry_id":"4242424242424242"}', {}),  # a card number: the guard's 422
    (b'{"user_id":"ann\\u0000","enquiry_id":"e1"}', {}),
    (b'{"user_id":"ann","enquiry_id":"e1"', {}),  # not JSON
    (b'["ann","e1"]', {}),
    (b'{"user_id":"ann","enquiry_id":"' + b"e" * 990 + b'"}', {}),  # beyond the body limit: 413
])
async def test_every_other_request_is_handed_to_the_full_stack_with_its_body(body: bytes,
                                                                           options: dict[str, Any]) -> None:
    fast, stack, _ = await build()
    status, _, _ = await call(fast, body, **options)
    assert (status, stack.bodies) == (299, [body])


async def test_other_paths_and_methods_never_reach_the_fast_path() -> None:
    fast, stack, _ = await build()
    await call(fast, b"{}", path="/v1/quota/orgs/acme")
    await call(fast, b"{}", path="/v1/quota/orgs/acme/report-credits/x")
    assert stack.bodies == [b"{}", b"{}"]


async def test_a_spend_authorisation_with_an_irregular_body_is_handed_on() -> None:
    fast, stack, _ = await build()
    path = "/v1/quota/orgs/acme/spend/authorisations"
    for body in (b'{"request_id":"r1","quantity":true}', b'{"request_id":"r1","quantity":1.0}',
                 b'{"request_id":"r1","quantity":0}', b'{"request_id":"r1","quantity":5,"properties":{"a":1.5}}',
                 b'{"request_id":"r1","quantity":5,"x":1}'):
        assert (await call(fast, body, path=path))[0] == 299
    assert len(stack.bodies) == 5


async def test_in_front_of_an_app_that_has_it_as_middleware_a_handed_on_request_is_decided_once() -> None:
    # ``ahead_of``'s arrangement: the fast path in front of the app and again inside it as its middleware
    inner, stack, quota = await build()
    outer = QuotaFastPath(inner, state=inner._state, exception_handlers=inner._handlers,
                          authenticator=inner._authenticator, metrics=EdgeMetrics(), max_body_bytes=1000)
    plain = b'{"user_id":"ann","enquiry_id":"e1"}'
    assert (await call(outer, plain))[0] == 200

    def decided_again(*_: Any) -> None:
        raise AssertionError("the inner layer looked at a request the outer one handed on")

    inner._principal = decided_again  # type: ignore[method-assign]
    assert (await call(outer, plain, token="bk_unknown"))[0] == 299  # handed on through the inner layer
    assert stack.bodies == [plain]
    replay = await quota.admission.use_credit("acme", "ann", "e1")
    assert replay.replayed and replay.body()["org_remaining"] == 19  # decided once: one report used
