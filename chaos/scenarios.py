"""The faults, one function each: inject, wait for quiescence, audit, and return one row of the table.

Every scenario ends with the same questions (`Checks`): was anything acknowledged lost, counted twice,
invoiced twice or charged twice; did every service come back within 30 s of the fault ending; is every
service process still alive. A scenario never repairs what it finds: a dead service is started again
only so that the scenarios after it can run, and the row says it died.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from chaos.audit import AuditFigures, audit, stored_transactions
from chaos.corpus import Expect, PoisonCase, by_topic, corpus
from chaos.kafka_tools import Produced, dlq_counts, produce_raw, read_dead_letters
from chaos.load import (
    QUIET_DURING_OUTAGES,
    Acknowledged,
    Customer,
    LoadThread,
    http_usage_step,
    kafka_usage_step,
    mixed_commands_step,
)
from chaos.pipeline import ADMIN_KEY, CLOCK_START, Pipeline, wait_for
from shared.adapters.kafka.producer import KafkaProducer, OutgoingMessage
from shared.contracts import topics
from shared.contracts.envelope import new_envelope
from shared.contracts.messages import CreateSubscription
from shared.sdk.envelopes import usage_message
from shared.sdk.events import UsageEvent

RECOVERY_LIMIT_S = 30.0
UNSETTLED_ATTEMPTS = "SELECT count(*) FROM payment_attempts WHERE status IN ('pending', 'in_flight', 'unknown')"
OUTAGE_S = 60.0


class Component(Protocol):
    """A stack component that can be stopped and started (deploy/stack.py's Kafka and Postgres)."""

    def up(self) -> None: ...

    def down(self) -> None: ...


@dataclass
class ScenarioResult:
    name: str
    figures: AuditFigures | None = None
    dead_lettered: dict[str, int] = field(default_factory=dict)
    recovery_s: dict[str, float | None] = field(default_factory=dict)
    server_errors: dict[str, int] = field(default_factory=dict)
    answers: dict[str, int] = field(default_factory=dict)  # every HTTP status (and client-side failure) seen
    slowest_answer_s: dict[str, float] = field(default_factory=dict)
    answers_by_route: dict[str, int] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    skipped: bool = False

    @property
    def passed(self) -> bool:
        return all(self.checks.values())

    def failed_checks(self) -> list[str]:
        return [name for name, ok in self.checks.items() if not ok]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "skipped": self.skipped, "checks": self.checks,
                "notes": self.notes, "figures": self.figures.as_dict() if self.figures else None,
                "dead_lettered": self.dead_lettered,
                "recovery_s": self.recovery_s, "server_errors": self.server_errors, "answers": self.answers,
                "slowest_answer_s": self.slowest_answer_s, "answers_by_route": self.answers_by_route,
                "wall_s": round(self.wall_s, 1)}


@dataclass
class World:
    """What the scenarios share: the pipeline, the onboarded customers and everything acknowledged."""

    pipeline: Pipeline
    customers: list[Customer]
    ledger: Acknowledged
    rng: random.Random = field(default_factory=lambda: random.Random(12))

    @property
    def users(self) -> list[Customer]:
        return [c for c in self.customers if c.kind == "user"]


# ------------------------------------------------------------------------------------------ common steps


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in after}


def settle(world: World, result: ScenarioResult, timeout: float = 240.0) -> None:
    """Wait until every service caught up, then audit; a pipeline that never goes quiet is a failed check."""
    try:
        world.pipeline.quiescence().wait(timeout=timeout)
        result.checks["pipeline quiet again (every message consumed)"] = True
    except TimeoutError as exc:
        result.checks["pipeline quiet again (every message consumed)"] = False
        result.notes.append(str(exc))
    result.figures = audit(world.pipeline.engine, world.ledger)
    _money_checks(result)
    _liveness_check(world, result)


