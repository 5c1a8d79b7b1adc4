"""Refusals of the quota and spend use cases: a machine-readable ``code`` (and the request field at fault),
never an HTTP status. The route layer (``services.ingest.routes.quota``) maps each code to its problem
document; a new code without a mapping there fails the route's unit test."""

from __future__ import annotations

from enum import StrEnum

from shared.errors import RefusedError, RetryableError


class QuotaRefusalCode(StrEnum):
    # report-credit administration and reads
    UNKNOWN_PLAN = "unknown_plan"
    PLAN_ALREADY_SET = "plan_already_set"
    UNKNOWN_ORG = "unknown_org"
    INVALID_TIMEZONE = "invalid_timezone"
    INVALID_LIMIT = "invalid_limit"
    INVALID_THRESHOLDS = "invalid_thresholds"
    INVALID_TOP_UP = "invalid_top_up"
    # using a report credit
    ENQUIRY_CONFLICT = "enquiry_conflict"
    # usage-tier spend
    NO_SUBSCRIPTION = "no_subscription"
    NO_USAGE_TIER = "no_usage_tier"
    INVALID_CAP = "invalid_cap"
    CURRENCY_MISMATCH = "currency_mismatch"
    INVALID_QUANTITY = "invalid_quantity"
    REQUEST_CONFLICT = "request_conflict"
    CONTENTION = "contention"


class QuotaRefused(RefusedError):
    """A quota or spend request refused whatever the state (unknown plan, bad value, conflict): terminal."""

    code: QuotaRefusalCode

    def __init__(self, code: QuotaRefusalCode, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail, code=code)
        self.detail = detail
        self.field = field


class SpendContentionError(RetryableError):
    """The spend state kept changing under an authorisation (``MAX_ATTEMPTS`` lost compare-and-sets): retry."""

    code = QuotaRefusalCode.CONTENTION

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class QuotaContentionError(RetryableError):
    """A report-credit batch lost the compare-and-set ``MAX_ATTEMPTS`` times in a row: retry.

    # NOTE: not mapped by the routes, so still answered 500 as before the refactor (the row-locked path
    # makes it practically unreachable); mapping it to 503 like ``SpendContentionError`` would be a change.
    """
