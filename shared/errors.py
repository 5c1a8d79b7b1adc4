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
