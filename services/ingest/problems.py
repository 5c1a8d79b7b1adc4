"""Errors as RFC 9457 problem details (`application/problem+json`).

Every error the edge returns has `type`, `title`, `status`, `detail` and `errors: [{field, reason}]`.
Routes raise `ProblemError(status, title, detail, errors=[FieldError(...)])` for what they decode, and let
the use cases' errors (`shared.errors` families) propagate; `install_problem_handlers` turns those, FastAPI's
request validation errors (422 with one entry per field), Starlette's HTTP errors (404, 405) and unexpected
failures (500, without internals) into that shape.

This is the only place an error meets an HTTP status: `ANSWERS` maps each refusal (its family and `code`) to
a status, problem type and title; a retryable error is a 503 with `Retry-After`; a dependency outage or
a value the database refused is answered by `dependency_problem`.

Validation errors never echo the submitted value: a body may carry data that must not be reflected or
logged (see `services.ingest.pan`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.ingest.service_layer.quota_errors import (
    ContentionError,
    QuotaRefusalCode,
    QuotaRefused,
)
from services.ingest.service_layer.refusals import (
    CatalogRefusal,
    LifecycleRefusal,
    LineNotTraceable,
    MetronomeRefusal,
    OnboardingRefused,
    ReplayRefused,
)
from services.ingest.service_layer.webhook_endpoints import WebhookRefusal
from shared.adapters.clock import ClockRefusedError
from shared.adapters.postgres.errors import driver_error, is_database_error, is_transient, reason_code
from shared.domain.customer_balance import InsufficientBalanceError
from shared.errors import BillingError, DataRejectedError, InfrastructureError, refusal_code

PROBLEM_JSON = "application/problem+json"
_log = logging.getLogger("services.ingest.problems")


class FieldError(BaseModel):
    field: str = Field(description="dotted path of the offending field, e.g. `events.3.timestamp`")
    reason: str


class Problem(BaseModel):
    """The body of every error response (RFC 9457), with `code`: the machine-readable name of the problem."""

    type: str = Field(default="about:blank", description="URI reference naming the kind of problem")
    title: str
    status: int
    code: str = Field(default="", description="machine-readable snake_case name of the problem (the refusal's code, "
                                              "e.g. `already_on_plan`, `invoice_not_voidable`, `validation`)")
    detail: str | None = None
    errors: list[FieldError] = Field(default_factory=list)

    def model_post_init(self, _context: Any) -> None:
        if not self.code:
            self.code = problem_code(self.type, self.status)


def problem_code(type_: str, status: int) -> str:
    """The code a problem without one of its own gets: its type's last segment in snake_case
    (`/problems/rejected/already_on_plan` -> `already_on_plan`, `/problems/invoice-not-voidable` ->
    `invoice_not_voidable`), or the status's name for `about:blank` (404 -> `not_found`)."""
    if type_ and type_ != "about:blank":
        return type_.rstrip("/").rsplit("/", 1)[-1].replace("-", "_")
    return _TITLES.get(status, "error").lower().replace(" ", "_")


def problem_type(slug: str) -> str:
    """The `type` URI of one of our problem kinds (a relative reference, documented in the API docs)."""
    return f"/problems/{slug}"


