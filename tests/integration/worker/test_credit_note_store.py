"""Credit notes in PostgreSQL: gapless CN numbers per issuer (a rolled-back note frees its number; a second
transaction waits on the counter row and takes the next one), and the refund executor (a pending refund sent
after the commit; an unknown answer sent again with the same key; a refusal recorded on the note)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from services.billing_worker.adapters import billing_repository as repo
from services.billing_worker.adapters import credit_notes as store
from services.billing_worker.entrypoints.refunds import RefundExecutor
from services.billing_worker.service_layer.model import InvoiceToStore
from shared.adapters.payments.port import RefundOutcome, RefundRequest, RefundStatus
from shared.adapters.postgres.schema.billing import credit_notes, refunds
from shared.domain.calendar import Period
from shared.domain.credit_note import CreditNote, CreditNoteReason, issue_credit_note
from shared.domain.ids import CustomerId, InvoiceId, SubscriptionId
from shared.domain.invoice import Invoice, InvoiceKey, InvoiceLine, InvoiceReason, LineKind
from shared.domain.money import Money

pytestmark = pytest.mark.integration
AT = datetime(2026, 3, 1, tzinfo=UTC)


def paid_invoice(engine: sa.Engine, name: str) -> Invoice:
    """A paid 10.00 invoice (one fee line), stored."""
    invoice = Invoice.draft(invoice_id=InvoiceId(f"in_{name}"),
                            key=InvoiceKey(SubscriptionId(f"sub_{name}"), InvoiceReason.SUBSCRIPTION_START,
                                           Period(AT, AT + timedelta(days=31))),
                            customer_id=CustomerId(f"cus_{name}"), currency="USD", at=AT,
                            lines=[InvoiceLine(kind=LineKind.FEE, description="fee", amount=Money(1000, "USD"))])
    invoice.finalize(number="T-000001", at=AT)
    invoice.mark_paid(at=AT, payment_reference="pi_x")
    with engine.begin() as conn:
        repo.insert_invoices(conn, [InvoiceToStore(invoice, "pro", "pm_card_visa", issuer=f"iss_{name}")])
        conn.execute(sa.text("UPDATE invoices SET provider_ref = 'pi_x' WHERE invoice_id = :i"), {"i": invoice.id})
    return invoice


def note(invoice: Invoice, note_id: str, *, refund: int | None = None) -> CreditNote:
    return issue_credit_note(credit_note_id=note_id, invoice=invoice, earlier=(), at=AT, amount_minor=100,
                             refund_minor=refund, reason=CreditNoteReason.DUPLICATE)


def test_credit_note_numbers_are_gapless_a_rollback_frees_one_and_a_second_writer_waits_for_the_next(
        engine: sa.Engine) -> None:
    invoice = paid_invoice(engine, "gapless")
    with engine.connect() as conn:
        with conn.begin() as tx:
            assert store.store_credit_note(conn, note(invoice, "cn_g0"), issuer="iss_gapless", payment_ref=None) == \
                "CN-000001"
            tx.rollback()
    numbers: dict[str, str] = {}
    first_stored, second_started = threading.Event(), threading.Event()

    def first() -> None:
        with engine.begin() as conn:
            numbers["first"] = store.store_credit_note(conn, note(invoice, "cn_g1"), issuer="iss_gapless",
                                                       payment_ref=None)
            first_stored.set()
            second_started.wait(10)  # commits only once the second writer is on its way to the counter row

    def second() -> None:
        first_stored.wait(10)
        second_started.set()
        with engine.begin() as conn:
            numbers["second"] = store.store_credit_note(conn, note(invoice, "cn_g2"), issuer="iss_gapless",
                                                        payment_ref=None)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert numbers == {"first": "CN-000001", "second": "CN-000002"}
    with engine.connect() as conn:
        stored = conn.execute(sa.select(credit_notes.c.number).where(credit_notes.c.issuer == "iss_gapless")
                              .order_by(credit_notes.c.number_seq)).scalars().all()
    assert stored == ["CN-000001", "CN-000002"]


@dataclass
class ScriptedRefunds:
    """A gateway whose refund answers are scripted, recording every request."""

    answers: list[RefundOutcome]
    sent: list[RefundRequest] = field(default_factory=list)
    name: str = "scripted"

    def refund(self, request: RefundRequest) -> RefundOutcome:
        self.sent.append(request)
        return self.answers.pop(0)


@dataclass
class Clock:
    at: datetime

    def now(self) -> datetime:
        return self.at


def refund_row(engine: sa.Engine, note_id: str) -> tuple[str, str | None, str | None, str | None]:
    with engine.connect() as conn:
        r = conn.execute(sa.select(refunds.c.status, refunds.c.provider_ref, refunds.c.error_message)
                         .where(refunds.c.credit_note_id == note_id)).one()
        n = conn.execute(sa.select(credit_notes.c.refund_status).where(credit_notes.c.credit_note_id == note_id)
                         ).scalar_one()
    return r.status, r.provider_ref, n, r.error_message


def test_the_refund_executor_resends_an_unknown_answer_with_the_same_key_and_records_the_outcome_on_the_note(
        engine: sa.Engine) -> None:
    invoice = paid_invoice(engine, "refund")
    with engine.begin() as conn:
        store.store_credit_note(conn, note(invoice, "cn_r1", refund=100), issuer="iss_refund", payment_ref="pi_x")
    gateway = ScriptedRefunds([RefundOutcome(RefundStatus.UNKNOWN, message="timeout"),
                               RefundOutcome(RefundStatus.SUCCEEDED, "re_1")])
    clock = Clock(AT)
    executor = RefundExecutor(engine, gateway, clock, unknown_backoff_s=2.0)  # type: ignore[arg-type]

    executor.run_once()
    assert refund_row(engine, "cn_r1")[:3] == ("unknown", None, "unknown")
    assert executor.run_once() == []  # not due before its back-off
    clock.at = AT + timedelta(minutes=5)
    executor.run_once()

    assert refund_row(engine, "cn_r1")[:3] == ("succeeded", "re_1", "succeeded")
    assert [r.idempotency_key for r in gateway.sent] == ["refund:cn_r1", "refund:cn_r1"]
    assert (gateway.sent[0].payment_ref, gateway.sent[0].amount) == ("pi_x", Money(100, "USD"))
    assert executor.run_once() == []  # settled: never sent again


def test_a_refused_refund_is_recorded_failed_on_the_note(engine: sa.Engine) -> None:
    invoice = paid_invoice(engine, "refused")
    with engine.begin() as conn:
        store.store_credit_note(conn, note(invoice, "cn_f1", refund=100), issuer="iss_refused", payment_ref="pi_x")
    gateway = ScriptedRefunds([RefundOutcome(RefundStatus.FAILED, code="charge_already_refunded", message="no")])
    RefundExecutor(engine, gateway, Clock(AT)).run_once()  # type: ignore[arg-type]
    status, _, note_status, message = refund_row(engine, "cn_f1")
    assert (status, note_status, message) == ("failed", "failed", "charge_already_refunded: no")
