"""Refusals of the quota and spend use cases: a machine-readable ``code`` (and the request field at fault),
never an HTTP status. The problem layer (``services.ingest.problems.ANSWERS``) maps each code to its problem
document; a new code without an answer there fails its unit test."""

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


class ContentionError(RetryableError):
    """The state kept changing under a request (``MAX_ATTEMPTS`` lost compare-and-sets in a row): the same
    request may succeed at once, so it is retryable (the edge answers 503 with Retry-After)."""

    code = QuotaRefusalCode.CONTENTION

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class SpendContentionError(ContentionError):
    """The spend state kept changing under an authorisation: retry."""


class QuotaContentionError(ContentionError):
    """A report-credit batch lost the compare-and-set ``MAX_ATTEMPTS`` times in a row: retry (the row-locked
    path makes it rare)."""