class ProblemError(Exception):
    """Raise from a route or dependency to answer with a problem document."""

    def __init__(self, status: int, title: str, detail: str | None = None, *, slug: str | None = None,
                 errors: Sequence[FieldError] = (), headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.problem = Problem(type=problem_type(slug) if slug else "about:blank", title=title, status=status,
                               detail=detail, errors=list(errors))
        self.headers = headers or {}


def problem_bytes(problem: Problem) -> bytes:
    """The body of a problem response: JSON in ASCII only (non-ASCII escaped as \\uXXXX).

    # NOTE: `application/problem+json` has no charset parameter, and clients that guess a charset for
    # types they do not know (python-requests does) garbled details naming a non-ASCII id into invalid
    # JSON; escaped, the body reads the same in any ASCII-compatible charset. Errors only: not a hot path.
    """
    return json.dumps(problem.model_dump(mode="json"), ensure_ascii=True, separators=(",", ":")).encode()


def problem_response(problem: Problem, headers: dict[str, str] | None = None) -> Response:
    return Response(problem_bytes(problem), status_code=problem.status, media_type=PROBLEM_JSON, headers=headers)


def _field_path(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:] if len(parts) > 1 else parts
    return ".".join(parts) or "body"


def field_errors_of(errors: Sequence[Any]) -> list[FieldError]:
    """Field errors from pydantic's `errors()` list, without the offending input values."""
    return [FieldError(field=_field_path(e.get("loc", ())), reason=str(e.get("msg", "invalid")))
            for e in errors]


async def _on_problem(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProblemError)
    return problem_response(exc.problem, exc.headers)


async def _on_validation(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return problem_response(Problem(type=problem_type("validation"), title="Request validation failed",
                                    status=422, detail="one or more fields are invalid",
                                    errors=field_errors_of(exc.errors())))


async def _on_http(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    return problem_response(Problem(title=_TITLES.get(exc.status_code, "HTTP error"), status=exc.status_code,
                                    detail=str(exc.detail) if exc.detail else None),
                            dict(exc.headers or {}))


# PostgreSQL unreachable (refused connection, pool exhausted, connection dropped mid-query) or Kafka not
# acknowledging is a dependency outage, not a bug: 503 with Retry-After.
OUTAGE_ERRORS: tuple[type[Exception], ...] = (
    InfrastructureError, sa_exc.OperationalError, sa_exc.TimeoutError, sa_exc.InterfaceError,
    psycopg.OperationalError, psycopg.InterfaceError)
# NOTE: a database error is an outage or a refusal by the SQLSTATE, with the rule of
# `shared.adapters.postgres.errors` (psycopg files "index row size exceeds maximum", 54000, under
# OperationalError, the class of a lost connection: a 10,000-character id was answered 503 "retry"). A
# refusal of the data (too large, too long, malformed) cannot succeed on a retry: 422 with its code. The
# routes bound what they can; this is the backstop, so such a value is never a 503 or a 500.
VALUE_REFUSED_ERRORS: tuple[type[Exception], ...] = (sa_exc.DataError, psycopg.DataError, DataRejectedError)


def _database_error(exc: BaseException) -> BaseException | None:
    """The database error behind `exc` (itself, or what an adapter re-raised it as: `raise ... from`)."""
    seen: BaseException | None = exc
    while seen is not None:
        if is_database_error(seen) or isinstance(seen, DataRejectedError):
            return seen
        seen = seen.__cause__
    return None


def is_outage(exc: BaseException) -> bool:
    """Is this error a dependency that is down or failed transiently (not data PostgreSQL refused)?"""
    if isinstance(exc, DataRejectedError):
        return False
    database = _database_error(exc)
    if database is None or driver_error(database) is None:
        return isinstance(exc, OUTAGE_ERRORS)  # no driver error to tell: the class decides
    return is_transient(database)


def is_dependency_outage(exc: BaseException) -> bool:
    """The edge's outage rule for a service that must tell an outage from a failure to raise (the spend
    gate serves what it last read through one): an error the edge answers 503."""
    return isinstance(exc, OUTAGE_ERRORS) and is_outage(exc)


def dependency_problem(exc: BaseException) -> tuple[Problem, dict[str, str]]:
    """The answer to a database or broker error: 503 with Retry-After for an outage (`is_outage`), else
    422: PostgreSQL (or its driver) refused the value itself."""
    if is_outage(exc):
        return Problem(type=problem_type("unavailable"), title="Service unavailable", status=503,
                       detail="a dependency (Kafka or PostgreSQL) did not answer; retry with the same "
                              "Idempotency-Key"), {"Retry-After": "1"}
    database = _database_error(exc)
    code = database.code if isinstance(database, DataRejectedError) else reason_code(database or exc)
    return Problem(type=problem_type("value-refused"), title="Value refused by the database", status=422,
                   detail="a value is too large or malformed for storage",
                   errors=[FieldError(field="body", reason=f"refused by PostgreSQL: {code}")]), {}


async def _on_dependency_error(request: Request, exc: Exception) -> Response:
    _log.warning("dependency unavailable", extra={"path": request.url.path, "error": type(exc).__name__})
    return problem_response(*dependency_problem(exc))


class OutageMiddleware:
    """Answers outage errors raised by the other middlewares (idempotency keys, authentication of the
    idempotency scope) like the routes' handler does: exception handlers only cover the routes, so a
    PostgreSQL outage seen by a middleware was a 500. Sits just inside the metrics middleware."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except OUTAGE_ERRORS + VALUE_REFUSED_ERRORS as exc:
            if started:
                raise
            _log.warning("dependency unavailable", extra={"path": scope.get("path"), "error": type(exc).__name__})
            problem, headers = dependency_problem(exc)
            response = problem_response(problem, headers)
            await response(scope, receive, send)


# --- the use cases' errors ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """How one refusal is answered: its status, problem type slug and title. The detail is the error's
    message (none when ``detail`` is False: the title says it all); ``errors`` are the refusal's ``fields``
    ((field, reason) pairs) when it has them."""

    status: int
    slug: str
    title: str
    detail: bool = True


_RETRY_AFTER = {"Retry-After": "1"}

# Each family of use-case errors, then its codes. A family's codes are its own (``currency_mismatch`` is a
# quota answer and a lifecycle answer), so the family is looked up first.
ANSWERS: Mapping[type[BillingError], Mapping[str, Answer]] = {
    QuotaRefused: {
        QuotaRefusalCode.UNKNOWN_PLAN: Answer(422, "unknown-plan", "Unknown plan"),
        QuotaRefusalCode.PLAN_ALREADY_SET: Answer(409, "plan-already-set", "Plan already set"),
        QuotaRefusalCode.UNKNOWN_ORG: Answer(404, "unknown-org", "Unknown org"),
        QuotaRefusalCode.INVALID_TIMEZONE: Answer(422, "invalid-timezone", "Invalid timezone"),
        QuotaRefusalCode.INVALID_LIMIT: Answer(422, "invalid-limit", "Invalid limit"),
        QuotaRefusalCode.INVALID_THRESHOLDS: Answer(422, "invalid-thresholds", "Invalid thresholds"),
        QuotaRefusalCode.INVALID_TOP_UP: Answer(422, "invalid-top-up", "Invalid top up"),
        QuotaRefusalCode.ENQUIRY_CONFLICT: Answer(409, "quota/enquiry-conflict", "Enquiry already used"),
        QuotaRefusalCode.NO_SUBSCRIPTION: Answer(409, "quota/no-subscription", "No subscription"),
        QuotaRefusalCode.NO_USAGE_TIER: Answer(409, "quota/no-usage-tier", "No usage tier"),
        QuotaRefusalCode.INVALID_CAP: Answer(422, "quota/invalid-cap", "Invalid cap"),
        QuotaRefusalCode.CURRENCY_MISMATCH: Answer(422, "quota/currency-mismatch", "Currency mismatch"),
        QuotaRefusalCode.INVALID_QUANTITY: Answer(422, "quota/invalid-quantity", "Invalid quantity"),
        QuotaRefusalCode.REQUEST_CONFLICT: Answer(409, "quota/request-conflict", "Request already authorised"),
    },
    # retryable (503 with Retry-After): the spend or quota state kept changing under the request
    ContentionError: {QuotaRefusalCode.CONTENTION: Answer(503, "quota/contention", "Contention")},
    OnboardingRefused: {
        "validation": Answer(422, "validation", "Members are for organisations", detail=False),
        "already_onboarded": Answer(409, "already-onboarded", "Already onboarded"),
        "alias_taken": Answer(409, "alias-taken", "Alias taken"),
        "payment_provider": Answer(422, "payment-provider", "Refused by the payment provider"),
    },
    LifecycleRefusal: {
        "unknown_customer": Answer(404, "not-found", "Unknown customer"),
        "unknown_subscription": Answer(404, "not-found", "Unknown subscription"),
        "unknown_catalog_entry": Answer(422, "validation", "Unknown catalog entry"),
        "currency_mismatch": Answer(422, "currency-mismatch", "Currency mismatch"),
        "no_upcoming_invoice": Answer(409, "no-upcoming-invoice", "No upcoming invoice"),
        "invalid_charge": Answer(422, "invalid-charge", "A one-off charge must charge something"),
        "subscription_cancelled": Answer(409, "subscription-cancelled", "Subscription cancelled"),
        "invoice_not_voidable": Answer(409, "invoice-not-voidable", "Invoice not voidable"),
        "invoice_not_open": Answer(409, "invoice-not-open", "Invoice not open"),
        "unknown_invoice": Answer(404, "not-found", "Unknown invoice"),
        "invoice_not_draft": Answer(409, "invoice-not-draft", "Invoice not draft"),
        "invoice_not_creditable": Answer(409, "rejected/invoice_not_creditable", "Invoice not creditable"),
        "unknown_credit_note": Answer(404, "not-found", "Unknown credit note"),
        "invoice_not_collectible": Answer(409, "rejected/invoice_not_collectible", "Invoice not collectible"),
        "payment_in_flight": Answer(409, "rejected/payment_in_flight", "A payment attempt is unsettled"),
        "unknown_credit_grant": Answer(404, "not-found", "Unknown credit grant"),
        "invalid_credit_grant": Answer(422, "invalid-credit-grant", "Invalid credit grant"),
        "invalid_alert_settings": Answer(422, "invalid-alert-settings", "Invalid alert settings"),
    },
    ReplayRefused: {
        "customer_unknown": Answer(409, "customer-unknown", "Customer still unknown"),
        "no_active_subscription": Answer(409, "no-active-subscription", "No subscription accepts usage"),
    },
    ClockRefusedError: {"clock_refused": Answer(409, "clock-refused", "Clock refused")},
    InsufficientBalanceError: {"insufficient_balance": Answer(409, "insufficient-balance", "Insufficient balance")},
    LineNotTraceable: {"line_not_traceable": Answer(409, "line-not-traceable", "The line bills no usage events")},
    CatalogRefusal: {
        "invalid_catalog_entry": Answer(422, "validation", "Invalid catalog entry"),
        "already_exists": Answer(409, "already-exists", "Already exists"),
        "unknown_meter": Answer(404, "not-found", "Unknown meter"),
        "unknown_plan": Answer(404, "not-found", "Unknown plan"),
        "unknown_plan_version": Answer(404, "not-found", "Unknown plan version"),
        "unknown_coupon": Answer(404, "not-found", "Unknown coupon"),
        "in_use": Answer(409, "in-use", "In use: archive it instead"),
        "plan_archived": Answer(422, "plan-archived", "Plan archived"),
        "coupon_archived": Answer(422, "coupon-archived", "Coupon archived"),
        "meter_changed": Answer(409, "meter-changed", "A meter's aggregation cannot change"),
        "coupon_changed": Answer(409, "coupon-changed", "A coupon's discount cannot change"),
    },
    MetronomeRefusal: {
        "not_found": Answer(404, "not-found", "Not found"),
        "not_supported": Answer(400, "not-supported", "Not supported"),
        "invalid": Answer(400, "validation", "Invalid request"),
        "customer_has_live_subscription": Answer(409, "customer-has-live-subscription",
                                                 "The customer still has a live subscription"),
        "already_exists": Answer(409, "already-exists", "Already exists"),
    },
    WebhookRefusal: {
        "unknown_webhook_endpoint": Answer(404, "not-found", "Unknown webhook endpoint"),
        "unknown_webhook_delivery": Answer(404, "not-found", "Unknown webhook delivery"),
        "webhook_endpoint_disabled": Answer(409, "webhook-endpoint-disabled", "Webhook endpoint disabled"),
    },
}


def answer_of(error: BaseException) -> Answer | None:
    """The answer ``ANSWERS`` gives ``error`` (its nearest family, then its code), or None."""
    for family in type(error).__mro__:
        answers = ANSWERS.get(family)
        if answers is not None:
            return answers.get(refusal_code(error))
    return None


def use_case_problem(error: BillingError) -> tuple[Problem, dict[str, str]] | None:
    """The problem document (and headers) answering a use case's error, or None when it has no answer
    (then it is a bug: 500). A retryable error without an answer of its own is a 503 with Retry-After."""
    answer = answer_of(error)
    if answer is None:
        if error.retryable:
            return Problem(type=problem_type("unavailable"), title="Service unavailable", status=503,
                           detail="a dependency failed transiently; retry with the same Idempotency-Key"), \
                dict(_RETRY_AFTER)
        return None
    fields: Sequence[tuple[str, str]] = getattr(error, "fields", ())
    problem = Problem(type=problem_type(answer.slug), title=answer.title, status=answer.status,
                      code=refusal_code(error), detail=str(error) if answer.detail else None,
                      errors=[FieldError(field=field, reason=reason) for field, reason in fields])
    # NOTE: a retryable error may succeed at once: like an outage, it says when to retry
    return problem, dict(_RETRY_AFTER) if error.retryable else {}


def command_rejected(error_code: str | None, error_detail: str | None) -> ProblemError:
    """The answer to a lifecycle command the billing worker rejected (its outcome's refusal code): 409."""
    return ProblemError(409, "Command rejected", error_detail or error_code,
                        slug=f"rejected/{error_code or 'invalid-transition'}",
                        errors=[FieldError(field="subscription", reason=error_code or "rejected")])


async def _on_use_case_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BillingError)
    answered = use_case_problem(exc)
    if answered is None:
        return await _on_unexpected(request, exc)
    return problem_response(*answered)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    _log.exception("unhandled error", extra={"path": request.url.path})
    return problem_response(Problem(title="Internal server error", status=500))


_TITLES = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found",
           405: "Method not allowed", 409: "Conflict", 413: "Payload too large", 415: "Unsupported media type",
           422: "Unprocessable content", 503: "Service unavailable"}


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ProblemError, _on_problem)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(BillingError, _on_use_case_error)  # the most specific handler wins (by MRO)
    for outage in OUTAGE_ERRORS + VALUE_REFUSED_ERRORS:
        app.add_exception_handler(outage, _on_dependency_error)
    app.add_exception_handler(Exception, _on_unexpected)


# Ready-made responses for the OpenAPI document of each route.
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "description": title, "content": {PROBLEM_JSON: {}}}
    for status, title in ((401, "Missing or invalid API key"), (403, "Wrong scope or another organisation"),
                          (409, "Conflict"), (413, "Request too large"), (422, "Validation failed"))
}


