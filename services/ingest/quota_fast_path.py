"""The decision endpoints' fast path: a raw ASGI layer, outermost, that answers the ordinary request of
``POST /v1/quota/orgs/{org}/report-credits`` and ``POST /v1/quota/orgs/{org}/spend/authorisations``
without the FastAPI stack (seven middlewares, routing through every router, dependency solving, pydantic
models of a two-field body and Starlette's request and response objects).

It only answers what it can answer exactly as the full stack would, and hands everything else to it
unchanged (the body it read is replayed): a key that is not in the authentication cache (the stack
authenticates and caches it), a wrong scope or another org's key, an ``Idempotency-Key`` header, a query
string, a body that is not the plain shape (extra fields, other types, a pattern or length miss, a card
number lookalike, a NUL, too large, not JSON). The stack then gives the same 401 / 403 / 413 / 422 it
always gave. A decision's own errors (a conflicting enquiry, a PostgreSQL outage) are answered by the
app's exception handlers, the ones the stack uses. So the problem documents, the idempotency semantics
(the enquiry id / request id is the key) and the OpenAPI document (the FastAPI routes stay declared, and
serve every request handed on) do not change; only the cost of the common request does.
"""

from __future__ import annotations

import inspect
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from services.ingest.auth import Authenticator, Principal
from services.ingest.auth import Scope as KeyScope
from services.ingest.body_guard import read_body, replaying
from services.ingest.ids import MAX_ID_LENGTH
from services.ingest.metrics import EdgeMetrics
from services.ingest.routes.quota import credit_response, spend_response
from shared.contracts.card_numbers import contains_pan
from shared.contracts.usage_rules import properties_problem

_log = logging.getLogger("services.ingest.quota_fast_path")

CREDIT_TEMPLATE: Final = "/v1/quota/orgs/{org_id}/report-credits"
AUTHORISE_TEMPLATE: Final = "/v1/quota/orgs/{org_id}/spend/authorisations"
_PATH = re.compile(r"/v1/quota/orgs/([^/]+)/(report-credits|spend/authorisations)")
# The body fields' pattern (``routes.quota.IDENTIFIER``): it admits no NUL, no space and no quote.
_IDENTIFIER = re.compile(r"[A-Za-z0-9_.:@-]{1,200}")
_MAX_QUANTITY: Final = 10**15
_MAX_PROPERTIES: Final = 20
_JSON: Final = [(b"content-type", b"application/json")]
_REPLAYED: Final = (b"idempotent-replayed", b"true")
_HANDED_ON_HEADERS: Final = frozenset({b"idempotency-key"})
# Set on the scope of a request this layer handed on, so that a second instance further in (served ahead of
# FastAPI by ``ahead_of`` and again as the app's middleware) hands it on at once instead of deciding twice.
HANDED_ON: Final = "billing.quota_fast_path.handed_on"

ExceptionHandlers = dict[Any, Callable[[Request, Any], Response | Awaitable[Response]]]