def _money_checks(result: ScenarioResult) -> None:
    f = result.figures
    assert f is not None
    result.checks["0 acknowledged usage lost"] = not f.lost_usage
    result.checks["0 usage double-counted"] = f.double_counted == 0
    result.checks["0 duplicate invoices"] = f.duplicate_invoices == 0
    result.checks["<= 1 successful charge per invoice"] = f.max_successful_charges_per_invoice <= 1
    result.checks["0 acknowledged commands or quota decisions lost"] = not any(f.lost_commands.values())
    result.checks["demo audit invariants hold"] = not f.failed_invariants
    if f.lost_usage:
        result.notes.append(f"{len(f.lost_usage)} acknowledged usage events not stored, e.g. {f.lost_usage[:3]}")
    if f.failed_invariants:
        result.notes.append(f"invariants violated: {f.failed_invariants}")
    if any(f.lost_commands.values()):
        result.notes.append(f"acknowledged but not applied: {f.lost_commands}")


def _liveness_check(world: World, result: ScenarioResult) -> None:
    alive = world.pipeline.alive()
    result.checks["every service process alive"] = all(alive.values())
    for name, ok in alive.items():
        if not ok:
            result.notes.append(f"{name} died; see {world.pipeline.services[name].log_path} (started again)")
            world.pipeline.start_again(name)


@contextmanager
def load(world: World, *steps: tuple[str, Callable[[], None], float]) -> Iterator[None]:
    threads = [LoadThread(name, step, pause) for name, step, pause in steps]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        for t in threads:
            t.stop()


def ingest_load(world: World, now: datetime) -> list[tuple[str, Callable[[], None], float]]:
    p = world.pipeline
    return [("http-usage", http_usage_step(p.base_url, ADMIN_KEY, world.ledger, world.users, now, seed=1), 0.05),
            ("http-usage-2", http_usage_step(p.base_url, ADMIN_KEY, world.ledger, world.users, now, seed=4), 0.05),
            ("sdk-usage", kafka_usage_step(p.settings, world.ledger, world.users, now), 0.1)]


# ------------------------------------------------------------------------------------------ recovery


def _probe_usage(world: World, now: datetime) -> str:
    """A valid usage event straight to Kafka; the worker storing it shows it consumes and commits again.
    Produced in the background: Kafka may still be coming back."""
    c = world.users[0]
    event = UsageEvent(transaction_id=f"chaos-probe-{uuid.uuid4().hex}", customer_id=c.customer_id,
                       event_type="inference", timestamp=now - timedelta(seconds=5),
                       properties={"cost_usd_micros": 1})
    producer = KafkaProducer(world.pipeline.settings, client_id="chaos-probe", **QUIET_DURING_OUTAGES,
                             **{"message.timeout.ms": 60000})
    producer.send_and_wait([usage_message(event, customer_id=c.customer_id, subscription_id=c.subscription_id,
                                          received_at=now, producer="chaos-probe")], timeout=90)
    producer.close()
    with world.ledger.lock:
        world.ledger.usage[event.transaction_id] = (c.customer_id, c.subscription_id, 1)
    return event.transaction_id


def _probe_dunning(world: World, now: datetime) -> None:
    """An `invoice.paid` for an invoice dunning never saw: it claims the event in its inbox (PostgreSQL)
    and commits the offset, which shows its consumer and its database path both work again."""
    payload = {"invoice_id": f"inv_probe_{uuid.uuid4().hex[:8]}", "subscription_id": "sub_probe",
               "customer_id": "cus_probe", "status": "paid", "total_minor": 0, "currency": "USD"}
    producer = KafkaProducer(world.pipeline.settings, client_id="chaos-probe", **QUIET_DURING_OUTAGES,
                             **{"message.timeout.ms": 60000})
    producer.send_and_wait([OutgoingMessage.of(topics.BILLING_EVENTS, "sub_probe", new_envelope(
        "invoice.paid", payload, producer="chaos-probe", occurred_at=now))], timeout=90)
    producer.close()


def measure_recovery(world: World, now: datetime, timeout: float = 120.0) -> dict[str, float | None]:
    """Seconds from the end of an outage until: the edge is ready, the worker stored a new event, and
    dunning consumed a new billing event (None: not within `timeout`)."""
    p = world.pipeline
    started = time.monotonic()
    edge = wait_for(p.edge_ready, timeout)
    worker: float | None = None
    dunning: float | None = None
    try:
        tx = _probe_usage(world, now)
        left = max(1.0, timeout - (time.monotonic() - started))
        if wait_for(lambda: bool(_stored(world, tx)), left) is not None:
            worker = time.monotonic() - started
        _probe_dunning(world, now)
        left = max(1.0, timeout - (time.monotonic() - started))
        if wait_for(lambda: _dunning_caught_up(p), left) is not None:
            dunning = time.monotonic() - started
    except Exception as exc:  # a probe that cannot even be produced: Kafka never came back
        world.ledger.answer(f"probe_failed:{type(exc).__name__}")
    return {"edge": edge, "worker": worker, "dunning": dunning}


