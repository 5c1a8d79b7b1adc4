"""`plain_rows` (issue 17): the rows a billing run loads (subscriptions, credit grants and entries) read as
namedtuples, which answer every column by attribute and by position with the same values as SQLAlchemy's Row
(whose attribute lookup cost about 1 µs per field)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from shared.adapters.postgres.rows import plain_rows

pytestmark = pytest.mark.integration


def test_plain_rows_read_like_rows(engine: sa.Engine) -> None:
    query = sa.text("SELECT 'sub_1' AS subscription_id, 7::bigint AS amount_minor, NULL::text AS currency, "
                    "now() AS \"interval\", 1.5::numeric AS units UNION ALL "
                    "SELECT 'sub_2', -1, 'USD', now(), NULL")
    with engine.connect() as conn:
        rows, plain = conn.execute(query).all(), plain_rows(conn.execute(query))
        empty = plain_rows(conn.execute(sa.text("SELECT 1 AS a WHERE false")))
    assert empty == []
    assert [tuple(p) for p in plain] == [tuple(r) for r in rows]
    for row, fast in zip(rows, plain, strict=True):
        for name in ("subscription_id", "amount_minor", "currency", "interval", "units"):
            assert getattr(fast, name) == getattr(row, name)
