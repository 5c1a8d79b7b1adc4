"""The read-only rating preview: the close's arithmetic against given balances, drawing nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.adapters.catalog_file import load_default_catalog
from shared.domain.calendar import Period
from shared.domain.catalog import MeterId
from shared.domain.errors import RatingError
from shared.domain.ids import CustomerId, InvoiceId, SubscriptionId
from shared.domain.invoice import LineKind
from shared.domain.ledger import CreditLedger, GrantSource, MeterCredit
from shared.domain.money import Money
from shared.domain.rating import MeterTreatment, close_period, preview_usage_charges
from shared.domain.subscription import Subscription

pytestmark = pytest.mark.unit

CATALOG = load_default_catalog()
JAN_1 = datetime(2024, 1, 1, tzinfo=UTC)
FEB_1 = datetime(2024, 2, 1, tzinfo=UTC)
INFERENCE, STORAGE = MeterId("inference"), MeterId("storage")


def usd(major: str) -> Money:
    return Money.of(major, "USD")


def test_money_credits_cover_the_rounded_gross_and_the_rest_is_the_charge():
    (inference, storage) = preview_usage_charges(
        CATALOG.plan("pro"), {INFERENCE: Decimal(3_504_999)}, {INFERENCE: usd("2.30"), STORAGE: Decimal(0)}
    )
    # 3,504,999 micro-USD at USD 0.000001 = 3.504999 -> 3.50; 2.30 of credit; 1.20 to pay
    assert (inference.gross, inference.credit_applied, inference.charge) == (usd("3.50"), usd("2.30"), usd("1.20"))
    assert (inference.treatment, inference.billable_quantity) == (MeterTreatment.BILL, Decimal(3_504_999))
    assert (storage.quantity, storage.charge) == (Decimal(0), usd("0"))


def test_unit_credits_reduce_the_billable_quantity_before_pricing():
    (_, storage) = preview_usage_charges(CATALOG.plan("pro"), {STORAGE: Decimal("1000.5")}, {STORAGE: Decimal(1000)})
    assert (storage.credit_units_applied, storage.billable_quantity, storage.charge) == (
        Decimal(1000),
        Decimal("0.5"),
        usd("0.01"),  # 0.5 x 0.018 = 0.009 -> 0.01
    )
    assert storage.gross == usd("18.01") and storage.credit_applied is None


def test_blocked_and_unpriced_meters_are_never_charged():
    estimates = preview_usage_charges(
        CATALOG.plan("free"), {INFERENCE: Decimal(10**9), MeterId("reports"): Decimal(3)}, {}
    )
    assert [(e.meter_id, e.treatment, e.gross, e.charge) for e in estimates] == [
        ("inference", MeterTreatment.BLOCK, None, usd("0")),
        ("reports", MeterTreatment.UNPRICED, None, usd("0")),
        ("storage", MeterTreatment.BLOCK, None, usd("0")),
    ]


def test_missing_negative_or_mismatched_balances_cover_nothing():
    plan = CATALOG.plan("pro")
    usage = {INFERENCE: Decimal(1_000_000), STORAGE: Decimal(10)}
    for balances in ({}, {INFERENCE: usd("-1.00"), STORAGE: Decimal(-5)}, {INFERENCE: Decimal(5), STORAGE: usd("1")}):
        inference, storage = preview_usage_charges(plan, usage, balances)  # type: ignore[arg-type]
        assert (inference.charge, storage.charge) == (usd("1.00"), usd("0.18"))


def test_negative_usage_is_refused_as_the_close_refuses_it():
    with pytest.raises(RatingError):
        preview_usage_charges(CATALOG.plan("pro"), {INFERENCE: Decimal(-1)}, {})


def _ledger_holding(inference: Money, storage: Decimal) -> CreditLedger:
    ledger = CreditLedger.open("sub_1", [MeterCredit("inference", "USD"), MeterCredit("storage")])
    for meter, amount in (("inference", inference), ("storage", storage)):
        if amount > (Money.zero("USD") if isinstance(amount, Money) else 0):
            ledger.grant(
                grant_id=f"g-{meter}",
                meter=meter,
                amount=amount,
                source=GrantSource.PLAN_INCLUDED,
                effective_at=JAN_1,
                expires_at=FEB_1,
            )
    return ledger


@settings(max_examples=150, deadline=None)
@given(
    plan_id=st.sampled_from(["pro", "team"]),
    inference_used=st.integers(min_value=0, max_value=50_000_000),
    storage_used=st.decimals(min_value=0, max_value=20_000, places=2, allow_nan=False, allow_infinity=False),
    inference_credit=st.integers(min_value=0, max_value=5_000),
    storage_credit=st.integers(min_value=0, max_value=5_000),
)
def test_the_preview_charges_exactly_what_the_close_bills_per_meter_and_draws_nothing(
    plan_id: str, inference_used: int, storage_used: Decimal, inference_credit: int, storage_credit: int
):
    plan = CATALOG.plan(plan_id)
    usage = {INFERENCE: Decimal(inference_used), STORAGE: storage_used}
    balances = {INFERENCE: Money(inference_credit, "USD"), STORAGE: Decimal(storage_credit)}
    ledger = _ledger_holding(balances[INFERENCE], balances[STORAGE])
    entries_before = ledger.entries

    preview = {e.meter_id: e for e in preview_usage_charges(plan, usage, balances)}

    assert ledger.entries == entries_before
    subscription = Subscription.start(
        subscription_id=SubscriptionId("sub_1"), customer_id=CustomerId("org_1"), plan=plan, at=JAN_1, trial_days=0
    )
    result = close_period(
        subscription=subscription,
        plan=plan,
        usage_totals_by_meter=usage,
        credits=ledger,
        coupon=None,
        tax_rate_bps=0,
        at=FEB_1,
        invoice_id=InvoiceId("inv_1"),
    )
    billed: dict[str, Money] = {}
    for line in result.invoice.lines:
        if line.meter_id is not None and line.kind in (LineKind.USAGE, LineKind.CREDIT):
            billed[line.meter_id] = billed.get(line.meter_id, Money.zero("USD")) + line.amount
    for meter_id, estimate in preview.items():
        assert estimate.charge == billed.get(meter_id, Money.zero("USD")), meter_id
    assert result.closed_period == Period(JAN_1, FEB_1)
