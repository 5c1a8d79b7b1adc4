"""`one_of` and the session time zone (issue 17). The batch reads match ids with `= ANY(array)`: the same rows
as `IN (...)` for text and uuid columns, and a statement whose text does not grow with the number of ids (so
psycopg and PostgreSQL reuse their parse of it; `IN` gave one placeholder per id). Instants come back in
`datetime.UTC`."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from shared.adapters.postgres.match import one_of

pytestmark = pytest.mark.integration

_VALUES = sa.text("SELECT * FROM (VALUES ('a', 'f5f0d3c2-8d0e-4b8a-9a55-0d6f3c1d2e01'::uuid), "
                  "('b', '0b0e8b1e-5b0a-4a53-8c1e-3f0f1f2a3b4c'::uuid), ('c', NULL::uuid)) AS v(name, ref)")


def test_one_of_finds_the_rows_in_finds(engine: sa.Engine) -> None:
    rows = _VALUES.columns(sa.column("name", sa.Text), sa.column("ref", sa.Uuid)).subquery()
    wanted_names = ["a", "c", "zz"]
    wanted_refs = [uuid.UUID("0b0e8b1e-5b0a-4a53-8c1e-3f0f1f2a3b4c"), uuid.uuid4()]
    with engine.connect() as conn:
        for column, wanted in ((rows.c.name, wanted_names), (rows.c.ref, wanted_refs)):
            by_any = conn.execute(sa.select(rows.c.name).where(one_of(column, wanted)).order_by(rows.c.name))
            by_in = conn.execute(sa.select(rows.c.name).where(column.in_(wanted)).order_by(rows.c.name))
            assert by_any.scalars().all() == by_in.scalars().all()
        assert conn.execute(sa.select(rows.c.name).where(one_of(rows.c.name, []))).all() == []


def test_the_statement_text_is_the_same_for_any_number_of_ids() -> None:
    table = sa.table("subscriptions", sa.column("subscription_id", sa.Text))

    def text(ids: list[str]) -> str:
        query = sa.select(table).where(one_of(table.c.subscription_id, ids))
        return str(query.compile(dialect=postgresql.psycopg.dialect()))

    assert text(["sub_1"]) == text([f"sub_{i}" for i in range(5_000)])
    assert "ANY" in text(["sub_1"])


def test_instants_come_back_in_the_domains_utc(engine: sa.Engine) -> None:
    # Debian's server default "Etc/UTC" made psycopg return ZoneInfo instants, each comparison with the
    # domain's datetime.UTC ~15x dearer; every session now asks for "UTC", which psycopg maps to datetime.UTC.
    with engine.connect() as conn:
        at = conn.execute(sa.text("SELECT timestamptz '2026-02-01 00:00:00+00'")).scalar_one()
        zone = conn.execute(sa.text("SHOW timezone")).scalar_one()
    assert zone == "UTC"
    assert at == datetime(2026, 2, 1, tzinfo=UTC) and at.tzinfo is UTC
