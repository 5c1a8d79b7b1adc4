"""Profile the domain side of a billing run: ``close_period`` for many pro/team subscriptions, in-process.

No database, no Kafka: each subscription gets its real ``CreditLedger`` (rebuilt from its stored grants,
as the worker does), usage on both meters, and some a coupon and a tax rate. The script reports
microseconds per close and a digest of everything the closes produced (lines, totals, credit entries,
grants, events), so an optimisation can be checked to change no result: the digest must not move.

    .venv/bin/python -m bench.profile_rating                 # 20,000 closes, timing + digest
    .venv/bin/python -m bench.profile_rating --profile       # the same under pyinstrument
    .venv/bin/python -m bench.profile_rating -n 5000 --repeat 3
"""

from __future__ import annotations

import argparse
import hashlib
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from shared.adapters.catalog_file import load_default_catalog
from shared.domain.calendar import BillingAnchor, Interval, period_containing
from shared.domain.catalog import Catalog, MeterId
from shared.domain.coupons import AppliedCoupon, Coupon
from shared.domain.events import event_payload
from shared.domain.ids import CustomerId, InvoiceId, SubscriptionId
from shared.domain.ledger import CreditGrant, CreditLedger, GrantSource, MeterCredit
from shared.domain.rating import close_period, included_grants
from shared.domain.subscription import Subscription, SubscriptionStatus

CLOSE_AT = datetime(2024, 3, 1, tzinfo=UTC)
INFERENCE, STORAGE = MeterId("inference"), MeterId("storage")
ZONES = ("UTC", "UTC", "UTC", "Europe/Paris", "America/New_York")


@dataclass
class Case:
    subscription: Subscription
    ledger: CreditLedger
    usage: dict[MeterId, Decimal]
    coupon: Coupon | None
    tax_rate_bps: int
    invoice_id: InvoiceId


def build_cases(catalog: Catalog, n: int, seed: int = 7) -> list[Case]:
    """``n`` subscriptions whose current period ends at or before ``CLOSE_AT``, with deterministic data."""
    rng = random.Random(seed)
    coupons = [catalog.coupon("WELCOME20"), catalog.coupon("FIVE_OFF"), catalog.coupon("PARTNER10")]
    cases = []
    for i in range(n):
        plan = catalog.plan("pro" if i % 2 else "team")
        seats = rng.randint(1, 12) if plan.per_seat else 1
        tz = ZONES[i % len(ZONES)]
        anchor = BillingAnchor(day=rng.randint(1, 28), tz=tz)
        period = period_containing(anchor, Interval.MONTH, datetime(2024, 2, 15, tzinfo=UTC))
        if period.end > CLOSE_AT:
            period = period_containing(anchor, Interval.MONTH, datetime(2024, 1, 20, tzinfo=UTC))
        coupon = coupons[i % 7] if i % 7 < len(coupons) else None
        sub_id = SubscriptionId(f"sub_{i:06d}")
        subscription = Subscription(
            id=sub_id,
            customer_id=CustomerId(f"org_{i:06d}"),
            plan_id=plan.id,
            status=SubscriptionStatus.ACTIVE,
            seats=seats,
            interval=Interval.MONTH,
            anchor=anchor,
            current_period=period,
            started_at=period.start,
            coupon=AppliedCoupon(coupon_id=coupon.id, redeemed_at=period.start) if coupon else None,
        )
        grants = [
            CreditGrant(
                grant_id=f"incl|{grant.key}",
                meter=grant.meter_id,
                amount=grant.amount,
                source=GrantSource(grant.source),
                effective_at=grant.effective_at,
                expires_at=grant.expires_at,
                priority=30,
            )
            for grant in included_grants(sub_id, plan, seats, period)
        ]
        ledger = CreditLedger.open(sub_id, [MeterCredit("inference", "USD"), MeterCredit("storage")], tz, grants)
        usage = {
            INFERENCE: Decimal(rng.randint(0, 6_000_000 * seats)),
            STORAGE: Decimal(rng.randint(0, 1500 * seats)) + Decimal(rng.randint(0, 99)) / 100,
        }
        if i % 11 == 0:
            usage.pop(STORAGE)
        cases.append(Case(subscription, ledger, usage, coupon, (0, 2000, 825)[i % 3], InvoiceId(f"inv_{i:06d}")))
    return cases


def close_all(catalog: Catalog, cases: list[Case]) -> tuple[float, list[object]]:
    """Close every case once; return the CPU seconds spent in the domain (the machine is shared, so
    wall-clock time would measure the neighbours) and the results."""
    results: list[object] = []
    started = time.process_time()
    for case in cases:
        sub = case.subscription
        result = close_period(
            subscription=sub,
            plan=catalog.plan(sub.plan_id),
            usage_totals_by_meter=case.usage,
            credits=case.ledger,
            coupon=case.coupon,
            tax_rate_bps=case.tax_rate_bps,
            at=sub.current_period.end,
            invoice_id=case.invoice_id,
        )
        expired = case.ledger.expire(result.closed_period.end)
        results.append((result, expired))
    return time.process_time() - started, results


def digest(cases: list[Case], results: list[object]) -> str:
    """A hash of every observable outcome, to prove an optimisation changed nothing."""
    h = hashlib.sha256()
    for case, (result, expired) in zip(cases, results, strict=True):  # type: ignore[misc]
        invoice = result.invoice
        h.update(repr((str(invoice.key), invoice.total, invoice.tax_rate_bps)).encode())
        for line in invoice.lines:
            h.update(repr((line.kind, line.description, line.amount, line.quantity, line.unit_price, line.period,
                           line.proration, line.meter_id, line.taxable)).encode())
        grants = [(g.key, g.meter_id, g.amount, g.effective_at, g.expires_at, g.source) for g in result.grants]
        h.update(repr((result.credits_consumed, grants, result.coupon_redemption, result.unbilled,
                       result.closed_period, result.next_period)).encode())
        h.update(repr(case.ledger.entries).encode())
        h.update(repr(expired).encode())
        for event in case.subscription.pull_events():
            h.update(repr((event.name, event_payload(event))).encode())
        h.update(repr((case.subscription.current_period, case.subscription.version, case.subscription.coupon)).encode())
    return h.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=20_000, help="subscriptions to close")
    parser.add_argument("--repeat", type=int, default=1, help="runs (the best is reported)")
    parser.add_argument("--profile", action="store_true", help="profile one run with pyinstrument")
    args = parser.parse_args()
    catalog = load_default_catalog()
    best = float("inf")
    digests = set()
    for _ in range(args.repeat):
        cases = build_cases(catalog, args.n)
        if args.profile:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0005)
            profiler.start()
            seconds, results = close_all(catalog, cases)
            profiler.stop()
            print(profiler.output_text(unicode=True, color=False, show_all=False))
        else:
            seconds, results = close_all(catalog, cases)
        best = min(best, seconds)
        digests.add(digest(cases, results))
    per_close = best / args.n * 1e6
    print(f"closes: {args.n}  best CPU: {best:.3f} s  per close: {per_close:.1f} us  digest: {sorted(digests)}")


if __name__ == "__main__":
    main()