# --- the Metronome-compatible surface (`/metronome`, `services.ingest.routes.metronome`) ----------------------

METRONOME_PREFIX = "/metronome"


def metronome_problem(body: dict[str, Any], status: int) -> tuple[dict[str, Any], int, dict[str, str]]:
    """A problem document as the Metronome SDK reads errors: Metronome's `message` beside our fields, the
    status of the SDK exception that fits, and `x-should-retry` (the SDK retries 409 and 5xx by default: only
    an outage or a rate limit is worth it; our 409s are refusals).

    # NOTE: Metronome answers an invalid request with 400 (the SDK's BadRequestError): our 422 validation and
    # refusal answers are 400 here; the body keeps every field of our problem document."""
    message = body.get("detail") or body.get("title") or "error"
    shown = 400 if status == 422 else status
    return {"message": message, **body, "status": shown}, shown, \
        {"x-should-retry": "true" if shown >= 500 or shown == 429 else "false"}


class MetronomeProblemMiddleware:
    """Rewrites the problem documents answered under `/metronome` with `metronome_problem`, whoever raised
    them (a route, the authentication dependency, a body guard or the idempotency middleware)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith(METRONOME_PREFIX + "/"):
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def rewriting_send(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", []))
                if headers.get(b"content-type", b"").startswith(PROBLEM_JSON.encode()):
                    start = message
                    return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            try:
                body = json.loads(b"".join(chunks))
            except ValueError:
                body = {"title": "error"}
            rewritten, status, extra = metronome_problem(body if isinstance(body, dict) else {}, start["status"])
            raw = json.dumps(rewritten, ensure_ascii=True, separators=(",", ":")).encode()
            kept = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            headers_out = [*kept, (b"content-length", str(len(raw)).encode())]
            headers_out += [(k.encode(), v.encode()) for k, v in extra.items()]
            await send({"type": "http.response.start", "status": status, "headers": headers_out})
            await send({"type": "http.response.body", "body": raw})

        await self.app(scope, receive, rewriting_send)
