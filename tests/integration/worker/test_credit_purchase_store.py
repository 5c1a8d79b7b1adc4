"""Prepaid credit purchases in PostgreSQL (issue 15, item 3): at most one auto-recharge pending per subscription
and meter, decided by the partial unique index when two transactions race (the second waits for the first and
then stores nothing), while manual purchases and a recharge once the previous one settled are stored."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from services.billing_worker.adapters import credit_purchases as store
from shared.domain.credit_purchase import CreditPurchase, PurchaseOrigin
from shared.domain.money import Money

pytestmark = pytest.mark.integration
AT = datetime(2026, 3, 1, tzinfo=UTC)


def purchase(purchase_id: str, sub: str, origin: PurchaseOrigin = PurchaseOrigin.AUTO_RECHARGE) -> CreditPurchase:
    return CreditPurchase(purchase_id=purchase_id, subscription_id=sub, customer_id=f"cus_{sub}", meter_id="inference",
                          amount=Money(450, "USD"), price=Money(450, "USD"), invoice_id=f"in_{purchase_id}",
                          created_at=AT, origin=origin)


def test_two_racing_recharges_of_one_meter_store_one_and_the_loser_writes_nothing(engine: sa.Engine) -> None:
    results: dict[str, bool] = {}
    first_in, second_started = threading.Event(), threading.Event()

    def first() -> None:
        with engine.begin() as conn:
            results["first"] = store.add(conn, purchase("cp_race_1", "sub_race"))
            first_in.set()
            second_started.wait(5)
            conn.execute(sa.text("SELECT pg_sleep(0.3)"))  # the second is now waiting on the index entry

    def second() -> None:
        first_in.wait(5)
        with engine.begin() as conn:
            second_started.set()
            results["second"] = store.add(conn, purchase("cp_race_2", "sub_race"))

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)

    assert results == {"first": True, "second": False}
    with engine.connect() as conn:
        assert store.purchase(conn, "cp_race_2") is None
        assert store.purchase_of_invoice(conn, "in_cp_race_1") is not None


def test_manual_purchases_and_a_recharge_after_the_last_one_settled_are_stored(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        assert store.add(conn, purchase("cp_m1", "sub_m", PurchaseOrigin.MANUAL))
        assert store.add(conn, purchase("cp_m2", "sub_m", PurchaseOrigin.MANUAL))
        recharge = purchase("cp_r1", "sub_m")
        assert store.add(conn, recharge)
        assert not store.add(conn, purchase("cp_r2", "sub_m"))
        assert not store.add(conn, purchase("cp_m1", "sub_m", PurchaseOrigin.MANUAL))  # a replay of its id
        recharge.cancel(AT)
        store.save(conn, recharge)
        assert store.add(conn, purchase("cp_r3", "sub_m"))
