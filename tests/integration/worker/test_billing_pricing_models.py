"""Issue 15, item 2, against real PostgreSQL through the real handler table: a period close of a tiered plan
issues one line per tier touched, and usage of a closed period that arrives late is billed at its marginal
position after what that period billed (its total does not depend on when its usage arrived).

Test catalog (tests/fixtures/catalogs/priced_plans.yaml), fee USD 10.00 a month in advance, API calls:
1 - 1,000 at 0.10, 1,001 - 5,000 at 0.08, above 5,000 at 0.05; api_graduated prices them graduated,
api_volume volume. No tax.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from services.billing_worker.adapters.usage import MeterMap, UsageMaterializer
from services.billing_worker.bootstrap import sql_unit_of_work
from shared.adapters.postgres.schema.billing import invoice_lines
from shared.contracts.messages import ClosePeriod, CreateSubscription
from tests.fixtures import priced_catalog
from tests.integration.worker.billing_support import Billing

pytestmark = pytest.mark.integration

JAN_1, FEB_1, MAR_1 = (datetime(2026, m, 1, tzinfo=UTC) for m in (1, 2, 3))


class PricedBilling(Billing):
    """The real handler table over the shipped catalogs plus the test plans priced by tiers."""

    def __init__(self, engine: sa.Engine) -> None:
        super().__init__(engine)
        self.catalog = priced_catalog()
        self.unit_of_work = sql_unit_of_work(self.catalog)
        self.usage = UsageMaterializer(MeterMap.from_catalog(self.catalog))

    def described_lines(self, invoice_id: str) -> list[tuple[str, str, int]]:
        with self.engine.connect() as conn:
            return [(r.kind, r.description, r.amount_minor) for r in conn.execute(
                sa.select(invoice_lines).where(invoice_lines.c.invoice_id == invoice_id)
                .order_by(invoice_lines.c.line_no))]


@pytest.fixture(scope="module")
def billing(engine) -> PricedBilling:  # type: ignore[no-untyped-def]
    return PricedBilling(engine)


def subscribe(billing: PricedBilling, plan_id: str) -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:10]
    sub, cus = f"sub_{suffix}", f"cus_{suffix}"
    env = billing.send(CreateSubscription(subscription_id=sub, customer_id=cus, plan_id=plan_id, currency="USD",
                                          payment_method_id="pm_card_visa", tax_rate_bps=0), JAN_1)
    assert billing.outcome(env).status == "applied"
    return sub, cus


def calls(billing: PricedBilling, sub: str, cus: str, count: int, at: datetime) -> None:
    billing.record_usage(sub, cus, "api_call", {"calls": count}, at)


def test_a_graduated_close_issues_tier_lines_and_late_calls_take_their_marginal_tier(billing: PricedBilling) -> None:
    sub, cus = subscribe(billing, "api_graduated")
    calls(billing, sub, cus, 4000, datetime(2026, 1, 10, tzinfo=UTC))
    calls(billing, sub, cus, 1001, datetime(2026, 1, 12, 9, 30, tzinfo=UTC))
    billing.send(ClosePeriod(subscription_id=sub, customer_id=cus, period_end=FEB_1), FEB_1)
    # 999 calls of 20 January arrive after January was closed; 1,000 calls in February
    calls(billing, sub, cus, 999, datetime(2026, 1, 20, tzinfo=UTC))
    calls(billing, sub, cus, 1000, datetime(2026, 2, 3, tzinfo=UTC))
    billing.send(ClosePeriod(subscription_id=sub, customer_id=cus, period_end=MAR_1), MAR_1)

    start, january, february = billing.invoices(sub)
    assert start.total_minor == 1000
    # 5,001 calls: 1,000 x 0.10 + 4,000 x 0.08 + 1 x 0.05 = 100.00 + 320.00 + 0.05, February's fee 10.00
    assert billing.described_lines(january.invoice_id) == [
        ("usage", "API calls: 1,000 requests, tier 1 (1 - 1,000)", 10000),
        ("usage", "API calls: 4,000 requests, tier 2 (1,001 - 5,000)", 32000),
        ("usage", "API calls: 1 requests, tier 3 (above 5,000)", 5),
        ("fee", "API (graduated) (2026-02-01 - 2026-03-01)", 1000),
    ]
    assert january.total_minor == 43005
    # February: 1,000 x 0.10 = 100.00; January's 999 late calls come after its 5,001: tier 3, 999 x 0.05 = 49.95
    # (at position 0 they would have been 99.90); March's fee 10.00
    assert billing.described_lines(february.invoice_id) == [
        ("usage", "API calls: 1,000 requests, tier 1 (1 - 1,000)", 10000),
        ("adjustment", "Late usage: API calls: 999 requests, tier 3 (above 5,000)", 4995),
        ("fee", "API (graduated) (2026-03-01 - 2026-04-01)", 1000),
    ]
    assert february.total_minor == 15995
    # January's usage in all: 420.05 + 49.95 = 470.00, the graduated price of its 6,000 calls at once
    assert 42005 + 4995 == 10000 + 32000 + 1000 * 5


def test_a_late_call_moving_a_volume_period_to_the_next_tier_reprices_all_its_calls(billing: PricedBilling) -> None:
    sub, cus = subscribe(billing, "api_volume")
    calls(billing, sub, cus, 1000, datetime(2026, 1, 10, tzinfo=UTC))
    billing.send(ClosePeriod(subscription_id=sub, customer_id=cus, period_end=FEB_1), FEB_1)
    calls(billing, sub, cus, 1, datetime(2026, 1, 31, 23, 59, tzinfo=UTC))  # late: January now has 1,001
    calls(billing, sub, cus, 500, datetime(2026, 2, 3, tzinfo=UTC))
    billing.send(ClosePeriod(subscription_id=sub, customer_id=cus, period_end=MAR_1), MAR_1)

    _start, january, february = billing.invoices(sub)
    assert january.total_minor == 10000 + 1000  # 1,000 x 0.10 (tier 1), the fee
    # February 500 x 0.10 = 50.00; January's 1,001 calls at tier 2: +1,001 x 0.08 = 80.08 and -1,000 x 0.10:
    # -19.92 (January in all: 80.08, its volume price at once); fee 10.00: 40.08
    assert billing.described_lines(february.invoice_id) == [
        ("usage", "API calls: 500 requests, volume tier 1 (1 - 1,000), all units", 5000),
        ("adjustment", "Late usage: API calls: 1,001 requests, volume tier 2 (1,001 - 5,000), all units", 8008),
        ("adjustment", "Late usage: API calls: -1,000 requests, volume tier 1 (1 - 1,000), all units", -10000),
        ("fee", "API (volume) (2026-03-01 - 2026-04-01)", 1000),
    ]
    assert february.total_minor == 4008


def test_tokens_are_aggregated_and_billed_per_model_each_at_its_price(billing: PricedBilling) -> None:
    """llm_tokens (fee 0.00): gpt-4o at 0.00001 a token; meta-llama/Llama-3-70b graduated, 1,000,000 at
    0.000001 then 0.0000005; any other model, or an event without one, at the default 0.000002."""
    sub, cus = subscribe(billing, "llm_tokens")
    for tokens, model, day in ((1_000_000, "gpt-4o", 3), (500_000, "gpt-4o", 4),
                               (2_500_000, "meta-llama/Llama-3-70b", 5), (250_000, "mistral-large", 6),
                               (100_000, None, 7)):
        properties: dict[str, object] = {"tokens": tokens, **({"model": model} if model else {})}
        billing.record_usage(sub, cus, "inference_tokens", properties, datetime(2026, 1, day, tzinfo=UTC))
    billing.send(ClosePeriod(subscription_id=sub, customer_id=cus, period_end=FEB_1), FEB_1)
    # 500,000 more llama tokens of January arrive late: after its 2,500,000, all in tier 2 (0.25, not 0.50)
    billing.record_usage(sub, cus, "inference_tokens", {"tokens": 500_000, "model": "meta-llama/Llama-3-70b"},
                         datetime(2026, 1, 30, tzinfo=UTC))
    billing.send(ClosePeriod(subscription_id=sub, customer_id=cus, period_end=MAR_1), MAR_1)

    _start, january, february = billing.invoices(sub)
    # 100,000 x 0.000002 = 0.20; 1,500,000 x 0.00001 = 15.00; llama 1,000,000 x 0.000001 = 1.00 and
    # 1,500,000 x 0.0000005 = 0.75; 250,000 x 0.000002 = 0.50: 17.45
    assert billing.described_lines(january.invoice_id) == [
        ("usage", "Inference tokens: 100,000 tokens", 20),
        ("usage", "Inference tokens (gpt-4o): 1,500,000 tokens", 1500),
        ("usage", "Inference tokens (meta-llama/Llama-3-70b): 1,000,000 tokens, tier 1 (1 - 1,000,000)", 100),
        ("usage", "Inference tokens (meta-llama/Llama-3-70b): 1,500,000 tokens, tier 2 (above 1,000,000)", 75),
        ("usage", "Inference tokens (mistral-large): 250,000 tokens", 50),
        ("fee", "LLM tokens (priced per model) (2026-02-01 - 2026-03-01)", 0),
    ]
    assert january.total_minor == 1745
    assert billing.described_lines(february.invoice_id) == [
        ("adjustment", "Late usage: Inference tokens (meta-llama/Llama-3-70b): 500,000 tokens, tier 2 "
                       "(above 1,000,000)", 25),
        ("fee", "LLM tokens (priced per model) (2026-03-01 - 2026-04-01)", 0),
    ]