def _dunning_caught_up(pipeline: Pipeline) -> bool:
    return pipeline.services["dunning"].alive() and pipeline.quiescence().pending()["dunning"] == 0


def _stored(world: World, transaction_id: str) -> set[str]:
    with world.pipeline.engine.connect() as conn:
        return stored_transactions(conn, [transaction_id])


def _recovery_check(result: ScenarioResult) -> None:
    slow = {k: v for k, v in result.recovery_s.items() if v is None or v > RECOVERY_LIMIT_S}
    result.checks[f"every service healthy within {RECOVERY_LIMIT_S:.0f} s of the outage ending"] = not slow
    if slow:
        result.notes.append(f"not recovered within {RECOVERY_LIMIT_S:.0f} s: {slow}")


def _server_error_check(world: World, result: ScenarioResult, answers_before: dict[str, int]) -> None:
    result.answers = {k: v for k, v in _delta(dict(world.ledger.answers), answers_before).items() if v}
    with world.ledger.lock:
        result.slowest_answer_s = {k: round(v, 2) for k, v in world.ledger.slowest_answer_s.items()}
        result.answers_by_route = dict(world.ledger.answers_by_route)
    result.server_errors = {k: v for k, v in result.answers.items() if k.isdigit() and int(k) >= 500}
    others = {k: v for k, v in result.server_errors.items() if k != "503"}
    result.checks["no 5xx other than 503 (unavailable, retry)"] = not others


# ------------------------------------------------------------------------------------------ scenarios


def poison_corpus(world: World, generated_per_topic: int, settle_timeout: float = 180.0) -> ScenarioResult:
    """Every case of the corpus produced straight to its topic; afterwards a valid event must still be
    stored, every REFUSED case must be in its topic's DLQ, and the worker and dunning must be alive."""
    result = ScenarioResult("poison corpus")
    started = time.monotonic()
    p = world.pipeline
    dlq_before = dlq_counts(p.settings)
    cases = corpus(generated_per_topic)
    produced = produce_raw(p.settings, cases)
    result.notes.append(f"{len(cases)} poison messages produced: "
                        + ", ".join(f"{t} {len(c)}" for t, c in by_topic(cases).items()))
    after = _probe_usage(world, p.clock_now())
    settle(world, result, timeout=settle_timeout)
    result.checks["a valid event after the corpus is stored"] = bool(_stored(world, after))
    result.dead_lettered = _delta(dlq_counts(p.settings), dlq_before)
    _refused_cases_check(world, result, produced)
    result.wall_s = time.monotonic() - started
    return result


def _refused_cases_check(world: World, result: ScenarioResult, produced: list[Produced]) -> None:
    """Dead letters are matched to cases by the original partition and offset their headers carry (the
    value alone cannot tell: a null value is dead-lettered as empty bytes, a huge one is cut)."""
    p = world.pipeline
    not_dead_lettered = []
    for topic in {item.case.topic for item in produced}:
        origins = {letter.origin for letter in read_dead_letters(p.settings, topic)}
        not_dead_lettered += [item.case.name for item in produced if item.case.topic == topic
                              and item.case.expect is Expect.REFUSED and (item.partition, item.offset) not in origins]
    refused_usage = [item.case for item in produced
                     if item.case.expect is Expect.REFUSED and item.case.topic == topics.USAGE]
    stored = _refused_usage_stored(world, refused_usage)
    result.checks["every case that must be refused is dead-lettered"] = not not_dead_lettered
    result.checks["no refused usage case stored"] = not stored
    if not_dead_lettered:
        result.notes.append(f"not dead-lettered ({len(not_dead_lettered)}): {sorted(not_dead_lettered)}")
    if stored:
        result.notes.append(f"stored although invalid ({len(stored)}): {stored}")


