"""A coupon's `max_redemptions` holds under concurrent subscriptions (issue 14: "50 concurrent redemptions of
a coupon with 10 left -> exactly 10").

Each create runs the worker's real path (the bootstrap's MessageBus and handler table over the SQL unit of
work) in a transaction of its own on a connection of its own, as two workers of different partitions do.
Fifty threads start together; the coupon has 10 of its 15 redemptions left.
"""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from services.billing_worker.adapters.billing_repository import coupon_times_redeemed
from services.billing_worker.bootstrap import billing_handlers, message_bus, sql_unit_of_work
from shared.adapters.catalog_file import load_default_catalog
from shared.adapters.postgres.engine import make_engine
from shared.adapters.postgres.errors import driver_error, is_transient, translate
from shared.adapters.postgres.schema.billing import coupon_attachments, coupon_redemptions, subscriptions
from shared.adapters.postgres.schema.core import command_outcomes
from shared.contracts.envelope import Envelope, new_envelope
from shared.contracts.messages import TYPE_OF, CreateSubscription
from shared.domain.catalog import Catalog
from shared.domain.coupons import CouponId
from shared.errors import RetryableError, refusal_code

pytestmark = pytest.mark.integration

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
COUPON = CouponId("RACE_FIVE_OFF")
MAX_REDEMPTIONS = 15
ALREADY_REDEEMED = 5
CONCURRENT = 50


def catalog_with_limited_coupon() -> Catalog:
    """The default catalog plus FIVE_OFF's twin (USD 5 off every invoice) limited to 15 subscriptions."""
    catalog = load_default_catalog()
    coupon = dataclasses.replace(catalog.coupon("FIVE_OFF"), id=COUPON, max_redemptions=MAX_REDEMPTIONS)
    return dataclasses.replace(catalog, coupons={**catalog.coupons, COUPON: coupon})


CATALOG = catalog_with_limited_coupon()


@pytest.fixture(scope="module")
def wide_engine(settings) -> Iterator[sa.Engine]:  # type: ignore[no-untyped-def]
    """One connection per thread: a pool as wide as the number of concurrent creates."""
    eng = make_engine(settings, pool_size=CONCURRENT)
    yield eng
    eng.dispose()


def create_command(suffix: str) -> tuple[Envelope, CreateSubscription]:
    payload = CreateSubscription(subscription_id=f"sub_{suffix}", customer_id=f"cus_{suffix}",
                                 plan_id="basic_monthly", currency="USD", trial_days=0,
                                 payment_method_id="pm_card_visa", coupon_id=COUPON)
    return new_envelope(TYPE_OF[CreateSubscription], payload.model_dump(mode="json"), producer="test",
                        occurred_at=JAN_1), payload


