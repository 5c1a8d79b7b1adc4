"""Outages of what dunning depends on: which errors are one, and how a job waits one out.

An *outage* is a failure that the same work will get past once PostgreSQL, Kafka or the provider is back:
connection refused or lost, the server shutting down, too many connections, a serialisation failure or a
deadlock. Anything else (a payload that does not validate, a constraint or value error, a bug) is not cured
by waiting; the caller dead-letters the event or reports the job as failing.

Database errors are classified by SQLSTATE with the rule the worker uses (``shared.adapters.retry_policy``:
connection exceptions, insufficient resources, operator intervention, serialisation failures and deadlocks,
an invalidated connection); our own ``InfrastructureError`` family is retryable by definition.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Final

import psycopg
import sqlalchemy as sa

from shared.adapters.payments.port import PaymentGatewayError
from shared.adapters.postgres.errors import is_database_error
from shared.adapters.retry_policy import is_retryable
from shared.errors import DatabaseUnavailableError, DeliveryError, InfrastructureError
from shared.observability import kv

log = logging.getLogger("billing.dunning.outages")

FIRST_BACKOFF_S: Final = 0.5
MAX_OUTAGE_BACKOFF_S: Final = 5.0
"""Short enough that every job is back within seconds of the outage ending."""
MAX_FAILURE_BACKOFF_S: Final = 60.0
"""A job failing for another reason (a bug, bad data) is retried slowly: it needs a human."""


def is_outage(error: BaseException) -> bool:
    """True when retrying the same work later can succeed because what failed was the infrastructure: the
    first infrastructure or database error in the chain of causes decides, by the services' one rule
    (``shared.adapters.retry_policy.is_retryable``)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, InfrastructureError) or is_database_error(current):
            return is_retryable(current)
        current = current.__cause__ or current.__context__
    return False


def describe(error: BaseException) -> str:
    """What is down, for the one log line per outage."""
    if isinstance(error, PaymentGatewayError):
        return "payment provider unreachable"
    if isinstance(error, DeliveryError):
        return "Kafka unreachable"
    if isinstance(error, (DatabaseUnavailableError, sa.exc.SQLAlchemyError, psycopg.Error)):
        return "PostgreSQL unreachable"
    return f"{type(error).__name__}"


@dataclass
class _Trouble:
    since_monotonic: float
    since_wall: float
    error: str
    outage: bool
    retry_at: float
    backoff_s: float
    failures: int = 1


class OutageMonitor:
    """Per job (a timer, the event agent): is it waiting out an outage, and when may it try again.

    Logs one warning when a job's outage begins and one line when it is over (not one per tick); a failure
    that is not an outage is logged with its traceback each time it is retried, with a slower backoff.
    Readiness reads ``troubles``.
    """

    def __init__(self) -> None:
        self._troubles: dict[str, _Trouble] = {}

    def may_run(self, job: str) -> bool:
        trouble = self._troubles.get(job)
        return trouble is None or time.monotonic() >= trouble.retry_at

    def failed(self, job: str, error: BaseException) -> float:
        """Record a failure of ``job``; returns how long to wait before the next try."""
        outage = is_outage(error)
        now = time.monotonic()
        trouble = self._troubles.get(job)
        cap = MAX_OUTAGE_BACKOFF_S if outage else MAX_FAILURE_BACKOFF_S
        text = f"{type(error).__name__}: {error}"[:500]
        if trouble is None:
            trouble = _Trouble(now, time.time(), text, outage, now + FIRST_BACKOFF_S, FIRST_BACKOFF_S)
            self._troubles[job] = trouble
            if outage:
                log.warning(f"{describe(error)}; {job} waits for it", extra=kv(job=job, error=text))
        else:
            trouble.failures += 1
            trouble.backoff_s = min(cap, trouble.backoff_s * 2)
            trouble.retry_at = now + trouble.backoff_s
            trouble.error, trouble.outage = text, outage
        if not outage:
            log.error(f"{job} failed; retrying", exc_info=error,
                      extra=kv(job=job, failures=trouble.failures, retry_in_s=trouble.backoff_s))
        return trouble.backoff_s

    def succeeded(self, job: str) -> None:
        trouble = self._troubles.pop(job, None)
        if trouble is not None:
            down_s = round(time.monotonic() - trouble.since_monotonic, 1)
            log.warning(f"{job} back after {down_s} s", extra=kv(job=job, down_s=down_s, failures=trouble.failures))

    def troubles(self) -> dict[str, dict[str, object]]:
        """Jobs not working right now: since when (epoch seconds), the last error, outage or failure."""
        return {job: {"since": t.since_wall, "error": t.error, "outage": t.outage, "failures": t.failures}
                for job, t in self._troubles.items()}


class RepeatedClientErrors(logging.Filter):
    """Lets one record per message template and minute through from the Kafka client's loggers.

    While the broker is down, aiokafka logs every failed connect, metadata refresh, fetch and heartbeat
    (~2,000 ERROR lines in 30 s); they say one thing, "Kafka is unreachable", which once a minute says as
    well. Records of other loggers pass untouched.
    """

    def __init__(self, prefixes: tuple[str, ...] = ("aiokafka",), every_s: float = 60.0) -> None:
        super().__init__()
        self._prefixes = prefixes
        self._every_s = every_s
        self._last: dict[tuple[str, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self._prefixes) or record.levelno >= logging.CRITICAL:
            return True
        key = (record.name, str(record.msg))
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._every_s:
            return False
        self._last[key] = now
        return True
