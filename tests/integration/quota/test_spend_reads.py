"""Reading an org's spend counts each authorisation once, and reads only the authorisations whose usage events
may still be on their way, however many the org made in the period.

The regression: the read summed every reservation of the period and looked each one's usage event up, so an org
read again every few seconds by the edge paid for all of its month's authorisations each time (22 ms of
PostgreSQL at 100,000, and growing with the month). `spend_materialised` now counts the materialised ones up
to a reservation number; the reads here are real writes (`SpendStore.authorise`) and real usage event rows,
checked against the sums the old read computed.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from shared.adapters.postgres.spend_store import _RESERVED_SQL, _SETTLE_SQL, Authorisation, Reservation, SpendStore
from shared.domain.spend import SpendUsage
from tests.integration.quota.plans import rows_read

pytestmark = pytest.mark.integration

PERIOD_START = datetime(2026, 3, 1, tzinfo=UTC)
PERIOD_END = PERIOD_START + timedelta(days=31)
AUTHORISED = 2_000
BATCH = 250


def _authorise(engine: sa.Engine, org_id: str, first: int, count: int, version: int) -> None:
    """Requests ``r{first}`` .. ``r{first + count - 1}``, quantity ``i % 7 + 1``, in batches of ``BATCH``."""
    for start in range(first, first + count, BATCH):
        reservations, spent = [], 0
        for i in range(start, min(start + BATCH, first + count)):
            spent += i % 7 + 1
            reservations.append(Reservation(request_id=f"r{i}", quantity=i % 7 + 1, spent_quantity=spent,
                                            event_id=uuid.uuid4(), envelope_json="{}"))
        with engine.begin() as conn:
            assert SpendStore.authorise(conn, Authorisation(
                org_id=org_id, seen_version=version, subscription_id=f"sub_{org_id}", period_start=PERIOD_START,
                period_end=PERIOD_END, observed_quantity=0, limit_quantity=None, reserved_at=PERIOD_START,
                usage_topic="usage.v1", reservations=tuple(reservations)))
        version += 1


def _materialise(engine: sa.Engine, org_id: str, request_ids: list[int]) -> None:
    """The worker's rows for those requests' usage events."""
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO usage_events (customer_id, transaction_id, subscription_id, event_type, meter_id, quantity,"
            " occurred_at, received_at)"
            " SELECT :o, 'r' || i, :s, 'inference', 'inference', i % 7 + 1, :at, :at"
            "   FROM unnest(CAST(:ids AS int[])) i"),
            {"o": org_id, "s": f"sub_{org_id}", "at": PERIOD_START, "ids": request_ids})


def _read(engine: sa.Engine, org_id: str, *, settle: bool = True) -> SpendUsage:
    with engine.begin() as conn:
        return SpendStore.usage(conn, org_id, f"sub_{org_id}", "inference", PERIOD_START, PERIOD_END, settle=settle)


def _summed(engine: sa.Engine, org_id: str) -> tuple[int, int]:
    """(reserved, reserved and materialised), summed over every reservation: what the read must give."""
    with engine.connect() as conn:
        row = conn.execute(sa.text(
            "SELECT coalesce(sum(r.quantity), 0),"
            "       coalesce(sum(r.quantity) FILTER (WHERE e.transaction_id IS NOT NULL), 0)"
            "  FROM spend_reservations r"
            "  LEFT JOIN usage_events e ON e.customer_id = r.org_id AND e.transaction_id = r.transaction_id"
            " WHERE r.org_id = :o AND r.period_start = :p"), {"o": org_id, "p": PERIOD_START}).one()
    return int(row[0]), int(row[1])


def _settled(engine: sa.Engine, org_id: str) -> tuple[int, int] | None:
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT through_seq, quantity FROM spend_materialised"
                                   " WHERE org_id = :o AND period_start = :p"),
                           {"o": org_id, "p": PERIOD_START}).one_or_none()
    return None if row is None else (int(row[0]), int(row[1]))


@pytest.fixture
def org_id(engine: sa.Engine) -> str:
    org = f"org-{uuid.uuid4().hex[:10]}"
    with engine.begin() as conn:
        SpendStore.ensure_account(conn, org)
    _authorise(engine, org, 0, AUTHORISED, version=0)
    return org


def test_each_authorisation_is_counted_once_whether_its_event_arrived_or_not(engine: sa.Engine, org_id: str) -> None:
    gap = 1_200
    _materialise(engine, org_id, [i for i in range(1_500) if i != gap])  # one event late, some not yet sent

    first = _read(engine, org_id)
    assert (first.reserved, first.reserved_materialised) == _summed(engine, org_id)
    assert first.reserved_materialised < first.reserved
    again = _read(engine, org_id)  # from the count the first read left
    assert (again.reserved, again.reserved_materialised) == _summed(engine, org_id)

    _materialise(engine, org_id, [gap, *range(1_500, AUTHORISED)])
    _authorise(engine, org_id, AUTHORISED, 10, version=AUTHORISED // BATCH)  # new ones, not materialised
    late = _read(engine, org_id)
    assert (late.reserved, late.reserved_materialised) == _summed(engine, org_id)
    assert late.reserved - late.reserved_materialised == sum(i % 7 + 1 for i in range(AUTHORISED, AUTHORISED + 10))


def test_the_count_stops_at_the_first_authorisation_whose_event_has_not_arrived(
        engine: sa.Engine, org_id: str) -> None:
    _materialise(engine, org_id, [i for i in range(1_500) if i != 700])

    _read(engine, org_id)
    with engine.connect() as conn:
        seq_of_700 = conn.execute(sa.text("SELECT seq FROM spend_reservations"
                                          " WHERE org_id = :o AND request_id = 'r700'"), {"o": org_id}).scalar_one()
    settled = _settled(engine, org_id)
    assert settled is not None and settled[0] == seq_of_700 - 1
    assert settled[1] == sum(i % 7 + 1 for i in range(700))


def test_a_read_that_does_not_settle_moves_nothing(engine: sa.Engine, org_id: str) -> None:
    _materialise(engine, org_id, list(range(AUTHORISED)))

    usage = _read(engine, org_id, settle=False)

    assert (usage.reserved, usage.reserved_materialised) == _summed(engine, org_id)
    assert _settled(engine, org_id) is None


def test_a_read_that_lost_the_race_to_another_moves_nothing(engine: sa.Engine, org_id: str) -> None:
    _materialise(engine, org_id, list(range(1_000)))
    _read(engine, org_id)
    settled = _settled(engine, org_id)
    assert settled is not None

    with engine.begin() as conn:  # a read that started from an older count, settling after this one
        conn.execute(_SETTLE_SQL, {"org_id": org_id, "period_start": PERIOD_START, "through_seq": 1,
                                   "quantity": 1, "seen_seq": 0})

    assert _settled(engine, org_id) == settled
    usage = _read(engine, org_id)
    assert (usage.reserved, usage.reserved_materialised) == _summed(engine, org_id)


def test_reading_again_reads_only_the_authorisations_after_the_count(engine: sa.Engine, org_id: str) -> None:
    _materialise(engine, org_id, list(range(AUTHORISED - 5)))  # the last five still on their way
    _read(engine, org_id)
    settled = _settled(engine, org_id)
    assert settled is not None

    with engine.connect() as conn:  # the plan the read gets: its parameters' values known
        plan = conn.execute(sa.text("EXPLAIN (ANALYZE, FORMAT JSON) " + _RESERVED_SQL.text), {
            "org_id": org_id, "period_start": PERIOD_START, "through_seq": settled[0],
            "settled_quantity": settled[1]}).scalar_one()[0]["Plan"]

    assert rows_read(plan, "spend_reservations") <= 5
    assert rows_read(plan, "usage_events") <= 5
