"""The worker's event payloads are built as plain dicts (announcements.py, for the billing run's CPU): each must be
exactly what its wire model dumps to in JSON mode, keys in the same order, so the events are the same as when
they were built through the models."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from services.billing_worker.service_layer.announcements import credits_payload, invoice_event, wire_instant
from services.billing_worker.service_layer.model import SubscriptionState
from shared.adapters.catalog_file import load_default_catalog
from shared.contracts.messages import CreditsChanged, InvoiceEvent
from shared.domain.calendar import Period
from shared.domain.ids import CustomerId, InvoiceId, SubscriptionId
from shared.domain.invoice import Invoice, InvoiceKey, InvoiceLine, InvoiceReason, LineKind
from shared.domain.money import Money
from shared.domain.subscription import Subscription

JAN_1 = datetime(2026, 1, 1, tzinfo=UTC)
FEB_1 = datetime(2026, 2, 1, tzinfo=UTC)
INSTANTS = [JAN_1, datetime(2026, 1, 1, 0, 0, 0, 400000, tzinfo=UTC), datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
            datetime(2026, 7, 1, 12, tzinfo=ZoneInfo("Europe/Paris")), datetime(2026, 1, 1, tzinfo=ZoneInfo("UTC")),
            datetime(2026, 1, 1, tzinfo=ZoneInfo("Europe/London")),
            datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=-5, minutes=-30)))]


def _state() -> SubscriptionState:
    sub = Subscription.start(subscription_id=SubscriptionId("sub_1"), customer_id=CustomerId("cus_1"),
                             plan=load_default_catalog().plan("pro"), at=JAN_1)
    return SubscriptionState(sub, "USD", "UTC", 800)


def _invoice() -> Invoice:
    invoice = Invoice.draft(invoice_id=InvoiceId("in_1"), customer_id=CustomerId("cus_1"), currency="USD", at=FEB_1,
                            key=InvoiceKey(SubscriptionId("sub_1"), InvoiceReason.PERIOD_CLOSE, Period(JAN_1, FEB_1)))
    invoice.add_line(InvoiceLine(kind=LineKind.FEE, description="Pro", amount=Money(900, "USD")))
    invoice.apply_tax(800)
    return invoice


@pytest.mark.parametrize("at", [*INSTANTS, None])
def test_an_instant_is_written_as_the_wire_models_write_it(at: datetime | None) -> None:
    dumped = CreditsChanged(subscription_id="s", customer_id="c", meter_id="m", expires_at=at).model_dump(mode="json")
    assert wire_instant(at) == dumped["expires_at"]


@pytest.mark.parametrize("extra", [{}, {"finalizes_at": datetime(2026, 2, 4, tzinfo=UTC)},
                                   {"decline_code": "card_declined", "hard_decline": True, "attempt_no": 2}])
def test_an_invoice_payload_is_the_invoice_events_json_dump(extra: dict[str, object]) -> None:
    invoice, state = _invoice(), _state()
    for step in ("draft", "finalised", "paid"):
        if step == "finalised":
            invoice.finalize(number="OLB-000001", at=FEB_1)
        if step == "paid":
            invoice.mark_paid(at=FEB_1, payment_reference="pi_1")
        model = InvoiceEvent(invoice_id=invoice.id, subscription_id=state.id, customer_id="cus_1",
                             number=invoice.number, status=invoice.status.value,
                             total_minor=invoice.total.amount_minor, currency="USD", period_start=JAN_1,
                             period_end=FEB_1, **extra)  # type: ignore[arg-type]
        assert list(invoice_event(invoice, state, **extra).items()) == list(  # type: ignore[arg-type]
            model.model_dump(mode="json").items())


@pytest.mark.parametrize("amount", [Money(200, "USD"), Money(-200, "USD"), Money(5, "JPY"), Decimal(1000),
                                    Decimal("-2.50"), Decimal("1E+3"), Decimal("0.0000012")])
@pytest.mark.parametrize("source", ["plan_included", None])
@pytest.mark.parametrize("expires_at", [FEB_1, None, datetime(2026, 2, 1, 0, 0, 0, 5, tzinfo=UTC)])
def test_a_credits_payload_is_the_credits_changed_json_dump(amount: Money | Decimal, source: str | None,
                                                             expires_at: datetime | None) -> None:
    if isinstance(amount, Money):
        model = CreditsChanged(subscription_id="sub_1", customer_id="cus_1", meter_id="inference",
                               amount_minor=abs(amount.amount_minor), currency=amount.currency, source=source,
                               expires_at=expires_at)
    else:
        model = CreditsChanged(subscription_id="sub_1", customer_id="cus_1", meter_id="inference",
                               units=abs(amount), source=source, expires_at=expires_at)
    assert list(credits_payload(_state(), "inference", amount, source, expires_at).items()) == list(
        model.model_dump(mode="json").items())