def _refused_usage_stored(world: World, cases: list[PoisonCase]) -> list[str]:
    by_tx = {case.transaction_id: case.name for case in cases if case.transaction_id}
    with world.pipeline.engine.connect() as conn:
        return sorted(by_tx[tx] for tx in stored_transactions(conn, list(by_tx)) if tx in by_tx)


def kill_worker_during_billing_run(world: World, subscriptions: int, kills: int,
                                   settle_timeout: float = 300.0) -> ScenarioResult:
    """Subscriptions and usage straight to Kafka, the clock moved past the period end, and the worker
    killed with SIGKILL `kills` times while the period closes and charges are under way."""
    result = ScenarioResult(f"kill -9 worker x{kills} during a billing run")
    started = time.monotonic()
    p = world.pipeline
    run = uuid.uuid4().hex[:6]
    bulk = _produce_subscriptions_with_usage(world, run, subscriptions)
    p.quiescence().wait(timeout=settle_timeout)
    total = subscriptions + len(world.customers)
    p.advance_clock(days=31)
    closes = "SELECT count(*) FROM invoices WHERE kind = 'period_close'"
    landed_mid_run: list[bool] = []
    for n in range(kills):
        target = total * (n + 1) // (kills + 2)

        def reached(t: int = target) -> bool:
            return p.scalar(closes) >= t

        wait_for(reached, 120, interval=0.05)
        at_kill, charging = p.scalar(closes), p.scalar(UNSETTLED_ATTEMPTS)
        p.kill_worker()
        landed_mid_run.append(at_kill < total or charging > 0)
        result.notes.append(f"kill {n + 1}: {at_kill}/{total} period closes done, {charging} charges unsettled")
        p.start_again("worker")
    result.checks["every kill landed while the run was under way (closes or charges pending)"] = all(landed_mid_run)
    settle(world, result, timeout=settle_timeout)
    # NOTE: a subscription dunning gave up on (its first charge declined on Jan 1, given up on day 14) is
    # cancelled before its period closes, so it rightly has no January period-close invoice.
    ours = {"bulk": f"sub_chaos_{run}_%", "ours": [c.subscription_id for c in world.customers], "jan": CLOCK_START}
    mine = "(s.subscription_id LIKE :bulk OR s.subscription_id = ANY(:ours))"
    missing = p.scalar(
        f"SELECT count(*) FROM subscriptions s WHERE {mine} AND s.status <> 'cancelled' "
        "AND NOT EXISTS (SELECT 1 FROM invoices i WHERE i.subscription_id = s.subscription_id "
        "AND i.kind = 'period_close' AND i.period_start = :jan)", **ours)
    cancelled = p.scalar(f"SELECT count(*) FROM subscriptions s WHERE {mine} AND s.status = 'cancelled'", **ours)
    # Their first charge declined on Jan 1, so dunning's give-up was due on day 14, before the period end:
    # the give-up must take effect first and the period must not be billed (issue 12, defect 8).
    billed_after_give_up = p.scalar(
        f"SELECT count(*) FROM subscriptions s WHERE {mine} AND EXISTS (SELECT 1 FROM invoices f "
        "WHERE f.subscription_id = s.subscription_id AND f.kind = 'subscription_start' "
        "AND f.status = 'uncollectible') AND EXISTS (SELECT 1 FROM invoices i "
        "WHERE i.subscription_id = s.subscription_id AND i.kind = 'period_close')", **ours)
    result.checks["every subscription not cancelled has its January invoice"] = missing == 0
    result.checks["no period billed after dunning's earlier give-up (due events act in order)"] = (
        billed_after_give_up == 0)
    if billed_after_give_up:
        result.notes.append(f"{billed_after_give_up} subscriptions billed for a period after their give-up was due")
    result.notes.append(f"{cancelled} subscriptions cancelled before the close (dunning gave up)")
    if missing:
        result.notes.append(f"{missing} live subscriptions without a January period-close invoice")
    result.notes.append(f"{len(bulk)} subscriptions created straight on commands.v1, {len(world.customers)} over HTTP")
    result.wall_s = time.monotonic() - started
    return result


