"""`RawStatement`: the quota writes' placeholders converted once into PostgreSQL's form."""

import pytest

from shared.adapters.postgres import quota_lease_store, quota_store
from shared.adapters.postgres.raw_statement import RawStatement


def test_a_name_used_twice_is_one_parameter_in_first_use_order() -> None:
    statement = RawStatement("SELECT %(b)s, %(a)s WHERE x = %(b)s")

    assert statement.sql == "SELECT $1, $2 WHERE x = $1"
    assert statement.args({"a": 1, "b": 2, "unused": 3}) == [2, 1]


def test_any_other_percent_sign_is_refused() -> None:
    with pytest.raises(ValueError, match="placeholders"):
        RawStatement("SELECT %s")


def test_the_statements_run_this_way_are_the_ones_past_psycopgs_cache() -> None:
    # the reason they are raw: psycopg re-scans texts over 4,096 bytes on every call
    for text, statement in ((quota_store._COMMIT_SQL, quota_store._COMMIT),
                            (quota_store._GROUP_COMMIT_SQL, quota_store._GROUP_COMMIT),
                            (quota_lease_store._COMMIT_SQL, quota_lease_store._COMMIT)):
        assert len(text.encode()) > 4096
        assert statement.sql == RawStatement(text).sql and "%(" not in statement.sql
