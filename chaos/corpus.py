"""The poison-message corpus: what a careless or hostile producer can write straight to a consumed topic.

Two parts, for every topic the worker or dunning consumes (usage.v1, commands.v1, payments.v1,
billing-events.v1):

- **named cases**, the inputs issue 12 found stopping the pipeline (timestamps whose UTC conversion
  overflows, a 10,000-character id, a negative cost, a key that is not the payload's subscription, numbers
  past any column, deep nesting, bytes that are not JSON, ...). Each says what a correct consumer does:
  ``REFUSED`` (dead-lettered, nothing stored) or ``HANDLED`` (stored or dead-lettered, either is correct);
- **generated cases**: hypothesis-generated envelopes (a valid template with fields replaced by extreme
  values) and raw bytes, drawn with a fixed seed so a failing run can be repeated.

Every case's subscription is a throw-away ``sub_poison_*`` id, so poison that is wrongly stored shows up
under its own ids and never blurs the audit of the real load.
"""

from __future__ import annotations

import enum
import json
import uuid
from dataclasses import dataclass
from typing import Any, TypeVar

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from shared.contracts import topics

POISON_SUB = "sub_poison_victim"
POISON_CUSTOMER = "cus_poison"
POISON_TX_PREFIX = "poison-"
OCCURRED = "2026-01-01T00:30:00+00:00"
# Aware instants whose conversion to UTC leaves datetime's range: the OverflowError of issue 12.
OVERFLOW_LATE = "9999-12-31T23:59:59-01:00"
OVERFLOW_EARLY = "0001-01-01T00:00:00+01:00"
HUGE_ID = "c" * 10_000


class Expect(enum.StrEnum):
    REFUSED = "refused"  # must be dead-lettered and leave no row behind
    HANDLED = "handled"  # stored or dead-lettered; what must not happen is a crash or a stuck partition


@dataclass(frozen=True)
class PoisonCase:
    name: str
    topic: str  # logical topic
    key: bytes | None
    value: bytes | None
    expect: Expect
    transaction_id: str | None = None  # usage cases: the id under which a wrongly stored row would show


