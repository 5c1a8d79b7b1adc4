"""Error families outside the domain. Like `shared.domain.errors.DomainError`, each class says whether
retrying the same input can succeed (`retryable`), which is what consumers use to choose between
backoff-and-retry and the DLQ."""

from __future__ import annotations

from typing import ClassVar


class InfrastructureError(Exception):
    """A broker, database or provider failed; the same input may succeed later."""

    retryable: ClassVar[bool] = True


class DeliveryError(InfrastructureError):
    """Kafka did not acknowledge a message (after librdkafka's own retries)."""


class DatabaseUnavailableError(InfrastructureError):
    """PostgreSQL could not be reached or the transaction failed for a transient reason."""


class FencedError(Exception):
    """This consumer instance no longer owns the partition; its work must be discarded, not committed."""

    retryable: ClassVar[bool] = False


class DataRejectedError(Exception):
    """The database refused this data for good (too large for an index, value too long, constraint, NUL
    byte...): retrying the same message cannot succeed. `code` is machine-readable (the SQLSTATE's condition
    name, e.g. ``program_limit_exceeded``)."""

    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, code: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.sqlstate = sqlstate
