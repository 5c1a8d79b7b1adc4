"""One rule for the worker: an error is retried only when the same input can succeed later. Real psycopg error
classes, raised bare (COPY) or wrapped by SQLAlchemy as the handlers see them."""

from __future__ import annotations

import psycopg
import psycopg.errors
import pytest
import sqlalchemy as sa

from services.billing_worker.service_layer.messagebus import MessageRejected, RetriesExhausted, Suspicion
from shared.adapters.kafka.dlq import DeadLetter
from shared.adapters.postgres import errors as pg_errors
from shared.adapters.retry_policy import is_outage, is_retryable
from shared.contracts.envelope import EnvelopeError
from shared.domain.errors import DomainError
from shared.errors import DatabaseUnavailableError, DataRejectedError, DeliveryError, FencedError

pytestmark = pytest.mark.unit


def server_error(sqlstate: str, message: str = "refused") -> psycopg.Error:
    return psycopg.errors.lookup(sqlstate)(message)


def wrapped(orig: psycopg.Error, *, invalidated: bool = False) -> sa.exc.DBAPIError:
    """As SQLAlchemy raises it from conn.execute (its class follows the driver's)."""
    return sa.exc.DBAPIError.instance("INSERT ...", {}, orig, psycopg.Error,
                                      connection_invalidated=invalidated)  # type: ignore[return-value]


DATA_REFUSALS = {
    "54000": "program_limit_exceeded",  # index row too large: psycopg's OperationalError, the old infinite loop
    "22001": "string_data_right_truncation",
    "22P02": "invalid_text_representation",
    "22003": "numeric_value_out_of_range",
    "22021": "character_not_in_repertoire",
    "23505": "unique_violation",
    "23514": "check_violation",
    "23502": "not_null_violation",
}

OUTAGES = ["08006", "08001", "57P01", "57P02", "57P03", "53300", "53100", "53200", "40001", "40P01", "55P03",
           "57014", "58030", "25006", "42703", "42P01", "42501", "0A000"]
# The database as a whole cannot do the work: never charged to a message by the parking bound.
ENVIRONMENT = ["08006", "57P01", "53100", "58030", "XX000", "25006", "42703", "42P01", "42501", "0A000"]


@pytest.mark.parametrize(("sqlstate", "code"), sorted(DATA_REFUSALS.items()))
def test_data_the_database_refuses_is_terminal_and_says_why(sqlstate: str, code: str) -> None:
    for error in (server_error(sqlstate), wrapped(server_error(sqlstate))):
        assert not is_retryable(error)
        translated = pg_errors.translate(error)
        assert isinstance(translated, DataRejectedError)
        assert (translated.code, translated.sqlstate) == (code, sqlstate)
        assert translated.__cause__ is error


def test_program_limit_exceeded_is_terminal_although_psycopg_makes_it_an_operational_error() -> None:
    error = wrapped(server_error("54000", "index row size 10016 exceeds btree version 4 maximum 2704"))
    assert isinstance(error, sa.exc.OperationalError)
    assert not is_retryable(error)
    assert not is_outage(error)


@pytest.mark.parametrize("sqlstate", OUTAGES)
def test_outage_states_are_retried(sqlstate: str) -> None:
    for error in (server_error(sqlstate), wrapped(server_error(sqlstate))):
        assert is_retryable(error)
        assert isinstance(pg_errors.translate(error), DatabaseUnavailableError)


def test_a_lost_or_refused_connection_is_an_outage() -> None:
    refused = psycopg.OperationalError("connection failed: Connection refused")  # no SQLSTATE
    for error in (refused, wrapped(refused), wrapped(server_error("57P01")),
                  wrapped(server_error("22001"), invalidated=True), sa.exc.TimeoutError("QueuePool limit")):
        assert is_retryable(error) and is_outage(error)


def test_a_statement_timeout_is_retried_but_is_not_an_outage() -> None:
    # The bound charges it to the batch after N attempts while the database answers.
    error = wrapped(server_error("57014", "canceling statement due to statement timeout"))
    assert is_retryable(error) and not is_outage(error)


def test_the_drivers_own_refusal_of_a_nul_byte_is_terminal() -> None:
    error = wrapped(psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"))
    assert not is_retryable(error)
    assert pg_errors.reason_code(error) == "invalid_data"


def test_the_other_families() -> None:
    assert is_retryable(DeliveryError("broker down")) and is_outage(DeliveryError("broker down"))
    assert is_retryable(DatabaseUnavailableError("down"))
    assert not is_retryable(FencedError("taken over"))
    assert not is_retryable(MessageRejected("no"))
    assert not is_retryable(DomainError("refused"))
    assert not is_retryable(ValueError("a bug is terminal for the message"))
    assert not is_retryable(EnvelopeError("not JSON"))


def test_the_reason_never_carries_the_offending_value_from_the_statement() -> None:
    huge = "x" * 10_000
    orig = server_error("54000", "index row requires 10016 bytes, maximum size is 8191")
    error = sa.exc.DBAPIError.instance("INSERT INTO subscriptions VALUES (%(c)s)", {"c": huge}, orig, psycopg.Error)
    assert huge[:100] not in pg_errors.describe(error)
    assert "SQLSTATE 54000" in pg_errors.describe(error)


def test_dead_letters_carry_a_machine_readable_reason() -> None:
    def reason(error: BaseException) -> str:
        return DeadLetter.of("commands.v1", 0, 1, b"k", b"v", error).reason

    assert reason(EnvelopeError("not JSON")) == "invalid_envelope"
    assert reason(MessageRejected("gone", code="unknown_subscription")) == "unknown_subscription"
    assert reason(pg_errors.translate(wrapped(server_error("54000")))) == "program_limit_exceeded"
    parked = RetriesExhausted(Suspicion(5, wrapped(server_error("57014"))), wrapped(server_error("57014")))
    assert reason(parked) == "retries_exhausted"
    assert "QueryCanceled" in str(parked)
    assert reason(ValueError("bug")) == "unprocessable"
    headers = dict(DeadLetter.of("commands.v1", 0, 1, b"k", b"v", parked).to_outgoing().headers)
    assert headers["reason"] == b"retries_exhausted"


@pytest.mark.parametrize("sqlstate", ENVIRONMENT)
def test_a_database_that_cannot_do_the_work_is_an_outage_and_never_parks_a_message(sqlstate: str) -> None:
    # A failover to a read-only standby, a full disk, or a deploy ahead of its migration (undefined column)
    # fails every message alike: parking would empty the stream into the DLQ.
    for error in (server_error(sqlstate), wrapped(server_error(sqlstate))):
        assert is_retryable(error) and is_outage(error)
