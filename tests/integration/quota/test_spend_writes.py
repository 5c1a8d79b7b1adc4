"""The spend authorisation write against real PostgreSQL, through both of its executors: the served edge's
async pool (``SpendWrites``, from the event loop) and the sync engine (``SpendStore.authorise``, in a worker
thread). One statement text; these check that both give the same outcomes and leave the same rows."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from shared.adapters.postgres.pool import make_pool
from shared.adapters.postgres.spend_store import (
    Authorisation,
    DuplicateAuthorisation,
    Reservation,
    SpendStore,
    SpendStoreError,
    SpendWrites,
)

pytestmark = pytest.mark.integration

PERIOD_START = datetime(2026, 3, 1, tzinfo=UTC)
Write = Callable[[Authorisation], Awaitable[bool]]


@pytest.fixture(params=["async_pool", "sync_engine"])
async def write(request, quota_settings, engine) -> AsyncIterator[Write]:  # type: ignore[no-untyped-def]
    if request.param == "sync_engine":
        async def through_engine(authorisation: Authorisation) -> bool:
            with engine.begin() as conn:
                return SpendStore.authorise(conn, authorisation)

        yield through_engine
        return
    pool = make_pool(quota_settings, min_size=1, max_size=2)
    await pool.open(wait=True)
    try:
        yield SpendWrites(pool).authorise
    finally:
        await pool.close()


def _account(engine: sa.Engine) -> str:
    org_id = f"org-{uuid.uuid4().hex[:10]}"
    with engine.begin() as conn:
        SpendStore.ensure_account(conn, org_id)
    return org_id


def _authorisation(org_id: str, version: int, *requests: tuple[str, int], limit: int | None = 10_000,
                   spent_before: int = 0) -> Authorisation:
    reservations, spent = [], spent_before
    for request_id, quantity in requests:
        spent += quantity
        reservations.append(Reservation(
            request_id=request_id, quantity=quantity, spent_quantity=spent, event_id=uuid.uuid4(),
            envelope_json=f'{{"request": "{request_id}", "quote\\"s": "and \\\\ backslash {{braces}}"}}'))
    return Authorisation(
        org_id=org_id, seen_version=version, subscription_id=f"sub_{org_id}", period_start=PERIOD_START,
        period_end=PERIOD_START + timedelta(days=31), observed_quantity=0, limit_quantity=limit,
        reserved_at=PERIOD_START + timedelta(hours=1), usage_topic="usage.v1", reservations=tuple(reservations))


def _stored(engine: sa.Engine, org_id: str) -> tuple[int, int, list[tuple[str, int]], list[str]]:
    with engine.connect() as conn:
        version = conn.execute(sa.text("SELECT version FROM spend_accounts WHERE org_id = :o"),
                               {"o": org_id}).scalar_one()
        reserved = conn.execute(sa.text("SELECT coalesce(sum(reserved_quantity), 0) FROM spend_periods"
                                        " WHERE org_id = :o"), {"o": org_id}).scalar_one()
        rows = conn.execute(sa.text("SELECT request_id, spent_quantity FROM spend_reservations WHERE org_id = :o"
                                    " ORDER BY request_id"), {"o": org_id}).all()
        envelopes = conn.execute(sa.text("SELECT envelope::text FROM outbox_messages WHERE message_key = :k"
                                         " ORDER BY id, part"),
                                 {"k": f"sub_{org_id}"}).scalars().all()
    return int(version), int(reserved), [(r, int(s)) for r, s in rows], list(envelopes)


async def test_a_batch_at_the_seen_version_commits_its_reservations_and_usage_events(
        write: Write, engine: sa.Engine) -> None:
    org_id = _account(engine)

    assert await write(_authorisation(org_id, 0, ("a", 1_000), ("b", 2_000)))

    version, reserved, rows, envelopes = _stored(engine, org_id)
    assert (version, reserved, rows) == (1, 3_000, [("a", 1_000), ("b", 3_000)])
    assert [envelope.count("braces") for envelope in envelopes] == [1, 1]
    assert '"request": "a"' in envelopes[0] and '"request": "b"' in envelopes[1]  # in the batch's order


async def test_a_batch_decided_on_a_moved_account_writes_nothing(write: Write, engine: sa.Engine) -> None:
    org_id = _account(engine)
    assert await write(_authorisation(org_id, 0, ("first", 1_000)))

    assert not await write(_authorisation(org_id, 0, ("stale", 1_000)))

    assert _stored(engine, org_id)[:3] == (1, 1_000, [("first", 1_000)])


async def test_a_request_id_stored_before_is_a_duplicate_and_writes_nothing(write: Write, engine: sa.Engine) -> None:
    org_id = _account(engine)
    assert await write(_authorisation(org_id, 0, ("retried", 1_000)))

    with pytest.raises(DuplicateAuthorisation):
        await write(_authorisation(org_id, 1, ("new", 500), ("retried", 1_000), spent_before=1_000))

    assert _stored(engine, org_id)[:3] == (1, 1_000, [("retried", 1_000)])


async def test_the_limit_backstop_refuses_a_batch_past_the_limit(write: Write, engine: sa.Engine) -> None:
    org_id = _account(engine)
    with pytest.raises(SpendStoreError) as refused:
        await write(_authorisation(org_id, 0, ("too-much", 6_000), ("more", 6_000), limit=10_000))

    assert not isinstance(refused.value, DuplicateAuthorisation)
    assert _stored(engine, org_id)[:3] == (0, 0, [])
