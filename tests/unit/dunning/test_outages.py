"""Which failures the dunning service waits out (outages) and which it must not (data errors, bugs)."""

from __future__ import annotations

import logging

import psycopg
import pytest
import sqlalchemy as sa
from psycopg import errors as pg_errors

from services.dunning.outages import OutageMonitor, RepeatedClientErrors, is_outage
from shared.adapters.payments.port import PaymentGatewayError
from shared.errors import DatabaseUnavailableError

pytestmark = pytest.mark.unit


def wrapped(error: Exception, *, invalidated: bool = False) -> sa.exc.DBAPIError:
    return sa.exc.DBAPIError.instance("SELECT 1", {}, error, psycopg.Error,
                                      connection_invalidated=invalidated)


@pytest.mark.parametrize("error", [
    pg_errors.AdminShutdown("terminating connection due to administrator command"),  # 57P01
    pg_errors.CannotConnectNow("the database system is starting up"),  # 57P03
    pg_errors.TooManyConnections("too many clients"),  # 53300
    pg_errors.SerializationFailure("could not serialize"),  # 40001
    pg_errors.DeadlockDetected("deadlock"),  # 40P01
    pg_errors.ConnectionFailure("connection failure"),  # 08006
    psycopg.OperationalError("connection failed: Connection refused"),  # no SQLSTATE: never connected
])
def test_connection_and_server_state_errors_are_outages(error: Exception) -> None:
    assert is_outage(wrapped(error))
    assert is_outage(error)


@pytest.mark.parametrize("error", [
    pg_errors.StringDataRightTruncation("value too long"),  # 22001
    pg_errors.UniqueViolation("duplicate key"),  # 23505
    pg_errors.CheckViolation("check"),  # 23514
    pg_errors.ProgramLimitExceeded("index row size exceeds maximum"),  # 54000
    ValueError("a bug"),
])
def test_data_errors_and_bugs_are_not_outages(error: Exception) -> None:
    assert not is_outage(wrapped(error))
    assert not is_outage(error)


def test_an_invalidated_connection_and_our_own_retryable_errors_are_outages() -> None:
    assert is_outage(wrapped(pg_errors.InternalError("server closed the connection"), invalidated=True))
    assert is_outage(DatabaseUnavailableError("PostgreSQL unavailable"))
    assert is_outage(PaymentGatewayError("stripe timed out"))


def test_an_outage_is_logged_once_when_it_begins_and_once_when_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    monitor = OutageMonitor()
    caplog.set_level(logging.INFO, logger="billing.dunning.outages")
    outage = wrapped(pg_errors.AdminShutdown("terminating connection"))
    delays = [monitor.failed("schedule", outage) for _ in range(10)]
    assert not monitor.may_run("schedule")
    assert monitor.troubles()["schedule"]["outage"] is True
    monitor.succeeded("schedule")
    monitor.succeeded("schedule")
    assert monitor.may_run("schedule") and monitor.troubles() == {}
    assert delays == sorted(delays) and delays[-1] == 5.0
    monitor.failed("notifications", DatabaseUnavailableError("PostgreSQL unavailable: connection refused"))
    assert [r.getMessage() for r in caplog.records] == [
        "PostgreSQL unreachable; schedule waits for it", caplog.records[1].getMessage(),
        "PostgreSQL unreachable; notifications waits for it"]
    assert caplog.records[1].getMessage().startswith("schedule back after ")


def test_a_failure_that_is_not_an_outage_is_logged_every_time_it_is_retried(
        caplog: pytest.LogCaptureFixture) -> None:
    monitor = OutageMonitor()
    caplog.set_level(logging.INFO, logger="billing.dunning.outages")
    for _ in range(3):
        monitor.failed("reconciliation", ValueError("a bug"))
    assert [r.levelname for r in caplog.records] == ["ERROR"] * 3
    assert monitor.troubles()["reconciliation"]["outage"] is False


def test_the_kafka_clients_repeated_errors_pass_once_a_minute_and_other_loggers_untouched() -> None:
    noise = RepeatedClientErrors(every_s=60.0)

    def record(name: str, msg: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, None)

    passed = [noise.filter(record("aiokafka", "Unable connect to node with id %s: %s", 1, n)) for n in range(50)]
    assert passed == [True] + [False] * 49
    assert noise.filter(record("aiokafka.consumer.fetcher", "Failed fetch messages from %s: %s", 1, "x"))
    assert all(noise.filter(record("billing.dunning", "event failed; retrying")) for _ in range(3))
