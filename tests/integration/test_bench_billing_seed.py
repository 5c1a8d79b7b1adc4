"""The billing-run benchmark's seed (bench/bench_billing_run.py): seeded through the handlers once, growing
along the curve, then copied table by table into each run's schema. A copy must be row for row what the
handlers wrote (the close then sees exactly what real subscribers have), and ids drawn after the copy must
not collide with copied ones."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from bench.bench_billing_run import copy_seed, seed
from shared.adapters.postgres.migrate import drop_schema, upgrade
from shared.adapters.postgres.schema import metadata

pytestmark = pytest.mark.integration


@pytest.fixture
def target(database_url: str) -> Iterator[str]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    upgrade(database_url, schema)
    yield schema
    drop_schema(database_url, schema)


def _fingerprints(conn: sa.Connection, schema: str) -> dict[str, tuple[int, str | None]]:
    """Per table: its row count and an md5 over its rows as text, in a stable order."""
    out = {}
    for t in metadata.sorted_tables:
        row = conn.execute(sa.text(f'SELECT count(*), md5(string_agg(r::text, \'|\' ORDER BY r::text)) '
                                   f'FROM "{schema}"."{t.name}" r')).one()
        out[t.name] = (int(row[0]), row[1])
    return out


def test_a_copied_seed_is_row_for_row_the_handlers_rows_and_grows_by_the_new_subscriptions_only(
        engine, settings, target):
    source = settings.database_schema
    seed(engine, 30)
    seed(engine, 40, first=30)
    copy_seed(engine, source, target)

    with engine.connect() as conn:
        original, copied = _fingerprints(conn, source), _fingerprints(conn, target)
        subscriptions = conn.execute(sa.text(
            f'SELECT count(*), count(DISTINCT subscription_id) FROM "{target}".subscriptions')).one()
        invoices = conn.execute(sa.text(f'SELECT count(*), count(*) FILTER (WHERE status = \'paid\') '
                                        f'FROM "{target}".invoices')).one()
    assert copied == original
    assert tuple(subscriptions) == (40, 40)  # 30 then 10 more, none twice
    assert invoices[0] == 40 and invoices[1] == 40  # each first invoice settled, as the seed leaves it

    # identity columns continue after the copied ids: a row written in the copy takes a fresh id
    with engine.begin() as conn:
        copied_max = conn.execute(sa.text(f'SELECT max(id) FROM "{target}".outbox')).scalar_one()
        drawn = conn.execute(sa.text("SELECT nextval(pg_get_serial_sequence(:t, 'id'))"),
                             {"t": f'"{target}".outbox'}).scalar_one()
    assert copied_max is not None and drawn == copied_max + 1
