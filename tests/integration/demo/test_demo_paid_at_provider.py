"""The demo's customers who pay at the provider during dunning, on real PostgreSQL: the payment lands in the
simulated provider's shared record, where the dunning service's own gateway finds it (the demo waits for
that), and until then the audit counts a payment the provider took that is not on its invoice."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from services.demo.audit import count_violations
from services.demo.paid_at_provider import ProviderPayment, pay_on_hosted_page
from services.demo.population import SOFT_DECLINE, DemoCustomer
from services.dunning.reconciliation import InvoiceVerdict, PaymentReconciler
from shared.adapters.clock import ManualClock
from shared.adapters.payments.port import ChargeRequest, ChargeStatus
from shared.adapters.payments.simulated import PostgresProviderRecord, SimulatedGateway
from shared.adapters.postgres.schema.billing import invoices, payment_attempts
from shared.adapters.postgres.schema.dunning import dunning_cases
from shared.domain.money import Money

pytestmark = pytest.mark.integration

JAN_6 = datetime(2026, 1, 6, 23, 0, tzinfo=UTC)


def customer_in_dunning(engine: sa.Engine, *, pays_at_provider: bool, open_case: bool = True) -> DemoCustomer:
    """A customer whose first invoice was declined at the provider, recorded as the worker and dunning would."""
    n = uuid.uuid4().hex[:10]
    customer = DemoCustomer(external_id=f"org-{n}", kind="org", name="Acme Labs", email="billing@acme.example",
                            segment="usage", plan_id="team", payment_method=SOFT_DECLINE,
                            pays_at_provider_during_dunning=pays_at_provider,
                            customer_id=f"cus_{n}", subscription_id=f"sub_{n}")
    invoice_id = f"in_{n}"
    declined = SimulatedGateway(PostgresProviderRecord(engine)).charge(ChargeRequest(
        invoice_id=invoice_id, amount=Money(2900, "USD"), customer_id=customer.customer_id,
        payment_method_id=SOFT_DECLINE, idempotency_key=f"pa_{n}_1"))
    assert declined.status is ChargeStatus.DECLINED
    with engine.begin() as conn:
        conn.execute(invoices.insert().values(
            invoice_id=invoice_id, subscription_id=customer.subscription_id, customer_id=customer.customer_id,
            kind="subscription_start", period_start=JAN_6 - timedelta(days=6), period_end=JAN_6 + timedelta(days=25),
            status="open", number=f"INV-{n}", currency="USD", total_minor=2900, amount_due_minor=2900))
        conn.execute(payment_attempts.insert().values(
            attempt_id=f"att_{n}_1", invoice_id=invoice_id, attempt_no=1, subscription_id=customer.subscription_id,
            customer_id=customer.customer_id, amount_minor=2900, currency="USD", idempotency_key=f"pa_{n}_1",
            status="declined", provider_ref=declined.provider_ref, decline_code="insufficient_funds",
            requested_at=JAN_6 - timedelta(days=6)))
        if open_case:
            conn.execute(dunning_cases.insert().values(
                case_id=f"case_{n}", invoice_id=invoice_id, subscription_id=customer.subscription_id,
                customer_id=customer.customer_id, amount_minor=2900, currency="USD",
                opened_at=JAN_6 - timedelta(days=6), next_wake_at=JAN_6 + timedelta(days=1)))
    return customer


def test_a_customer_scripted_to_pay_at_the_provider_pays_its_invoice_in_dunning_and_only_reconciliation_sees_it(
        demo_engine: sa.Engine) -> None:
    payer = customer_in_dunning(demo_engine, pays_at_provider=True)
    keeps_waiting = customer_in_dunning(demo_engine, pays_at_provider=False)
    no_case_yet = customer_in_dunning(demo_engine, pays_at_provider=True, open_case=False)

    paid = pay_on_hosted_page(demo_engine, [payer, keeps_waiting, no_case_yet])

    invoice_id = f"in_{payer.subscription_id.removeprefix('sub_')}"
    with demo_engine.connect() as conn:
        intent = conn.execute(sa.select(payment_attempts.c.provider_ref)
                              .where(payment_attempts.c.invoice_id == invoice_id)).scalar_one()
        assert paid == [ProviderPayment(payer.external_id, invoice_id, intent)]
        assert conn.execute(sa.select(invoices.c.status).where(invoices.c.invoice_id == invoice_id)
                            ).scalar_one() == "open"  # nothing reached us
        assert count_violations(conn, "every_payment_taken_at_the_provider_is_on_its_invoice") == 1

    # The dunning service's reconciler, with a gateway of its own on the same provider record, finds it.
    dunning_gateway = SimulatedGateway(PostgresProviderRecord(demo_engine))
    found = PaymentReconciler(demo_engine, dunning_gateway, ManualClock(JAN_6)).reconcile_open_invoices(limit=50)
    assert [s.invoice_id for s in found if s.verdict is InvoiceVerdict.PAID] == [invoice_id]