def _envelope(type_: str, payload: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    return {"event_id": str(uuid.uuid4()), "type": type_, "schema_version": 1, "occurred_at": OCCURRED,
            "producer": "chaos-poison", "correlation_id": None, "payload": payload, **overrides}


# A value written as JSON nested this deep; spliced in as text (Python's json encoder recurses too).
_DEEP_DEPTH = 990
_DEEP = "@@nested@@"


def _dump(envelope: dict[str, Any]) -> bytes:
    # json, not orjson: orjson refuses integers past 64 bits, and those are part of the corpus.
    deep_json = '{"n":' * _DEEP_DEPTH + "1" + "}" * _DEEP_DEPTH
    return json.dumps(envelope).replace(f'"{_DEEP}"', deep_json).encode()


def usage_payload(tx: str, **overrides: Any) -> dict[str, Any]:
    return {"transaction_id": f"{POISON_TX_PREFIX}{tx}", "customer_id": POISON_CUSTOMER,
            "subscription_id": POISON_SUB, "event_type": "inference", "timestamp": OCCURRED,
            "properties": {"cost_usd_micros": 10}, "received_at": OCCURRED, **overrides}


def _case(name: str, topic: str, envelope: dict[str, Any] | bytes | None, expect: Expect,
          key: str | bytes | None = POISON_SUB) -> PoisonCase:
    value = envelope if isinstance(envelope, bytes) or envelope is None else _dump(envelope)
    payload = envelope.get("payload") if isinstance(envelope, dict) else None
    tx = payload.get("transaction_id") if isinstance(payload, dict) and topic == topics.USAGE else None
    return PoisonCase(name, topic, key.encode() if isinstance(key, str) else key, value, expect,
                      tx if isinstance(tx, str) else None)


def _undecodable(topic: str) -> list[PoisonCase]:
    """Cases every consumer must survive. Dunning reads billing-events.v1, where most types are not its
    business: a type it does not handle (or a missing key) may be skipped instead of dead-lettered."""
    short = topic.split(".")[0]
    typed = Expect.HANDLED if topic == topics.BILLING_EVENTS else Expect.REFUSED
    return [
        _case(f"{short}: bytes that are not JSON", topic, b"\xff\xfe\x00 not json", Expect.REFUSED),
        _case(f"{short}: no value (tombstone)", topic, None, Expect.REFUSED),
        _case(f"{short}: a JSON array, not an envelope", topic, b"[1, 2, 3]", Expect.REFUSED),
        _case(f"{short}: JSON null", topic, b"null", Expect.REFUSED),
        _case(f"{short}: an unknown message type", topic, _envelope("no.such.type", {}), typed),
        _case(f"{short}: envelope nested 990 levels deep", topic,
              _envelope("usage.recorded", {"deep": _DEEP}), typed),
        _case(f"{short}: occurred_at overflows UTC (year 9999, -01:00)", topic,
              _envelope("no.such.type", {}, occurred_at=OVERFLOW_LATE), Expect.REFUSED),
        _case(f"{short}: no key at all", topic, _envelope("no.such.type", {}), typed, key=None),
    ]


def usage_cases() -> list[PoisonCase]:
    u = topics.USAGE

    def usage(name: str, expect: Expect = Expect.REFUSED, key: str = POISON_SUB, **overrides: Any) -> PoisonCase:
        return _case(f"usage: {name}", u, _envelope("usage.recorded", usage_payload(name[:40], **overrides)),
                     expect, key=key)

    def cost(name: str, value: Any) -> PoisonCase:
        return usage(name, properties={"cost_usd_micros": value})

    return [
        *_undecodable(u),
        _case("usage: envelope occurred_at 9999-12-31T23:59:59-01:00", u,
              _envelope("usage.recorded", usage_payload("occurred-overflow"), occurred_at=OVERFLOW_LATE),
              Expect.REFUSED),
        usage("timestamp 0001-01-01T00:00:00+01:00", timestamp=OVERFLOW_EARLY),
        usage("timestamp 9999-12-31T23:59:59-01:00", timestamp=OVERFLOW_LATE),
        usage("timestamp in year 9999 (no close will bill it)", timestamp="9999-06-01T00:00:00+00:00"),
        usage("received_at overflows UTC", received_at=OVERFLOW_LATE),
        usage("customer_id of 10,000 characters", customer_id=HUGE_ID),
        usage("subscription_id of 10,000 characters", subscription_id=HUGE_ID, key=HUGE_ID),
        usage("transaction_id of 10,000 characters", transaction_id=HUGE_ID),
        usage("event_type of 10,000 characters", event_type="e" * 10_000),
        cost("negative cost_usd_micros", -5_000_000),
        cost("cost 1e300 (float)", 1e300),
        cost("cost '1e309' (string, infinite)", "1e309"),
        cost("cost 10**30 (integer)", 10**30),
        cost("cost 'NaN'", "NaN"),
        usage("cost 1e-30 (more decimals than the usage rules allow)", properties={"cost_usd_micros": 1e-30}),
        usage("key is not payload.subscription_id", key="sub_poison_other"),
        usage("property nested 990 levels deep", properties={"cost_usd_micros": 1, "deep": _DEEP}),
        usage("card number in properties", properties={"cost_usd_micros": 1, "card": "4242 4242 4242 4242"}),
        usage("NUL character in transaction_id", transaction_id="poison-nul\x00"),
        usage("subscription_id null", subscription_id=None),
    ]


def command_cases() -> list[PoisonCase]:
    c = topics.COMMANDS
    create = {"subscription_id": POISON_SUB, "customer_id": POISON_CUSTOMER, "plan_id": "pro", "currency": "USD",
              "payment_method_id": "pm_card_visa", "invoice_id": "inv_poison"}

    def command(name: str, type_: str, key: str = POISON_SUB, **fields: Any) -> PoisonCase:
        payload = {k: v for k, v in {**create, **fields}.items() if v is not None}
        return _case(f"commands: {name}", c, _envelope(type_, payload), Expect.REFUSED, key=key)

    return [
        *_undecodable(c),
        command("create with customer_id of 10,000 characters", "subscription.create", customer_id=HUGE_ID,
                subscription_id="sub_poison_huge", key="sub_poison_huge"),
        command("create with start_at overflowing UTC", "subscription.create", start_at=OVERFLOW_LATE,
                subscription_id="sub_poison_start", key="sub_poison_start"),
        command("create with 10**30 seats", "subscription.create", seats=10**30,
                subscription_id="sub_poison_seats", key="sub_poison_seats"),
        command("create with an unknown plan", "subscription.create", plan_id="no-such-plan",
                subscription_id="sub_poison_plan", key="sub_poison_plan"),
        command("create keyed by another subscription", "subscription.create",
                subscription_id="sub_poison_keyed", key="sub_poison_elsewhere"),
        command("cancel of a subscription that does not exist", "subscription.cancel",
                subscription_id="sub_poison_missing", key="sub_poison_missing"),
        command("payment.retry of an unknown invoice", "payment.retry", subscription_id="sub_poison_missing",
                key="sub_poison_missing", invoice_id="inv_poison_missing"),
        command("period.close with period_end overflowing UTC", "period.close", period_end=OVERFLOW_LATE,
                subscription_id="sub_poison_missing", key="sub_poison_missing"),
    ]


def payment_cases() -> list[PoisonCase]:
    p = topics.PAYMENTS
    base = {"subscription_id": "sub_poison_missing", "invoice_id": "inv_poison_missing", "amount_minor": 100,
            "currency": "USD", "paid_at": OCCURRED}

    def payment(name: str, **fields: Any) -> PoisonCase:
        return _case(f"payments: {name}", p, _envelope("payment.succeeded", {**base, **fields}), Expect.REFUSED,
                     key=str(fields.get("subscription_id", base["subscription_id"]))[:200])

    return [
        *_undecodable(p),
        payment("success for an unknown invoice"),
        payment("negative amount", amount_minor=-100),
        payment("amount 10**30", amount_minor=10**30),
        payment("paid_at overflowing UTC", paid_at=OVERFLOW_LATE),
        payment("invoice_id of 10,000 characters", invoice_id=HUGE_ID),
    ]


def billing_event_cases() -> list[PoisonCase]:
    b = topics.BILLING_EVENTS
    base = {"invoice_id": "inv_poison_missing", "subscription_id": "sub_poison_missing",
            "customer_id": POISON_CUSTOMER, "status": "open", "total_minor": 100, "currency": "USD",
            "period_start": OCCURRED, "period_end": OCCURRED, "attempt_no": 1}

    def event(name: str, expect: Expect = Expect.HANDLED, **fields: Any) -> PoisonCase:
        return _case(f"billing-events: {name}", b, _envelope("invoice.payment_failed", {**base, **fields}),
                     expect, key="sub_poison_missing")

    return [
        *_undecodable(b),
        # billing-events.v1 is written by our own relay; dunning reads only some fields of it, so what it
        # cannot use must not stop it (HANDLED), and what it would store must fit its columns (REFUSED).
        event("payment failed for an unknown invoice"),
        event("total 10**30", Expect.REFUSED, total_minor=10**30),
        event("period_start overflowing UTC", period_start=OVERFLOW_EARLY),
        event("customer_id of 10,000 characters", customer_id=HUGE_ID),
        event("attempt_no -1", attempt_no=-1),
    ]


def named_cases() -> list[PoisonCase]:
    return [*usage_cases(), *command_cases(), *payment_cases(), *billing_event_cases()]


# ------------------------------------------------------------------------------------------ generated

T = TypeVar("T")

# Values a field may be replaced by: wrong types, extremes of every JSON kind, timestamps at the edges of
# what datetime (and PostgreSQL) can hold.
_EXTREME_TIMES = ["9999-12-31T23:59:59+00:00", OVERFLOW_LATE, OVERFLOW_EARLY, "0001-01-01T00:00:00+00:00",
                  "1970-01-01T00:00:00Z", "2026-01-01T00:00:00", "2026-13-45T99:99:99Z", "", "now"]
_weird_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=60),
    st.text(min_size=200, max_size=3000), st.sampled_from(_EXTREME_TIMES))
