"""A realistic, deterministic customer population for the demo (seeded random)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

# Stripe's test payment-method names drive the simulated gateway: these succeed, decline, or hard-decline.
GOOD_CARD = "pm_card_visa"
SOFT_DECLINE = "pm_card_chargeDeclinedInsufficientFunds"
HARD_DECLINE = "pm_card_chargeDeclinedStolenCard"
REPLACEMENT_CARD = "pm_card_mastercard"

USAGE_TIERS = ("free", "pro", "team", "enterprise")
REPORT_PLANS = ("reports_ultimate", "reports_enterprise", "reports_basic", "reports_lite")
# Plans in the shipped catalogs are priced in USD; tax rates vary by customer (0%, 7.25%, 19%, 20%).
CURRENCY_TAX = (("USD", 0), ("USD", 725), ("USD", 1900), ("USD", 2000))
ZONES = ("UTC", "America/New_York", "Europe/Berlin", "Asia/Tokyo", "Europe/London")


@dataclass
class DemoCustomer:
    external_id: str
    kind: str  # user | org
    name: str
    email: str
    segment: str  # usage | reports
    plan_id: str | None
    seats: int = 1
    currency: str = "USD"
    tax_rate_bps: int = 0
    timezone: str = "UTC"
    payment_method: str | None = GOOD_CARD
    coupon_id: str | None = None
    trial_days: int | None = 0
    members: list[str] = field(default_factory=list)
    user_limit: int | None = None
    fixes_card_during_dunning: bool = False
    pays_at_provider_during_dunning: bool = False
    """Pays the declined invoice on the provider's hosted page; the webhook that would tell us is lost."""
    # filled in while the demo runs
    customer_id: str = ""
    subscription_id: str = ""
    usage_intensity: float = 1.0


FIRST = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Margaret", "Ken", "Radia", "Linus", "Frances",
         "Tim", "Hedy", "Dennis", "Sophie", "John", "Katherine", "Guido", "Yukihiro", "Anders")
LAST = ("Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Hamilton", "Thompson", "Perlman",
        "Torvalds", "Allen", "Berners-Lee", "Lamarr", "Ritchie", "Wilson", "McCarthy", "Johnson", "Rossum")
ORG_WORDS = ("Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Stark", "Wayne", "Tyrell", "Cyberdyne",
             "Soylent", "Aperture", "Wonka", "Oscorp", "Gringotts", "Pied Piper", "Massive Dynamic", "Nakatomi")
ORG_SUFFIX = ("Labs", "AI", "Research", "Analytics", "Systems", "Robotics", "Health", "Capital", "Media")


# How many customers in dunning pay their invoice at the provider instead (the webhook is lost).
PAYERS_AT_PROVIDER = 3


def build_population(total: int, seed: int = 20260101) -> list[DemoCustomer]:
    """~45% usage-tier users, ~25% usage-tier orgs, ~30% report-plan orgs; about 8% of paying customers
    have a card that fails (a fifth of those hard-decline), 10% start with a coupon, 8% in a trial.
    Of the soft-declined customers who keep their card and were charged on day 1 (no trial), the first
    ``PAYERS_AT_PROVIDER`` pay their invoice on the provider's hosted page during dunning instead."""
    rng = random.Random(seed)
    people: list[DemoCustomer] = []
    for i in range(total):
        roll = rng.random()
        currency, tax = rng.choice(CURRENCY_TAX)
        tz = rng.choice(ZONES)
        if roll < 0.45:
            plan = rng.choices(("free", "pro"), weights=(60, 40))[0]
            first, last = rng.choice(FIRST), rng.choice(LAST)
            c = DemoCustomer(external_id=f"user-{i:05d}", kind="user", name=f"{first} {last}",
                             email=f"{first.lower()}.{last.lower()}.{i}@example.com", segment="usage",
                             plan_id=plan, currency=currency, tax_rate_bps=tax, timezone=tz)
        elif roll < 0.70:
            plan = rng.choices(("team", "enterprise"), weights=(75, 25))[0]
            seats = rng.randint(2, 12) if plan == "team" else rng.randint(10, 60)
            name = f"{rng.choice(ORG_WORDS)} {rng.choice(ORG_SUFFIX)}"
            c = DemoCustomer(external_id=f"org-{i:05d}", kind="org", name=name,
                             email=f"billing+{i}@{name.lower().replace(' ', '')}.example", segment="usage",
                             plan_id=plan, seats=seats, currency=currency, tax_rate_bps=tax, timezone=tz,
                             members=[f"u{i}-{m}" for m in range(min(seats, 8))])
        else:
            plan = rng.choices((*REPORT_PLANS, "trial"), weights=(8, 20, 40, 12, 20))[0]
            name = f"{rng.choice(ORG_WORDS)} {rng.choice(ORG_SUFFIX)}"
            c = DemoCustomer(external_id=f"rep-{i:05d}", kind="org", name=name,
                             email=f"ops+{i}@{name.lower().replace(' ', '')}.example", segment="reports",
                             plan_id=None if plan == "trial" else plan, currency="USD", tax_rate_bps=tax,
                             timezone="UTC", members=[f"r{i}-{m}" for m in range(rng.randint(2, 10))])
            if plan != "trial" and rng.random() < 0.5:
                c.user_limit = max(2, (c.members and 100 // len(c.members)) or 10)
        paying = c.plan_id not in (None, "free")
        if paying:
            card = rng.random()
            if card < 0.015:
                c.payment_method = HARD_DECLINE
            elif card < 0.08:
                c.payment_method = SOFT_DECLINE
                c.fixes_card_during_dunning = rng.random() < 0.5
            if c.segment == "usage" and rng.random() < 0.10:
                # LAUNCH15 is made through the catalog API when the demo starts; the others come from YAML
                c.coupon_id = rng.choice(("WELCOME20", "FIVE_OFF", "PARTNER10", "LAUNCH15"))
            if c.segment == "usage" and c.plan_id == "pro" and rng.random() < 0.15:
                c.trial_days = 14
        else:
            c.payment_method = GOOD_CARD if rng.random() < 0.5 else None
        c.usage_intensity = rng.lognormvariate(0, 0.9)
        people.append(c)
    # NOTE: chosen after the draw, without the random stream, so the rest of the population (and every
    # figure that depends on it) is the same as without them.
    stuck = [c for c in people if c.payment_method == SOFT_DECLINE and not c.fixes_card_during_dunning
             and not c.trial_days]
    for c in stuck[:PAYERS_AT_PROVIDER]:
        c.pays_at_provider_during_dunning = True
    return people
