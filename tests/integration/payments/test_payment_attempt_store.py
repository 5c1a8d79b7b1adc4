"""The worker's payment-attempt adapter against real PostgreSQL: every statement stores a move of the domain's
state machine, with a compare-and-set on the statuses that move may start from."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from services.billing_worker.adapters import payment_attempts as store
from shared.adapters.postgres.schema.billing import invoices, payment_attempts
from shared.contracts.messages import CreateSubscription
from shared.domain.ids import attempt_id_for
from shared.domain.money import Money
from shared.domain.payment_attempt import PaymentAttempt
from tests.integration.worker.billing_support import Billing

pytestmark = pytest.mark.integration

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def billing(engine) -> Billing:  # type: ignore[no-untyped-def]
    return Billing(engine)


def new_invoice(billing: Billing, payment_method: str | None = "pm_card_visa") -> str:
    """A finalised invoice with its first attempt written PENDING (by the real subscription handler)."""
    suffix = uuid.uuid4().hex[:10]
    billing.send(CreateSubscription(subscription_id=f"sub_{suffix}", customer_id=f"cus_{suffix}", plan_id="pro",
                                    currency="USD", payment_method_id=payment_method), JAN_1)
    return str(billing.invoices(f"sub_{suffix}")[0].invoice_id)


def row(engine: sa.Engine, attempt_id: str) -> sa.Row:  # type: ignore[type-arg]
    with engine.connect() as conn:
        return conn.execute(sa.select(payment_attempts).where(payment_attempts.c.attempt_id == attempt_id)).one()


def claim(engine: sa.Engine, invoice_id: str, claimant: str, lease_s: float = 60) -> list[store.ClaimedAttempt]:
    with engine.begin() as conn:
        return [a for a in store.claim_due(conn, limit=10_000, claimant=claimant, lease_s=lease_s)
                if a.invoice_id == invoice_id]


def second_attempt(invoice_id: str, first: sa.Row) -> PaymentAttempt:  # type: ignore[type-arg]
    return PaymentAttempt.request(
        attempt_id=attempt_id_for(invoice_id, 2), invoice_id=invoice_id, attempt_no=2,
        subscription_id=first.subscription_id, customer_id=first.customer_id,
        amount=Money(first.amount_minor, first.currency), payment_method_id="pm_card_visa", requested_at=JAN_1,
        reason="retry")


def test_a_due_attempt_is_claimed_once_with_its_dispatch_counted(billing: Billing, engine) -> None:  # type: ignore[no-untyped-def]
    invoice_id = new_invoice(billing)
    [claimed] = claim(engine, invoice_id, "executor-a")
    assert claim(engine, invoice_id, "executor-b") == []  # the lease holds
    stored = row(engine, claimed.attempt_id)
    assert (stored.status, stored.claimed_by, stored.dispatch_count) == ("in_flight", "executor-a", 1)
    assert claimed.as_attempt().status.value == "in_flight" and claimed.idempotency_key == claimed.attempt_id


def test_only_the_claimant_records_the_outcome_of_its_claim(billing: Billing, engine) -> None:  # type: ignore[no-untyped-def]
    invoice_id = new_invoice(billing)
    [claimed] = claim(engine, invoice_id, "executor-a")
    outcome = claimed.as_attempt()
    outcome.succeed(at=JAN_1, provider_ref="pi_1")
    with engine.begin() as conn:
        assert not store.record_claimed(conn, outcome, claimant="executor-b")
    assert row(engine, claimed.attempt_id).status == "in_flight"
    with engine.begin() as conn:
        assert store.record_claimed(conn, outcome, claimant="executor-a")
        assert not store.record_claimed(conn, outcome, claimant="executor-a")  # stored once
    stored = row(engine, claimed.attempt_id)
    assert (stored.status, stored.provider_ref, stored.completed_at, stored.lease_until) == (
        "succeeded", "pi_1", JAN_1, None)


def test_a_release_gives_the_dispatch_back_and_waits_its_lease(billing: Billing, engine) -> None:  # type: ignore[no-untyped-def]
    invoice_id = new_invoice(billing)
    [claimed] = claim(engine, invoice_id, "executor-a")
    released = claimed.as_attempt()
    released.release("bad credentials")
    with engine.begin() as conn:
        assert store.record_claimed(conn, released, claimant="executor-a", lease_s=60)
    stored = row(engine, claimed.attempt_id)
    assert (stored.status, stored.dispatch_count, stored.error_message) == ("pending", 0, "bad credentials")
    assert claim(engine, invoice_id, "executor-a") == []  # not before its lease ran out


def test_a_lost_answer_keeps_the_provider_object_and_holds_the_invoice(billing: Billing, engine) -> None:  # type: ignore[no-untyped-def]
    invoice_id = new_invoice(billing)
    [claimed] = claim(engine, invoice_id, "executor-a")
    lost = claimed.as_attempt()
    lost.lose_answer("timeout", "pi_lost")
    first = row(engine, claimed.attempt_id)
    with engine.begin() as conn:
        assert store.record_claimed(conn, lost, claimant="executor-a", lease_s=0)
        store.insert_requested(conn, [second_attempt(invoice_id, first)])
    assert (row(engine, claimed.attempt_id).status, row(engine, claimed.attempt_id).provider_ref) == (
        "unknown", "pi_lost")
    # the unknown attempt is taken again (to be looked up); the second one waits while the first holds the invoice
    [again] = claim(engine, invoice_id, "executor-b")
    assert (again.attempt_id, again.dispatch_count, again.as_attempt().needs_lookup) == (
        claimed.attempt_id, 2, True)


def test_a_reported_success_replaces_a_decline_but_never_makes_a_second_success(billing: Billing, engine) -> None:  # type: ignore[no-untyped-def]
    invoice_id = new_invoice(billing)
    first = row(engine, attempt_id_for(invoice_id, 1))
    with engine.begin() as conn:
        assert store.accept_reported_outcome(conn, first.attempt_id, succeeded=False, provider_ref="pi_1",
                                             decline_code="insufficient_funds", hard_decline=False, at=JAN_1)
        assert not store.accept_reported_outcome(conn, first.attempt_id, succeeded=False, provider_ref="pi_1",
                                                 decline_code="stolen_card", hard_decline=True, at=JAN_1)
        store.insert_requested(conn, [second_attempt(invoice_id, first)])
        assert store.accept_reported_outcome(conn, first.attempt_id, succeeded=True, provider_ref=None, at=JAN_1)
        assert not store.accept_reported_outcome(conn, attempt_id_for(invoice_id, 2), succeeded=True,
                                                 provider_ref="pi_2", at=JAN_1)
    settled = row(engine, first.attempt_id)
    assert (settled.status, settled.provider_ref, settled.decline_code, settled.hard_decline) == (
        "succeeded", "pi_1", None, False)
    assert row(engine, attempt_id_for(invoice_id, 2)).status == "pending"


def test_pending_attempts_are_withdrawn_when_their_invoice_no_longer_needs_them(billing: Billing, engine) -> None:  # type: ignore[no-untyped-def]
    given_up, paid = new_invoice(billing), new_invoice(billing)
    with engine.begin() as conn:
        assert store.withdraw_pending_of_invoice(conn, given_up, JAN_1) == 1
        assert store.withdraw_pending_of_invoice(conn, given_up, JAN_1) == 0
        conn.execute(sa.update(invoices).where(invoices.c.invoice_id == paid).values(status="paid", paid_at=JAN_1))
        claimed = store.claim_due(conn, limit=10_000, claimant="executor-a", lease_s=60, withdraw=True)
    assert paid not in {a.invoice_id for a in claimed}
    assert row(engine, attempt_id_for(given_up, 1)).status == "cancelled"
    assert row(engine, attempt_id_for(paid, 1)).status == "cancelled"


def test_a_claim_without_the_sweep_passes_an_attempt_of_a_paid_invoice_by(billing: Billing, engine) -> None:  # type: ignore[no-untyped-def]
    paid = new_invoice(billing)
    with engine.begin() as conn:
        conn.execute(sa.update(invoices).where(invoices.c.invoice_id == paid).values(status="paid", paid_at=JAN_1))
    assert claim(engine, paid, "executor-a") == []
    assert row(engine, attempt_id_for(paid, 1)).status == "pending"


def test_the_attempts_of_several_invoices_are_withdrawn_in_one_statement(billing: Billing, engine) -> None:  # type: ignore[no-untyped-def]
    first, second, untouched = new_invoice(billing), new_invoice(billing), new_invoice(billing)
    with engine.begin() as conn:
        assert store.withdraw_pending_of_invoices(conn, [first, second], JAN_1) == 2
        assert store.withdraw_pending_of_invoices(conn, [], JAN_1) == 0
    assert [row(engine, attempt_id_for(i, 1)).status for i in (first, second, untouched)] == [
        "cancelled", "cancelled", "pending"]


def test_only_attempts_not_sent_yet_lose_a_payment_method(billing: Billing, engine) -> None:  # type: ignore[no-untyped-def]
    sent = new_invoice(billing)
    claim(engine, sent, "executor-a")  # (a claim round takes every due attempt: the second invoice comes after)
    waiting = new_invoice(billing)
    with engine.begin() as conn:
        for invoice_id in (sent, waiting):
            sub = conn.execute(sa.select(invoices.c.subscription_id)
                               .where(invoices.c.invoice_id == invoice_id)).scalar_one()
            store.detach_pending_payment_method(conn, sub)
    assert row(engine, attempt_id_for(sent, 1)).payment_method_id == "pm_card_visa"
    assert row(engine, attempt_id_for(waiting, 1)).payment_method_id is None


def test_an_attempt_written_twice_is_written_once(billing: Billing, engine) -> None:  # type: ignore[no-untyped-def]
    invoice_id = new_invoice(billing)
    first = row(engine, attempt_id_for(invoice_id, 1))
    with engine.begin() as conn:
        assert store.insert_requested(conn, [second_attempt(invoice_id, first)]) == 1
        assert store.insert_requested(conn, [second_attempt(invoice_id, first)]) == 0
        assert store.attempt_no_of(conn, attempt_id_for(invoice_id, 2)) == 2
        assert store.attempt_no_of(conn, None) is None
    stored = row(engine, attempt_id_for(invoice_id, 2))
    assert (stored.status, stored.idempotency_key, stored.reason) == ("pending", stored.attempt_id, "retry")


def _plan_nodes(node: dict) -> list[dict]:  # type: ignore[type-arg]
    return [node, *(n for child in node.get("Plans", ()) for n in _plan_nodes(child))]


def test_a_claim_moves_the_claimed_rows_by_primary_key_whatever_the_queue(billing: Billing, engine) -> None:  # type: ignore[no-untyped-def]
    # The UPDATE re-checked "still workable" itself, so with the queue's statistics taken while it was nearly
    # empty (as before a month's close) its planner walked every queued attempt through the queue index and
    # matched the claimed ids against them: ~15 ms a round with 10,000 queued. The check is now in the locking
    # SELECT (re-evaluated on a changed row's newest version) and the UPDATE joins the claimed ids by key.
    invoice_ids = [new_invoice(billing) for _ in range(3)]
    ids = [attempt_id_for(i, 1) for i in invoice_ids]
    with engine.connect() as conn, conn.begin() as transaction:
        # statistics of a settled queue, then 2,000 attempts queued behind them (rolled back below)
        conn.execute(sa.text("UPDATE payment_attempts SET status = 'cancelled' WHERE attempt_id = ANY(:ids)"),
                     {"ids": ids})
        conn.execute(sa.text("ANALYZE payment_attempts"))
        conn.execute(sa.text(
            "INSERT INTO payment_attempts (attempt_id, invoice_id, attempt_no, subscription_id, customer_id, "
            "amount_minor, currency, payment_method_id, idempotency_key, status, requested_at) "
            "SELECT a.attempt_id || '_' || n, a.invoice_id, n, a.subscription_id, a.customer_id, a.amount_minor, "
            "a.currency, a.payment_method_id, a.idempotency_key || '_' || n, 'pending', a.requested_at "
            "FROM payment_attempts a, generate_series(2, 2001) AS n WHERE a.attempt_id = :first"), {"first": ids[0]})
        [plan] = conn.execute(sa.text("EXPLAIN (FORMAT JSON) " + str(store._CLAIM)),
                              {"ids": [f"{ids[0]}_{n}" for n in range(2, 40)], "limit": 10, "me": "explain",
                               "lease": 60}).scalar_one()
        transaction.rollback()
    # how the UPDATE reaches the rows it moves (`p`), bitmap index scans under it included
    moved = [m for n in _plan_nodes(plan["Plan"]) if n.get("Alias") == "p" and n["Node Type"] != "ModifyTable"
             for m in _plan_nodes(n)]
    assert moved and all(n.get("Index Name") != "ix_payment_attempts_queue" for n in moved), moved
    assert [a.attempt_id for a in claim(engine, invoice_ids[0], "executor-a")] == [ids[0]]


QUEUE_INDEXES = ("ix_payment_attempts_queue", "ix_payment_attempts_workable")


def queue_index_scans(engine: sa.Engine) -> int:
    """How many scans PostgreSQL counted on the queue's partial indexes, this backend's counts flushed first."""
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT pg_stat_force_next_flush()"))
        conn.commit()  # the flush happens at the end of a transaction
        conn.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
        return int(conn.execute(sa.text(
            "SELECT coalesce(sum(idx_scan), 0) FROM pg_stat_user_indexes "
            "WHERE schemaname = current_schema() AND indexrelname = ANY(:names)"), {"names": list(QUEUE_INDEXES)}
        ).scalar_one())


def add_attempts(engine: sa.Engine, invoice_id: str, numbers: range, status: str) -> None:
    """Attempts `numbers` of the invoice written straight in `status` (their ids name the status)."""
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO payment_attempts (attempt_id, invoice_id, attempt_no, subscription_id, customer_id, "
            "amount_minor, currency, idempotency_key, status, requested_at) "
            "SELECT :i || '_' || :s || '_' || n, :i, n, 'sub_x', 'cus_x', 100, 'USD', :i || '_' || :s || '_' || n, "
            ":s, now() FROM generate_series(CAST(:first AS int), CAST(:last AS int)) n"),
            {"i": invoice_id, "s": status, "first": numbers.start, "last": numbers.stop - 1})


def test_statements_by_key_probe_their_key_even_with_statistics_taken_before_the_queue_filled(
        billing: Billing, engine) -> None:  # type: ignore[no-untyped-def]
    """A month-end run queues attempts faster than autoanalyze sees them: the planner then costs the queue's
    partial indexes at one row. Statements that find attempts by id or invoice must still probe that key, not walk
    the queue (they did: 5.6 ms for one attempt's update with 50,000 queued)."""
    queued, other = new_invoice(billing), new_invoice(billing)
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE payment_attempts SET (autovacuum_enabled = false)"))
    add_attempts(engine, queued, range(2, 3002), "declined")
    with engine.begin() as conn:
        conn.execute(sa.text("ANALYZE payment_attempts"))  # statistics of a table with nothing queued
    add_attempts(engine, queued, range(3002, 6002), "pending")
    try:
        before = queue_index_scans(engine)
        with engine.begin() as conn:
            [claimed] = store.claim_due(conn, limit=1, claimant="executor-a", lease_s=60)  # reads the head: 1 scan
            attempt = claimed.as_attempt()
            attempt.succeed(at=JAN_1, provider_ref="pi_1")
            assert store.record_settled(conn, [attempt], claimant="executor-a") == {attempt.attempt_id}
            assert store.accept_reported_outcome(conn, f"{queued}_pending_3002", succeeded=False, provider_ref=None,
                                                 decline_code="card_declined", at=JAN_1)
            assert store.withdraw_pending_of_invoices(conn, [other], JAN_1) == 1
        assert queue_index_scans(engine) - before == 1
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE payment_attempts RESET (autovacuum_enabled)"))
            conn.execute(sa.text("DELETE FROM payment_attempts WHERE invoice_id = :i AND attempt_no > 1"),
                         {"i": queued})
