"""The problem layer answers the use cases' errors (`services.ingest.problems.ANSWERS`): routes let them
propagate, and each is answered with the status, problem type, title, detail and field errors the routes
used to build themselves."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.ingest.problems import command_rejected, install_problem_handlers
from services.ingest.service_layer import customers, lifecycle, usage_intake
from services.ingest.service_layer.quota_errors import (
    QuotaContentionError,
    QuotaRefusalCode,
    QuotaRefused,
    SpendContentionError,
)
from shared.adapters.clock import ClockRefusedError
from shared.domain.errors import CurrencyMismatchError, InvalidValueError
from shared.errors import RetryableError, refusal_code

pytestmark = pytest.mark.unit


def answer(error: Exception) -> tuple[int, dict[str, Any], dict[str, str]]:
    app = FastAPI()
    install_problem_handlers(app)

    @app.post("/use-case")
    def use_case() -> None:
        raise error

    response = TestClient(app, raise_server_exceptions=False).post("/use-case")
    return response.status_code, response.json(), dict(response.headers)


@pytest.mark.parametrize(("error", "status", "body"), [
    (lifecycle.UnknownCustomer("no customer 'c1'", field="customer_id"), 404,
     {"type": "/problems/not-found", "title": "Unknown customer", "detail": "no customer 'c1'", "errors": []}),
    (lifecycle.UnknownSubscription("no subscription 's1'", field="subscription_id"), 404,
     {"type": "/problems/not-found", "title": "Unknown subscription", "detail": "no subscription 's1'",
      "errors": []}),
    (lifecycle.UnknownCatalogEntry("unknown coupon 'x'", field="coupon_id"), 422,
     {"type": "/problems/validation", "title": "Unknown catalog entry", "detail": "unknown coupon 'x'",
      "errors": [{"field": "coupon_id", "reason": "unknown coupon 'x'"}]}),
    (lifecycle.PlanNotSoldInCurrency("pro", "USD", "EUR"), 422,
     {"type": "/problems/currency-mismatch", "title": "Currency mismatch",
      "detail": "plan pro bills in USD, the customer in EUR",
      "errors": [{"field": "plan_id", "reason": "currency differs from the customer's"}]}),
    (customers.MembersForOrganisationsOnly(), 422,
     {"type": "/problems/validation", "title": "Members are for organisations", "detail": None,
      "errors": [{"field": "members", "reason": "a user has no members"}]}),
    (customers.AlreadyOnboarded(["name"]), 409,
     {"type": "/problems/already-onboarded", "title": "Already onboarded",
      "detail": "this external_id was onboarded with other data",
      "errors": [{"field": "name", "reason": "differs from the onboarded customer"}]}),
    (usage_intake.CustomerStillUnknown("no customer or alias 'x' yet"), 409,
     {"type": "/problems/customer-unknown", "title": "Customer still unknown",
      "detail": "no customer or alias 'x' yet", "errors": []}),
    (usage_intake.NoSubscriptionAcceptsUsage("subscribe the customer first"), 409,
     {"type": "/problems/no-active-subscription", "title": "No subscription accepts usage",
      "detail": "subscribe the customer first", "errors": []}),
    (ClockRefusedError("the clock only moves forward"), 409,
     {"type": "/problems/clock-refused", "title": "Clock refused", "detail": "the clock only moves forward",
      "errors": []}),
    (QuotaRefused(QuotaRefusalCode.CURRENCY_MISMATCH, "the org bills in EUR", field="currency"), 422,
     {"type": "/problems/quota/currency-mismatch", "title": "Currency mismatch", "detail": "the org bills in EUR",
      "errors": []}),
    (SpendContentionError("org o: the spend state kept changing; retry"), 503,
     {"type": "/problems/quota/contention", "title": "Contention",
      "detail": "org o: the spend state kept changing; retry", "errors": []}),
])
def test_each_use_case_error_is_answered_as_the_routes_answered_it(error: Exception, status: int,
                                                                    body: dict[str, Any]) -> None:
    got_status, got_body, headers = answer(error)
    assert got_body.pop("code") == refusal_code(error)  # the machine-readable name: the refusal's own code
    assert (got_status, got_body) == (status, {**body, "status": status})
    assert headers["content-type"] == "application/problem+json"


def test_a_plan_in_another_currency_is_still_the_domains_currency_mismatch() -> None:
    assert isinstance(lifecycle.PlanNotSoldInCurrency("pro", "USD", "EUR"), CurrencyMismatchError)


def test_an_error_without_an_answer_is_still_a_500() -> None:
    status, body, _ = answer(InvalidValueError("a domain refusal no use case lets out"))
    assert (status, body["title"]) == (500, "Internal server error")


def test_a_command_the_worker_rejected_is_a_409_naming_its_refusal_code() -> None:
    problem = command_rejected("invalid_transition", "cannot pause a cancelled subscription").problem
    assert problem.model_dump() == {
        "type": "/problems/rejected/invalid_transition", "title": "Command rejected", "status": 409,
        "code": "invalid_transition", "detail": "cannot pause a cancelled subscription",
        "errors": [{"field": "subscription", "reason": "invalid_transition"}]}


@pytest.mark.parametrize("error", [
    QuotaContentionError("org o: the quota state kept changing; retry"),
    SpendContentionError("org o: the spend state kept changing; retry"),
])
def test_a_retryable_contention_is_a_503_problem_with_retry_after(error: Exception) -> None:
    status, body, headers = answer(error)
    assert (status, body["type"], body["title"], body["detail"]) == (
        503, "/problems/quota/contention", "Contention", str(error))
    assert headers["retry-after"] == "1" and headers["content-type"] == "application/problem+json"


def test_any_retryable_error_without_an_answer_of_its_own_is_a_503_with_retry_after() -> None:
    class LockTimeout(RetryableError):
        pass

    status, body, headers = answer(LockTimeout("try again"))
    assert (status, body["type"], headers["retry-after"]) == (503, "/problems/unavailable", "1")
