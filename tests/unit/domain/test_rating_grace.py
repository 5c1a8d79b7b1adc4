"""`rating.rate_grace_usage`: a draft re-rated with the usage of its period received during its grace equals,
line for line, the close that would have seen that usage before the period end (same unit price, one
rounding, the included credits as one draw, the coupon and tax over the new lines)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from shared.domain.calendar import Period
from shared.domain.catalog import MeterId
from shared.domain.errors import RatingError
from shared.domain.invoice import Invoice, LineKind
from shared.domain.money import Money
from shared.domain.rating import GraceUsage, LateUsage, rate_grace_usage
from tests.unit.domain.test_rating import (
    CATALOG,
    FEB_1,
    INFERENCE,
    JAN_1,
    STORAGE,
    close,
    ledger_with_included_credits,
    subscribe,
    usd,
)

pytestmark = pytest.mark.unit

DECEMBER = Period(JAN_1.replace(year=2023, month=12), JAN_1)
LATE = [LateUsage(INFERENCE, DECEMBER, Decimal(300_000))]  # an earlier period's late usage: kept as it is


def lines(invoice: Invoice) -> list[tuple[LineKind, str, Money, Decimal]]:
    return [(line.kind, line.description, line.amount, line.quantity) for line in invoice.lines]


def test_the_draft_with_grace_usage_equals_the_close_that_saw_it_in_time_coupon_and_tax_included() -> None:
    plan = CATALOG.plan("pro")
    on_time_sub = subscribe("pro", coupon_id="PARTNER10")
    on_time = close(on_time_sub, {INFERENCE: Decimal(2_500_000), STORAGE: Decimal(1_300)},
                    ledger_with_included_credits(plan, 1), coupon=CATALOG.coupon("PARTNER10"), tax_rate_bps=1000,
                    late_usage=LATE)
    graced_sub = subscribe("pro", coupon_id="PARTNER10")
    ledger = ledger_with_included_credits(plan, 1)
    closed = {INFERENCE: Decimal(1_500_000), STORAGE: Decimal(800)}
    draft = close(graced_sub, closed, ledger, coupon=CATALOG.coupon("PARTNER10"), tax_rate_bps=1000,
                  late_usage=LATE).invoice

    result = rate_grace_usage(draft=draft, subscription=graced_sub, plan=plan,
                              usage=GraceUsage(closed=closed, added={INFERENCE: Decimal(1_000_000),
                                                                     STORAGE: Decimal(500)}),
                              credits=ledger, coupon=CATALOG.coupon("PARTNER10"))

    assert lines(result.invoice) == lines(on_time.invoice)
    # inference 2.50 - 2.00 credit; storage 300 x 0.018 = 5.40; late 0.30; fee 9.00: 15.20, 10% off = -1.52;
    # tax 10% of 13.68 = 1.37; total 15.05
    assert result.invoice.total == usd("15.05") == on_time.invoice.total
    assert result.coupon_redemption is not None and result.coupon_redemption.amount == usd("1.52")
    assert ledger.balance("inference", FEB_1 - timedelta(seconds=1)) == usd("0")  # the 2.00 drawn in full
    assert ledger.balance("storage", FEB_1 - timedelta(seconds=1)) == Decimal(0)
    assert draft.total != result.invoice.total  # the draft itself is left as it was


def test_nothing_received_leaves_the_draft_as_it_is_and_a_final_invoice_takes_no_more() -> None:
    plan = CATALOG.plan("pro")
    sub = subscribe("pro")
    ledger = ledger_with_included_credits(plan, 1)
    draft = close(sub, {INFERENCE: Decimal(1_000_000)}, ledger).invoice
    same = rate_grace_usage(draft=draft, subscription=sub, plan=plan,
                            usage=GraceUsage(closed={INFERENCE: Decimal(1_000_000)}, added={}), credits=ledger,
                            coupon=None)
    assert same.invoice is draft

    draft.finalize(number="INV-000001", at=FEB_1)
    with pytest.raises(RatingError):
        rate_grace_usage(draft=draft, subscription=sub, plan=plan,
                         usage=GraceUsage(closed={}, added={MeterId("inference"): Decimal(1)}), credits=ledger,
                         coupon=None)


def test_a_meter_without_usage_at_the_close_gets_its_lines_in_meter_order() -> None:
    plan = CATALOG.plan("pro")
    sub = subscribe("pro")
    ledger = ledger_with_included_credits(plan, 1)
    draft = close(sub, {STORAGE: Decimal(1_100)}, ledger).invoice

    result = rate_grace_usage(draft=draft, subscription=sub, plan=plan,
                              usage=GraceUsage(closed={STORAGE: Decimal(1_100)},
                                               added={INFERENCE: Decimal(2_200_000)}),
                              credits=ledger, coupon=None)

    assert [(line.kind, line.meter_id, line.amount) for line in result.invoice.lines] == [
        (LineKind.USAGE, "inference", usd("2.20")), (LineKind.CREDIT, "inference", usd("-2.00")),
        (LineKind.USAGE, "storage", usd("1.80")), (LineKind.FEE, None, usd("9.00"))]