_weird_value = st.recursive(_weird_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)), max_leaves=12)

_TEMPLATES: dict[str, list[tuple[str, dict[str, Any]]]] = {
    topics.USAGE: [("usage.recorded", usage_payload("generated"))],
    topics.COMMANDS: [
        ("subscription.create", {"subscription_id": POISON_SUB, "customer_id": POISON_CUSTOMER, "plan_id": "pro",
                                 "currency": "USD", "payment_method_id": "pm_card_visa"}),
        ("subscription.cancel", {"subscription_id": POISON_SUB, "customer_id": POISON_CUSTOMER,
                                 "at_period_end": True}),
        ("payment.retry", {"subscription_id": POISON_SUB, "customer_id": POISON_CUSTOMER,
                           "invoice_id": "inv_poison"}),
        ("credits.grant", {"subscription_id": POISON_SUB, "customer_id": POISON_CUSTOMER, "meter_id": "inference",
                           "amount_minor": 100, "currency": "USD"}),
    ],
    topics.PAYMENTS: [
        ("payment.succeeded", {"subscription_id": POISON_SUB, "invoice_id": "inv_poison", "amount_minor": 100,
                               "currency": "USD", "paid_at": OCCURRED}),
        ("payment.failed", {"subscription_id": POISON_SUB, "invoice_id": "inv_poison", "amount_minor": 100,
                            "currency": "USD", "failed_at": OCCURRED, "decline_code": "card_declined"}),
    ],
    topics.BILLING_EVENTS: [
        ("invoice.payment_failed", {"invoice_id": "inv_poison", "subscription_id": POISON_SUB,
                                    "customer_id": POISON_CUSTOMER, "status": "open", "total_minor": 100,
                                    "currency": "USD", "attempt_no": 1}),
        ("invoice.paid", {"invoice_id": "inv_poison", "subscription_id": POISON_SUB,
                          "customer_id": POISON_CUSTOMER, "status": "paid", "total_minor": 100, "currency": "USD"}),
    ],
}