def test_fifty_concurrent_creates_with_ten_redemptions_left_redeem_the_coupon_exactly_ten_times(
        wide_engine: sa.Engine) -> None:
    bus = message_bus(billing_handlers())
    unit_of_work = sql_unit_of_work(CATALOG)

    def apply(command: tuple[Envelope, CreateSubscription]) -> None:
        with wide_engine.begin() as conn:
            bus.handle(unit_of_work(conn), [command], JAN_1)

    for _ in range(ALREADY_REDEEMED):  # the coupon's first five subscriptions, one after the other
        apply(create_command(uuid.uuid4().hex[:12]))

    commands = [create_command(uuid.uuid4().hex[:12]) for _ in range(CONCURRENT)]
    start = threading.Barrier(CONCURRENT)
    errors: list[BaseException] = []

    def run(command: tuple[Envelope, CreateSubscription]) -> None:
        try:
            start.wait()
            apply(command)
        except BaseException as error:  # reported below: a thread's exception would otherwise be lost
            errors.append(error)

    threads = [threading.Thread(target=run, args=(command,)) for command in commands]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []

    ids = [payload.subscription_id for _, payload in commands]
    exhausted = ""
    try:
        CATALOG.coupon(COUPON).check_redeemable(plan_id="basic_monthly", times_redeemed=MAX_REDEMPTIONS, at=JAN_1)
    except Exception as refusal:
        exhausted = refusal_code(refusal)  # the code the domain gives an exhausted coupon
    assert exhausted
    with wide_engine.connect() as conn:
        outcomes = conn.execute(sa.select(command_outcomes.c.status, command_outcomes.c.error_code).where(
            command_outcomes.c.command_id.in_([envelope.event_id for envelope, _ in commands]))).all()
        with_coupon = conn.execute(sa.select(subscriptions.c.subscription_id).where(
            subscriptions.c.subscription_id.in_(ids), subscriptions.c.coupon_id == COUPON)).scalars().all()
        attached = conn.execute(sa.select(sa.func.count()).select_from(coupon_attachments).where(
            coupon_attachments.c.coupon_id == COUPON)).scalar_one()
        redeemed_now = conn.execute(sa.select(coupon_redemptions.c.subscription_id).where(
            coupon_redemptions.c.coupon_id == COUPON, coupon_redemptions.c.subscription_id.in_(ids))).scalars().all()
        redeemed_in_all = conn.execute(sa.select(sa.func.count()).select_from(coupon_redemptions).where(
            coupon_redemptions.c.coupon_id == COUPON)).scalar_one()

    assert Counter(o.status for o in outcomes) == {"applied": 10, "rejected": CONCURRENT - 10}
    assert {o.error_code for o in outcomes if o.status == "rejected"} == {exhausted}
    assert len(with_coupon) == 10
    assert attached == MAX_REDEMPTIONS
    # each subscription's first invoice is discounted once: one redemption row per applied create
    assert sorted(redeemed_now) == sorted(with_coupon)
    assert redeemed_in_all == MAX_REDEMPTIONS


def advisory_locks_of(conn: sa.Connection) -> int:
    """Two-key advisory locks the connection's backend holds (the coupon lock's kind)."""
    return int(conn.execute(sa.text(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 AND granted "
        "AND pid = pg_backend_pid()")).scalar_one())


def test_a_limited_coupon_is_counted_under_a_lock_held_to_the_end_of_the_transaction_an_unlimited_one_is_not(
        wide_engine: sa.Engine) -> None:
    with wide_engine.connect() as conn:
        with conn.begin():
            uow = sql_unit_of_work(CATALOG)(conn)
            uow.coupon_times_redeemed("FIVE_OFF")  # no max_redemptions: its count decides nothing
            assert advisory_locks_of(conn) == 0
            uow.coupon_times_redeemed(COUPON)
            assert advisory_locks_of(conn) == 1
        assert advisory_locks_of(conn) == 0  # released by the commit, not before


def test_two_batches_locking_two_coupons_in_opposite_orders_deadlock_and_the_one_aborted_is_retried_as_transient(
        wide_engine: sa.Engine) -> None:
    first_locked, second_locked = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def first_batch() -> None:  # coupon A, then coupon B
        try:
            with wide_engine.begin() as conn:
                coupon_times_redeemed(conn, "DEADLOCK_A")
                first_locked.set()
                second_locked.wait()
                coupon_times_redeemed(conn, "DEADLOCK_B")
        except BaseException as error:
            errors.append(error)
        finally:
            first_locked.set()

    thread = threading.Thread(target=first_batch)
    thread.start()
    try:  # the second batch: coupon B, then coupon A
        first_locked.wait()
        with wide_engine.begin() as conn:
            coupon_times_redeemed(conn, "DEADLOCK_B")
            second_locked.set()
            coupon_times_redeemed(conn, "DEADLOCK_A")
    except BaseException as error:
        errors.append(error)
    finally:
        second_locked.set()
        thread.join()

    assert len(errors) == 1  # PostgreSQL aborted one of the two; the other went through
    deadlock = driver_error(errors[0])
    assert deadlock is not None and deadlock.sqlstate == "40P01"
    assert is_transient(errors[0])
    assert isinstance(translate(errors[0]), RetryableError)  # the consumer backs off and retries the batch
