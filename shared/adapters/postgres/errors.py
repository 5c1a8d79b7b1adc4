"""PostgreSQL errors translated at the adapter: an outage (retry later) or a refusal of the data (never retry).

The rule is the SQLSTATE, not the driver's exception class: psycopg maps SQLSTATE 54000
(program_limit_exceeded, e.g. "index row size exceeds maximum" for a 10,000-character id) to
``OperationalError``, the same class as a lost connection, and a consumer that retried every
``OperationalError`` retried that message forever. Only the states below can succeed on a retry of the same
input; every other SQLSTATE (class 22 data exception, 23 integrity constraint violation, 54 program limit,
...) and the driver's own refusals (a NUL byte in text, a value it cannot
adapt) are terminal for the message.
"""

from __future__ import annotations

import re

import psycopg
import sqlalchemy as sa

from shared.errors import DatabaseUnavailableError, DataRejectedError

# Classes: 08 connection exception, 53 insufficient resources (disk full, out of memory, too many
# connections), 57 operator intervention (admin/crash shutdown, cannot connect now, statement timeout),
# 58 system error (I/O), XX internal error. A failover to a read-only standby is 25006.
# NOTE: 42 (undefined table or column, insufficient privilege, syntax) and 0A (feature not supported) are
# never caused by a message's data (every value is a bound parameter): they mean the code and the schema
# disagree (a deploy ahead of its migration, a revoked grant). Dead-lettering would park every message;
# retrying waits for the fix, with an error logged on every attempt.
ENVIRONMENT_SQLSTATE_CLASSES = frozenset({"08", "53", "58", "XX", "42", "0A"})
ENVIRONMENT_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "25006"})
TRANSIENT_SQLSTATE_CLASSES = frozenset({"57"}) | ENVIRONMENT_SQLSTATE_CLASSES
TRANSIENT_SQLSTATES = frozenset({
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "40003",  # statement_completion_unknown
    "55P03",  # lock_not_available
    "55006",  # object_in_use
    "25006",  # read_only_sql_transaction
})


def driver_error(error: BaseException) -> psycopg.Error | None:
    """The psycopg error behind `error` (raised directly, e.g. by COPY, or wrapped by SQLAlchemy)."""
    if isinstance(error, sa.exc.DBAPIError):
        orig = error.orig
        return orig if isinstance(orig, psycopg.Error) else None
    return error if isinstance(error, psycopg.Error) else None


def is_database_error(error: BaseException) -> bool:
    return isinstance(error, sa.exc.DBAPIError | sa.exc.TimeoutError | psycopg.Error)


def is_connection_error(error: BaseException) -> bool:
    """The session is gone or could not be had: no server answer at all (refused, reset, pool timeout)."""
    if isinstance(error, sa.exc.TimeoutError):  # pool exhausted while connections hang on a dead server
        return True
    if isinstance(error, sa.exc.DBAPIError) and error.connection_invalidated:
        return True
    orig = driver_error(error)
    if orig is None:
        return False
    state = orig.sqlstate
    if state is None:  # the driver's own error: only a lost or refused connection has no SQLSTATE then
        return isinstance(orig, psycopg.OperationalError | psycopg.InterfaceError)
    return state.startswith("08") or state in {"57P01", "57P02", "57P03"}


def is_environment_error(error: BaseException) -> bool:
    """The database as a whole cannot do the work (gone, out of resources, read-only, or not the schema the
    code expects): never the fault of the message being applied, whatever the number of attempts."""
    if is_connection_error(error):
        return True
    orig = driver_error(error)
    state = orig.sqlstate if orig is not None else None
    return state is not None and (state[:2] in ENVIRONMENT_SQLSTATE_CLASSES or state in ENVIRONMENT_SQLSTATES)


def is_transient(error: BaseException) -> bool:
    """True when retrying the same statement with the same data can succeed (see the module docstring)."""
    if is_connection_error(error):
        return True
    orig = driver_error(error)
    state = orig.sqlstate if orig is not None else None
    if state is None:
        return False
    return state[:2] in TRANSIENT_SQLSTATE_CLASSES or state in TRANSIENT_SQLSTATES


def reason_code(error: BaseException) -> str:
    """A machine-readable reason: the SQLSTATE's condition name (``program_limit_exceeded``,
    ``string_data_right_truncation``, ``check_violation``...), else ``database_error``."""
    orig = driver_error(error)
    if orig is None or type(orig).__module__ != "psycopg.errors" or not orig.sqlstate:
        if orig is not None and not orig.sqlstate and isinstance(orig, psycopg.DataError):
            return "invalid_data"  # refused by the driver before it reached the server (e.g. a NUL byte)
        return "database_error"
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(orig).__name__).lower()


def describe(error: BaseException) -> str:
    """The server's own words (primary message, detail), without the SQL statement and its parameters,
    which can hold the whole offending value."""
    orig = driver_error(error)
    if orig is None:
        return str(error)
    diag = orig.diag
    first_line = next(iter(str(orig).splitlines()), "") or type(orig).__name__
    parts = [diag.message_primary or first_line]
    if diag.message_detail:
        parts.append(diag.message_detail)
    if orig.sqlstate:
        parts.append(f"SQLSTATE {orig.sqlstate}")
    return "; ".join(p for p in parts if p)[:1000]


def translate(error: BaseException) -> BaseException:
    """A database error as this project's error family (``DatabaseUnavailableError`` or
    ``DataRejectedError``, chained to the original); any other error unchanged."""
    if not is_database_error(error):
        return error
    if is_transient(error):
        translated: BaseException = DatabaseUnavailableError(describe(error))
    else:
        orig = driver_error(error)
        translated = DataRejectedError(describe(error), code=reason_code(error),
                                       sqlstate=orig.sqlstate if orig is not None else None)
    translated.__cause__ = error
    return translated