@st.composite
def mutated_envelopes(draw: st.DrawFn, topic: str) -> bytes:
    """A valid envelope of one of the topic's types with some envelope and payload fields replaced,
    dropped or added."""
    type_, template = draw(st.sampled_from(_TEMPLATES[topic]))
    payload = dict(template)
    if "transaction_id" in payload:
        payload["transaction_id"] = f"{POISON_TX_PREFIX}gen-{draw(st.uuids())}"
    for field in draw(st.sets(st.sampled_from(sorted(payload)), max_size=3)):
        if draw(st.booleans()):
            payload[field] = draw(_weird_value)
        else:
            del payload[field]
    extra = draw(st.dictionaries(st.text(min_size=1, max_size=10), _weird_value, max_size=2))
    envelope = _envelope(type_, {**payload, **extra})
    for field in draw(st.sets(st.sampled_from(["event_id", "type", "schema_version", "occurred_at", "producer"]),
                              max_size=2)):
        envelope[field] = draw(_weird_value)
    return _dump(envelope)


def _draw(strategy: st.SearchStrategy[T], count: int, at_seed: int) -> list[T]:
    """`count` examples of `strategy`, reproducibly (hypothesis as a generator, outside any test)."""
    drawn: list[T] = []

    @seed(at_seed)
    @settings(max_examples=count, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(example: T) -> None:
        drawn.append(example)

    collect()
    return drawn[:count]


def generated_cases(per_topic: int, at_seed: int = 20260112) -> list[PoisonCase]:
    """`per_topic` mutated envelopes and `per_topic // 2` raw byte strings for each consumed topic."""
    cases: list[PoisonCase] = []
    for n, topic in enumerate(_TEMPLATES):
        short = topic.split(".")[0]
        keys = _draw(st.one_of(st.just(POISON_SUB), st.text(max_size=40)), per_topic, at_seed + n)
        for i, value in enumerate(_draw(mutated_envelopes(topic), per_topic, at_seed + n)):
            cases.append(PoisonCase(f"{short}: generated envelope #{i}", topic,
                                    keys[i % len(keys)].encode(errors="surrogatepass"), value, Expect.HANDLED))
        for i, raw in enumerate(_draw(st.binary(max_size=2000), per_topic // 2, at_seed + 100 + n)):
            cases.append(PoisonCase(f"{short}: generated bytes #{i}", topic, POISON_SUB.encode(), raw,
                                    Expect.HANDLED))
    return cases


def corpus(generated_per_topic: int) -> list[PoisonCase]:
    return [*named_cases(), *generated_cases(generated_per_topic)]


def by_topic(cases: list[PoisonCase]) -> dict[str, list[PoisonCase]]:
    out: dict[str, list[PoisonCase]] = {}
    for case in cases:
        out.setdefault(case.topic, []).append(case)
    return out

