""""Usage so far" priced without PostgreSQL (`service_layer.views.usage_so_far` over a `PeriodReading`): which
credits cover which meter, late usage shown apart, and the charge the period close would bill."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from services.ingest.service_layer.views import PeriodReading, usage_so_far
from shared.adapters.catalog_file import load_default_catalog
from shared.adapters.postgres.usage_reads import GrantBalance, PeriodUsage

pytestmark = pytest.mark.unit

START, END, NOW = (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC),
                   datetime(2026, 3, 10, tzinfo=UTC))


def _grant(grant_id: str, meter_id: str, *, currency: str | None = None, minor: int | None = None,
           units: Decimal | None = None) -> GrantBalance:
    return GrantBalance(grant_id=grant_id, meter_id=meter_id, source="included", priority=0, currency=currency,
                        granted_minor=minor, remaining_minor=minor, granted_units=units, remaining_units=units,
                        effective_at=START, expires_at=END)


def _reading(totals: dict[str, Decimal], grants: list[GrantBalance],
             late: dict[str, Decimal] | None = None) -> PeriodReading:
    return PeriodReading(subscription_id="sub_1", customer_id="cust_1", plan_id="pro", status="active",
                         period_start=START, period_end=END,
                         usage=PeriodUsage("sub_1", START, totals, late or {}), grants=grants)


def test_money_credits_in_the_plan_currency_and_unit_credits_cover_their_meters():
    catalog = load_default_catalog()
    reading = _reading({"inference": Decimal(3_504_999), "storage": Decimal("1000.5")},
                       [_grant("g_usd", "inference", currency="USD", minor=230),
                        _grant("g_eur", "inference", currency="EUR", minor=10_000),
                        _grant("g_gb", "storage", units=Decimal(1000))], late={"inference": Decimal(7)})
    view = usage_so_far(reading, catalog.plan("pro"), catalog.meters, NOW)
    meters = {m.meter_id: m for m in view.meters}
    inference, storage = meters["inference"], meters["storage"]
    assert (inference.gross_minor, inference.credit_remaining_minor, inference.credit_applied_minor,
            inference.estimated_charge_minor, inference.late_quantity) == (350, 230, 230, 120, Decimal(7))
    assert (storage.credit_remaining_units, storage.billable_quantity, storage.estimated_charge_minor) == (
        Decimal(1000), Decimal("0.5"), 1)
    assert view.estimated_usage_charge_minor == 121
    assert [c.grant_id for c in view.credits] == ["g_usd", "g_eur", "g_gb"]  # every grant is shown
    assert (view.currency, view.as_of, view.period_start, view.period_end) == ("USD", NOW, START, END)


def test_a_period_with_no_usage_and_no_credit_charges_nothing():
    catalog = load_default_catalog()
    view = usage_so_far(_reading({}, []), catalog.plan("pro"), catalog.meters, NOW)
    assert view.estimated_usage_charge_minor == 0 and view.credits == []
    assert all(m.estimated_charge_minor == 0 and m.quantity == 0 for m in view.meters)
