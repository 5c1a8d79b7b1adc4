"""Rating with pricing models (the test catalog tests/fixtures/catalogs/priced_plans.yaml): a period close
writes one line per priced part, included units are the period's first units, a minimum tops the meter up,
late usage is priced at its marginal tier position and a draft re-rated in its grace equals the on-time
close. Tier table: 1 - 1,000 at 0.10, 1,001 - 5,000 at 0.08, above 5,000 at 0.05."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from shared.domain.calendar import Period
from shared.domain.catalog import MeterId
from shared.domain.ids import CustomerId, InvoiceId, SubscriptionId
from shared.domain.invoice import Invoice, LineKind
from shared.domain.ledger import CreditLedger, GrantSource, MeterCredit
from shared.domain.money import Money
from shared.domain.rating import (
    GraceUsage,
    LateUsage,
    close_final_period,
    close_period,
    included_grants,
    preview_usage_charges,
    rate_grace_usage,
)
from shared.domain.subscription import Subscription
from tests.fixtures import priced_catalog

pytestmark = pytest.mark.unit

CATALOG = priced_catalog()
JAN_1, FEB_1 = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 2, 1, tzinfo=UTC)
JANUARY, DECEMBER = Period(JAN_1, FEB_1), Period(datetime(2023, 12, 1, tzinfo=UTC), JAN_1)
API, EMAILS = MeterId("api_calls"), MeterId("emails")


def usd(major: str) -> Money:
    return Money.of(major, "USD")


def subscribe(plan_id: str) -> Subscription:
    return Subscription.start(subscription_id=SubscriptionId("sub_1"), customer_id=CustomerId("org_1"),
                              plan=CATALOG.plan(plan_id), at=JAN_1, seats=1, trial_days=0)


def ledger(plan_id: str) -> CreditLedger:
    credits = CreditLedger.open("org_1", [MeterCredit("api_calls"), MeterCredit("emails")])
    for grant in included_grants("sub_1", CATALOG.plan(plan_id), 1, JANUARY):
        credits.grant(grant_id=grant.key, meter=grant.meter_id, amount=grant.amount,
                      source=GrantSource(grant.source), effective_at=grant.effective_at, expires_at=grant.expires_at)
    return credits


def close(sub: Subscription, usage: dict[MeterId, Decimal], credits: CreditLedger, **kwargs: Any) -> Any:
    return close_period(subscription=sub, plan=CATALOG.plan(sub.plan_id), usage_totals_by_meter=usage,
                        credits=credits, coupon=None, tax_rate_bps=0, at=FEB_1, invoice_id=InvoiceId("inv_1"),
                        **kwargs)


def lines(invoice: Invoice) -> list[tuple[LineKind, str, Decimal, Money]]:
    return [(line.kind, line.description, line.quantity, line.amount) for line in invoice.lines]


def test_a_graduated_close_writes_one_line_per_tier_touched() -> None:
    result = close(subscribe("api_graduated"), {API: Decimal(12345)}, ledger("api_graduated"))
    assert lines(result.invoice)[:3] == [
        (LineKind.USAGE, "API calls: 1,000 requests, tier 1 (1 - 1,000)", Decimal(1000), usd("100.00")),
        (LineKind.USAGE, "API calls: 4,000 requests, tier 2 (1,001 - 5,000)", Decimal(4000), usd("320.00")),
        (LineKind.USAGE, "API calls: 7,345 requests, tier 3 (above 5,000)", Decimal(7345), usd("367.25")),
    ]
    assert [line.unit_price.amount for line in result.invoice.lines[:3]] == [
        Decimal("0.10"), Decimal("0.08"), Decimal("0.05")]
    # 787.25 of usage + February's 10.00 fee in advance
    assert result.invoice.total == usd("797.25") == sum((line.amount for line in result.invoice.lines), usd("0"))


def test_a_volume_close_writes_all_units_at_the_tier_the_total_falls_in() -> None:
    result = close(subscribe("api_volume"), {API: Decimal(5001)}, ledger("api_volume"))
    assert lines(result.invoice)[0] == (
        LineKind.USAGE, "API calls: 5,001 requests, volume tier 3 (above 5,000), all units", Decimal(5001),
        usd("250.05"))
    assert result.invoice.total == usd("260.05")


def test_included_units_take_the_first_tier_positions_and_flat_fees_follow_their_tier() -> None:
    result = close(subscribe("api_graduated_flat"), {API: Decimal(1200)}, ledger("api_graduated_flat"))
    # 500 included are units 1-500: billable 501-1,000 in tier 1 (500 x 0.10 + 5.00) and 1,001-1,200 in tier 2
    # (200 x 0.08 + 20.00): 50.00 + 5.00 + 16.00 + 20.00 = 91.00 (the plan's fee is 0.00)
    assert lines(result.invoice)[:4] == [
        (LineKind.USAGE, "API calls: 500 requests, tier 1 (1 - 1,000) (500 covered by included credits)",
         Decimal(500), usd("50.00")),
        (LineKind.USAGE, "API calls: tier 1 flat fee", Decimal(0), usd("5.00")),
        (LineKind.USAGE, "API calls: 200 requests, tier 2 (1,001 - 5,000)", Decimal(200), usd("16.00")),
        (LineKind.USAGE, "API calls: tier 2 flat fee", Decimal(0), usd("20.00")),
    ]
    assert result.invoice.total == usd("91.00")
    assert [(c.meter_id, c.amount) for c in result.credits_consumed] == [(API, Decimal(500))]


def test_a_minimum_is_billed_without_usage_and_tops_up_a_small_charge() -> None:
    idle = close(subscribe("emails_package"), {}, ledger("emails_package"))
    assert lines(idle.invoice)[0] == (LineKind.USAGE, "Emails: minimum commitment USD 10.00", Decimal(0),
                                      usd("10.00"))
    used = close(subscribe("emails_package"), {EMAILS: Decimal(1001)}, ledger("emails_package"))
    assert lines(used.invoice)[:2] == [
        (LineKind.USAGE, "Emails: 1,001 emails, 2 packages of 1,000 at USD 2.00", Decimal(1001), usd("4.00")),
        (LineKind.USAGE, "Emails: minimum commitment USD 10.00", Decimal(0), usd("6.00")),
    ]
    assert idle.invoice.total == used.invoice.total == usd("10.00")
    paused = subscribe("emails_package")
    paused.pause(at=JAN_1.replace(day=10))
    assert not close(paused, {}, ledger("emails_package")).invoice.lines  # no fee, no minimum while paused


def test_a_period_cut_short_owes_its_share_of_the_minimum() -> None:
    # cancelled now on 11 January 00:00: 10 of January's 31 days, 10.00 x 10/31 = 3.2258... -> 3.23 (Lago
    # prorates a spending minimum too); 1,001 emails (4.00) already meet it
    result = close_final_period(subscription=subscribe("emails_package"), plan=CATALOG.plan("emails_package"),
                                usage_totals_by_meter={}, credits=ledger("emails_package"), coupon=None,
                                tax_rate_bps=0, at=JAN_1.replace(day=11), invoice_id=InvoiceId("inv_2"))
    assert result is not None
    assert lines(result.invoice) == [(LineKind.USAGE, "Emails: minimum commitment USD 3.23", Decimal(0), usd("3.23"))]
    used = close_final_period(subscription=subscribe("emails_package"), plan=CATALOG.plan("emails_package"),
                              usage_totals_by_meter={EMAILS: Decimal(1001)}, credits=ledger("emails_package"),
                              coupon=None, tax_rate_bps=0, at=JAN_1.replace(day=11), invoice_id=InvoiceId("inv_3"))
    assert used is not None and used.invoice.total == usd("4.00")


def test_late_usage_is_priced_at_its_marginal_position_after_what_its_period_billed() -> None:
    # December billed 1,000 at volume tier 1 (100.00); 1 more unit arrives late: all 1,001 are now at 0.08
    late = [LateUsage(API, DECEMBER, Decimal(1), billed_quantity=Decimal(1000))]
    result = close(subscribe("api_volume"), {}, ledger("api_volume"), late_usage=late)
    assert [(k, q, a) for k, _, q, a in lines(result.invoice)[:2]] == [
        (LineKind.ADJUSTMENT, Decimal(1001), usd("80.08")), (LineKind.ADJUSTMENT, Decimal(-1000), usd("-100.00"))]
    # graduated: 900 billed, 200 late: 100 more at 0.10 and 100 at 0.08 = 18.00, so 90.00 + 18.00 = 108.00,
    # what 1,100 at once costs
    late = [LateUsage(API, DECEMBER, Decimal(200), billed_quantity=Decimal(900))]
    result = close(subscribe("api_graduated"), {}, ledger("api_graduated"), late_usage=late)
    assert [(d, q, a) for _, d, q, a in lines(result.invoice)[:2]] == [
        ("Late usage: API calls: 100 requests, tier 1 (1 - 1,000)", Decimal(100), usd("10.00")),
        ("Late usage: API calls: 100 requests, tier 2 (1,001 - 5,000)", Decimal(100), usd("8.00"))]


@pytest.mark.parametrize(("closed", "added"), [(Decimal(800), Decimal(400)), (Decimal(300), Decimal(900)),
                                               (Decimal(1100), Decimal(100))])
def test_a_tiered_draft_re_rated_in_its_grace_equals_the_on_time_close(closed: Decimal, added: Decimal) -> None:
    """(300 closed: all covered by the 500 included units, the close wrote a zero line; 1,100 closed: the close
    wrote four lines, and the units it drew are read back from all of them.)"""
    on_time = close(subscribe("api_graduated_flat"), {API: closed + added}, ledger("api_graduated_flat"))
    sub, credits = subscribe("api_graduated_flat"), ledger("api_graduated_flat")
    draft = close(sub, {API: closed}, credits).invoice
    result = rate_grace_usage(draft=draft, subscription=sub, plan=CATALOG.plan("api_graduated_flat"),
                              usage=GraceUsage(closed={API: closed}, added={API: added}), credits=credits,
                              coupon=None)
    assert lines(result.invoice) == lines(on_time.invoice)
    assert result.invoice.total == usd("91.00")


def test_the_preview_prices_a_tiered_meter_as_the_close_does() -> None:
    plan = CATALOG.plan("api_graduated_flat")
    [estimate] = preview_usage_charges(plan, {API: Decimal(1200)}, {API: Decimal(500)})
    assert (estimate.credit_units_applied, estimate.billable_quantity, estimate.charge) == (
        Decimal(500), Decimal(700), usd("91.00"))
    assert estimate.gross == usd("141.00")  # 1,000 x 0.10 + 5.00 + 200 x 0.08 + 20.00 without included units


def test_a_dimensional_meter_bills_each_model_at_its_own_price() -> None:
    """Tokens priced per model: gpt-4o per unit 0.00001; meta-llama/Llama-3-70b graduated (1,000,000 at 0.000001,
    then 0.0000005); any other model, or no model, at the default 0.000002."""
    usage = {MeterId("tokens"): Decimal(100_000), MeterId("tokens/gpt-4o"): Decimal(1_500_000),
             MeterId("tokens/meta-llama/Llama-3-70b"): Decimal(3_000_000),
             MeterId("tokens/mistral-large"): Decimal(250_000)}
    result = close(subscribe("llm_tokens"), usage, ledger("llm_tokens"))
    assert [(d, a) for _, d, _, a in lines(result.invoice)] == [
        ("Inference tokens: 100,000 tokens", usd("0.20")),
        ("Inference tokens (gpt-4o): 1,500,000 tokens", usd("15.00")),
        ("Inference tokens (meta-llama/Llama-3-70b): 1,000,000 tokens, tier 1 (1 - 1,000,000)", usd("1.00")),
        ("Inference tokens (meta-llama/Llama-3-70b): 2,000,000 tokens, tier 2 (above 1,000,000)", usd("1.00")),
        ("Inference tokens (mistral-large): 250,000 tokens", usd("0.50")),
        ("LLM tokens (priced per model) (2024-02-01 - 2024-03-01)", usd("0.00")),
    ]
    assert result.invoice.total == usd("17.70") and result.unbilled == ()
