"""The project's one error root, `BillingError`, and its two families.

- `RetryableError`: what failed was around the input (a broker, database or provider that is down or failed
  transiently): the same input may succeed later, so consumers back off and retry, the edge answers 503.
- `TerminalError`: the input itself cannot succeed, whatever the retries: a consumer dead-letters the message,
  a command is stored `rejected`, the edge answers 4xx. `shared.domain.errors.DomainError` (every rule the
  domain refuses) is one; `RefusedError` is the family of refusals outside the domain, each with a `code`.

`FencedError` belongs to neither: the work is not wrong and must not be retried by this instance; it is
discarded (another instance owns the partition now).

A refusal's `code` is machine-readable (snake_case, e.g. ``program_limit_exceeded``); it travels in dead
letters (`reason`), command outcomes (`error_code`) and problem documents. Only the edge's problem layer
(`services/ingest/problems.py`) maps errors to HTTP statuses. Driver errors (psycopg, confluent-kafka,
Stripe) are translated into these families by the adapters (`raise ... from error`), or classified where
they surface by `shared.adapters.retry_policy.is_retryable` (a database error by its SQLSTATE).

Stdlib only: the domain's errors derive from it.
"""

from __future__ import annotations

import re
from typing import ClassVar


class BillingError(Exception):
    """Root of every error the project raises on purpose.

    `retryable` says whether the same input can succeed later; `code` is the machine-readable reason of a
    refusal, or None for an error with no code of its own (a dead letter then says ``unprocessable``).
    """

    retryable: ClassVar[bool] = False
    code: str | None = None


class RetryableError(BillingError):
    """Family: the infrastructure failed; the same input may succeed later."""

    retryable: ClassVar[bool] = True


class TerminalError(BillingError):
    """Family: the input cannot succeed, whatever the retries."""

    retryable: ClassVar[bool] = False


class RefusedError(TerminalError):
    """A refusal outside the domain's rules, with its machine-readable `code`."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


# --- retryable ------------------------------------------------------------------------------------------


class InfrastructureError(RetryableError):
    """A broker, database or provider failed; the same input may succeed later."""


class DeliveryError(InfrastructureError):
    """Kafka did not acknowledge a message (after librdkafka's own retries)."""


class DatabaseUnavailableError(InfrastructureError):
    """PostgreSQL could not be reached or the transaction failed for a transient reason."""


# --- terminal -------------------------------------------------------------------------------------------


class DataRejectedError(RefusedError):
    """The database refused this data for good (too large for an index, value too long, constraint, NUL
    byte...): retrying the same message cannot succeed. `code` is machine-readable (the SQLSTATE's condition
    name, e.g. ``program_limit_exceeded``)."""

    def __init__(self, message: str, *, code: str, sqlstate: str | None = None) -> None:
        super().__init__(message, code=code)
        self.sqlstate = sqlstate


# --- neither --------------------------------------------------------------------------------------------


class FencedError(BillingError):
    """This consumer instance no longer owns the partition; its work must be discarded, not committed."""

    retryable: ClassVar[bool] = False


def refusal_code(error: BaseException) -> str:
    """The machine-readable code of a refusal: its own `code`, else its class name in snake_case without
    the ``Error`` suffix (`InvalidTransitionError` -> ``invalid_transition``)."""
    code = getattr(error, "code", None)
    if isinstance(code, str) and code:
        return code
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(error).__name__.removesuffix("Error")).lower()