def _produce_subscriptions_with_usage(world: World, run: str, count: int) -> list[str]:
    """`subscription.create` for `count` subscriptions (good cards; some answers lost after the provider
    charged, to exercise the lookup path) and 1-3 usage events each, acknowledged by Kafka."""
    producer = KafkaProducer(world.pipeline.settings, client_id="chaos-billing-run")
    messages, subs = [], []
    methods = ["pm_card_visa"] * 9 + ["pm_sim_timeout_after_success"]
    now = world.pipeline.clock_now()
    for i in range(count):
        sub, cus = f"sub_chaos_{run}_{i:05d}", f"cus_chaos_{run}_{i:05d}"
        subs.append(sub)
        create = CreateSubscription(subscription_id=sub, customer_id=cus, plan_id="pro", currency="USD",
                                    payment_method_id=methods[i % len(methods)], start_at=CLOCK_START)
        messages.append(OutgoingMessage.of(topics.COMMANDS, sub, new_envelope(
            "subscription.create", create.model_dump(mode="json"), producer="chaos", occurred_at=CLOCK_START)))
        for k in range(world.rng.randint(1, 3)):
            event = UsageEvent(transaction_id=f"chaos-run-{sub}-{k}", customer_id=cus, event_type="inference",
                               timestamp=now - timedelta(minutes=k + 1),
                               properties={"cost_usd_micros": world.rng.randint(1000, 3_000_000)})
            messages.append(usage_message(event, customer_id=cus, subscription_id=sub, received_at=now,
                                          producer="chaos-billing-run"))
            world.ledger.usage[event.transaction_id] = (cus, sub, int(event.properties["cost_usd_micros"]))
    producer.send_and_wait(messages, timeout=120)
    producer.close()
    return subs


def outage(world: World, name: str, component: Component, *,
           extra_load: Callable[[datetime], list[tuple[str, Callable[[], None], float]]] | None = None,
           before_outage: Callable[[], None] | None = None, outage_s: float = OUTAGE_S) -> ScenarioResult:
    """`component` stopped for `outage_s` under load; recovery measured from the moment it is back."""
    result = ScenarioResult(name)
    started = time.monotonic()
    p = world.pipeline
    if before_outage is not None:
        before_outage()
    now = p.clock_now()
    with world.ledger.lock:
        answers_before = dict(world.ledger.answers)
        world.ledger.slowest_answer_s.clear()
        world.ledger.answers_by_route.clear()
    dlq_before = dlq_counts(p.settings)
    steps = ingest_load(world, now) + (extra_load(now) if extra_load else [])
    with load(world, *steps):
        time.sleep(8)
        p.forget_observer()  # its Kafka clients would log every failed reconnect for the whole outage
        component.down()
        time.sleep(outage_s)
        component.up()
        result.recovery_s = measure_recovery(world, now)
        time.sleep(5)
    _recovery_check(result)
    _server_error_check(world, result, answers_before)
    settle(world, result, timeout=300)
    result.dead_lettered = _delta(dlq_counts(p.settings), dlq_before)
    result.wall_s = time.monotonic() - started
    return result


def kafka_outage(world: World, kafka: Component, outage_s: float = OUTAGE_S) -> ScenarioResult:
    return outage(world, f"Kafka stopped {outage_s:.0f} s under ingest load", kafka, outage_s=outage_s)


def postgres_outage(world: World, postgres: Component, outage_s: float = OUTAGE_S) -> ScenarioResult:
    """Usage, subscribes, cancels and report credits while PostgreSQL is down; the clock was moved past a
    period end just before, so closes and charges (payments) are in flight when it stops."""
    p = world.pipeline

    def mixed(now: datetime) -> list[tuple[str, Callable[[], None], float]]:
        return [("mixed-commands", mixed_commands_step(p.base_url, ADMIN_KEY, world.ledger, world.customers), 0.1)]

    def billing_run() -> None:
        p.quiescence().wait(timeout=240)
        p.advance_clock(days=28)

    return outage(world, f"PostgreSQL stopped {outage_s:.0f} s under mixed load", postgres, extra_load=mixed,
                  before_outage=billing_run, outage_s=outage_s)