class QuotaFastPath:
    """ASGI middleware: see the module docstring. ``state`` is the app's ``app.state`` (the quota and
    spend services are opened by the lifespan, after this layer is built)."""

    def __init__(self, app: ASGIApp, *, state: Any, exception_handlers: ExceptionHandlers,
                 authenticator: Authenticator, metrics: EdgeMetrics, max_body_bytes: int) -> None:
        self.app = app
        self._state = state
        self._handlers = exception_handlers
        self._authenticator = authenticator
        self._max_body = max_body_bytes
        self._count = {
            (template, status): metrics.requests.labels("POST", template, str(status))
            for template in (CREDIT_TEMPLATE, AUTHORISE_TEMPLATE) for status in (200, 402, 429)}
        self._seconds = {template: metrics.request_seconds.labels("POST", template)
                         for template in (CREDIT_TEMPLATE, AUTHORISE_TEMPLATE)}
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["query_string"] or HANDED_ON in scope:
            await self.app(scope, receive, send)
            return
        match = _PATH.fullmatch(scope["path"])
        if match is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        body = await read_body(receive)
        org_id, action = match.group(1), match.group(2)
        principal = self._principal(scope, len(body), org_id)
        credit = action == "report-credits"
        try:
            answered = principal is not None and await (self._credit if credit else self._authorise)(
                scope, receive, send, org_id, body, principal)
        except Exception as error:  # answered by the app's own handler for its class
            await self._answer_error(scope, body, send, error)
            answered = True
        if answered:
            template = CREDIT_TEMPLATE if credit else AUTHORISE_TEMPLATE
            self._seconds[template].observe(time.perf_counter() - started)
            return
        scope[HANDED_ON] = True
        await self.app(scope, replaying(body, receive), send)

    def _principal(self, scope: Scope, body_length: int, org_id: str) -> Principal | None:
        """The caller when the fast path may answer it (a cached key with the ingest scope for this org,
        no Idempotency-Key, a body within the limit), else None: the full stack answers."""
        if body_length > self._max_body or len(org_id) > MAX_ID_LENGTH:
            return None
        token: str | None = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                if token is not None:
                    return None  # two credentials: the stack's reading decides
                scheme, _, rest = value.decode("latin-1").partition(" ")
                if scheme.lower() != "bearer" or not rest.strip():
                    return None
                token = rest.strip()
            elif name == b"x-api-key":
                if token is not None:
                    return None
                token = value.decode("latin-1") or None
            elif name in _HANDED_ON_HEADERS:
                return None
        if token is None:
            return None
        hit, principal = self._authenticator.known(token)
        if not hit or principal is None or not principal.has_any((KeyScope.INGEST,)):
            return None
        if principal.org_id is not None and not principal.is_admin and principal.org_id != org_id:
            return None  # the stack's 403
        return principal

    @staticmethod
    def _org(principal: Principal, org_id: str) -> str:
        # ``auth.resolve_org`` for a key the fast path accepted: an org-bound key's own org, else the path's
        return principal.org_id if principal.org_id is not None and not principal.is_admin else org_id

    async def _credit(self, scope: Scope, receive: Receive, send: Send, org_id: str, body: bytes,
                      principal: Principal) -> bool:
        fields = _plain_body(body)
        if fields is None or fields.keys() != {"user_id", "enquiry_id"}:
            return False
        user_id, enquiry_id = fields["user_id"], fields["enquiry_id"]
        if not (isinstance(user_id, str) and isinstance(enquiry_id, str) and _IDENTIFIER.fullmatch(user_id)
                and _IDENTIFIER.fullmatch(enquiry_id)):
            return False
        admission = self._state.quota.admission
        answer = await admission.use_credit(self._org(principal, org_id), user_id, enquiry_id)
        if answer.allowed:
            await _send_json(send, 200, orjson.dumps(answer.body()), answer.replayed)
            self._count[(CREDIT_TEMPLATE, 200)].inc()
            return True
        response = credit_response(answer, await admission.now() if answer.reason is not None
                                   and answer.reason.value == "user_limit_reached" else None)
        await response(scope, receive, send)
        self._counted(CREDIT_TEMPLATE, response.status_code)
        return True

    async def _authorise(self, scope: Scope, receive: Receive, send: Send, org_id: str, body: bytes,
                         principal: Principal) -> bool:
        if _content_type(scope) != b"application/json":
            return False  # the stack decides what another content type means for a JSON body
        fields = _plain_body(body)
        if fields is None or not fields.keys() <= {"request_id", "quantity", "properties"}:
            return False
        request_id, quantity = fields.get("request_id"), fields.get("quantity")
        properties = fields.get("properties", {})
        if not (isinstance(request_id, str) and _IDENTIFIER.fullmatch(request_id)
                and type(quantity) is int and 0 < quantity <= _MAX_QUANTITY
                and isinstance(properties, dict) and len(properties) <= _MAX_PROPERTIES
                and all(type(value) in (str, int, bool) for value in properties.values())
                and properties_problem(properties) is None):
            return False
        answer = await self._state.spend.authorise(self._org(principal, org_id), request_id, quantity,
                                                   properties)
        response = spend_response(answer)
        await response(scope, receive, send)
        self._counted(AUTHORISE_TEMPLATE, response.status_code)
        return True

    def _counted(self, template: str, status: int) -> None:
        child = self._count.get((template, status))
        if child is None:
            child = self._metrics.requests.labels("POST", template, str(status))
        child.inc()

    async def _answer_error(self, scope: Scope, body: bytes, send: Send, error: Exception) -> None:
        """The answer the app's exception handlers give ``error`` (the nearest class in its MRO), as the
        full stack would give it for the same failure of the same use case."""
        handlers = self._handlers
        handler = next((handlers[kind] for kind in type(error).__mro__ if kind in handlers), None)
        request = Request(scope, replaying(body, None))
        if handler is None:
            _log.exception("unhandled error", extra={"path": scope["path"]})
            response = Response(b'{"type":"about:blank","title":"Internal server error","status":500,'
                                b'"code":"internal_server_error","detail":null,"errors":[]}', status_code=500,
                                media_type="application/problem+json")
        else:
            answered = handler(request, error)
            response = await answered if inspect.isawaitable(answered) else answered
        await response(scope, replaying(body, None), send)
        template = CREDIT_TEMPLATE if scope["path"].endswith("report-credits") else AUTHORISE_TEMPLATE
        self._counted(template, response.status_code)


def ahead_of(app: Any, *, max_body_bytes: int) -> QuotaFastPath:
    """The fast path in front of the whole FastAPI ``app`` (what ``python -m services.ingest`` serves).

    # NOTE: as the app's outermost middleware the fast path still ran behind FastAPI's and Starlette's own
    # layers (the telemetry check, the server-error wrapper of every ``send``): ~5 % of a decision's CPU.
    # In front of the app it skips them; a request it hands on goes through the whole app, unchanged (the
    # middleware instance inside sees ``HANDED_ON`` and hands it on too). Its own errors it answers with
    # the app's exception handlers either way, so the answers are the same.
    """
    state = app.state
    return QuotaFastPath(app, state=state, exception_handlers=app.exception_handlers,
                         authenticator=state.authenticator, metrics=state.metrics, max_body_bytes=max_body_bytes)


def _plain_body(body: bytes) -> dict[str, Any] | None:
    """The body's top-level object when it holds no card-number lookalike and no NUL (those are the
    guards' to refuse), else None."""
    if b"\\u0000" in body or b"\x00" in body or contains_pan(body):
        return None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _content_type(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return bytes(value.split(b";", 1)[0].strip().lower())
    return None


async def _send_json(send: Send, status: int, payload: bytes, replayed: bool) -> None:
    headers = [*_JSON, (b"content-length", str(len(payload)).encode())]
    if replayed:
        headers.append(_REPLAYED)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
