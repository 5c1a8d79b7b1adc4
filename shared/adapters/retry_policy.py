"""Which failures are retried and which are charged to the message: the one rule every consumer loop,
relay and background task of the services applies (docs/architecture.md, "Poison and outages")."""

from __future__ import annotations

from shared.adapters.postgres import errors as pg_errors
from shared.errors import DatabaseUnavailableError, DeliveryError, FencedError, InfrastructureError


def is_retryable(error: BaseException) -> bool:
    """Transient (retry the batch with backoff) or terminal (DLQ the message)? The worker's one rule.

    Infrastructure errors (broker, provider) and the database's outage states are transient; a database
    error is classified by its SQLSTATE (``shared.adapters.postgres.errors.is_transient``), never by the
    driver's exception class. Everything else, including domain errors, data the database refuses and
    unexpected exceptions, is terminal for the message.
    """
    if isinstance(error, FencedError):
        return False
    if isinstance(error, InfrastructureError):
        return True
    if pg_errors.is_database_error(error):
        return pg_errors.is_transient(error)
    return bool(getattr(type(error), "retryable", False))


def is_outage(error: BaseException) -> bool:
    """The database or the broker cannot do the work at all (no answer, out of resources, read-only after a
    failover, a schema the code does not expect): retried for as long as it lasts, never charged to a message
    (see ``RetriesExhausted``)."""
    return (isinstance(error, DeliveryError | DatabaseUnavailableError)
            or pg_errors.is_environment_error(error))
