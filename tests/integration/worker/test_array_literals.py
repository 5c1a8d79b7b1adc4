"""Array parameters written as literals (`shared/adapters/postgres/arrays.py`, issue 17): PostgreSQL reads back
exactly the values psycopg's own list dumping would have given it, for any text, instants in any offset and
numbers, NULLs included."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
import sqlalchemy as sa

from shared.adapters.postgres.arrays import instant_array, number_array, text_array

pytestmark = pytest.mark.integration

TEXTS = ["sub_1", "", "a,b", "{x}", 'say "hi"', "back\\slash", " spaced ", "NULL", "null", None, "é ü 中", "\t\n",
         '{"meter": "2.75"}']
INSTANTS = [datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 1, 31, 23, 59, 59, 999_999, tzinfo=UTC),
            datetime(2026, 3, 29, 2, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))), None]
DECIMALS = [Decimal("2.75"), Decimal("-0.000001"), Decimal("1E+3"), Decimal("123456789012345678.123456789"), None]
INTEGERS = [0, -7, 2**62, None]


@pytest.mark.parametrize(("literal", "values", "type_"), [
    (text_array, TEXTS, "text[]"), (instant_array, INSTANTS, "timestamptz[]"), (number_array, DECIMALS, "numeric[]"),
    (number_array, INTEGERS, "bigint[]")])
def test_the_server_reads_back_what_psycopg_would_have_sent(engine: sa.Engine, literal, values, type_) -> None:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        ours = conn.execute(sa.text(f"SELECT CAST(:v AS {type_})"), {"v": literal(values)}).scalar_one()
        psycopgs = conn.execute(sa.text(f"SELECT CAST(:v AS {type_})"), {"v": values}).scalar_one()
    assert ours == psycopgs == values


def test_a_naive_instant_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        instant_array([datetime(2026, 2, 1)])
