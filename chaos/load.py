"""Load generators that remember what the system acknowledged, so the audit can ask "was it kept?".

Each generator runs in a thread until told to stop and keeps going through an outage: a refusal (503),
a transport error or a Kafka timeout is counted, never retried with new content, so whatever was
acknowledged is exactly what a correct pipeline must have stored.
"""

from __future__ import annotations

import random
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx

from shared.adapters.kafka.producer import KafkaProducer
from shared.config import Settings
from shared.sdk.envelopes import usage_message
from shared.sdk.events import UsageEvent

# librdkafka logs every failed reconnect (every 50-100 ms) to stderr; an outage is expected here.
QUIET_DURING_OUTAGES = {"log_level": 2}
GOOD_CARD = "pm_card_visa"
DECLINING_CARD = "pm_card_chargeDeclinedInsufficientFunds"


@dataclass(frozen=True)
class Customer:
    customer_id: str
    subscription_id: str
    kind: str  # "user" (usage tier) or "org" (report quota)


@dataclass
class Acknowledged:
    """Everything the system said it took, per kind, and every HTTP answer it gave."""

    usage: dict[str, tuple[str, str, int]] = field(default_factory=dict)  # txid -> (customer, subscription, micros)
    subscriptions: set[str] = field(default_factory=set)
    cancels: set[str] = field(default_factory=set)
    enquiries: set[tuple[str, str]] = field(default_factory=set)  # (org, enquiry id) admitted
    answers: Counter[str] = field(default_factory=Counter)
    answers_by_route: Counter[str] = field(default_factory=Counter)  # "POST /v1/ingest 503"
    slowest_answer_s: dict[str, float] = field(default_factory=dict)  # per status: how long a client waited
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, status: int | str, waited_s: float = 0.0, route: str = "") -> None:
        with self.lock:
            self.answers[str(status)] += 1
            if route:
                self.answers_by_route[f"{route} {status}"] += 1
            self.slowest_answer_s[str(status)] = max(waited_s, self.slowest_answer_s.get(str(status), 0.0))



# Ids in paths (cus_<hex>, sub_<hex>, an org's customer id) are one route for the counts.
_ID_SEGMENT = re.compile(r"/[a-z]+_[0-9a-zA-Z]{6,}")


def _client(base_url: str, admin_key: str) -> httpx.Client:
    # Longer than the edge's own waits on Kafka and PostgreSQL, so what the edge answers during an outage
    # is seen instead of a client-side timeout.
    return httpx.Client(base_url=base_url, timeout=45, headers={"Authorization": f"Bearer {admin_key}"})


def _call(http: httpx.Client, ledger: Acknowledged, method: str, path: str, body: Any,
          idempotency_key: str | None = None) -> httpx.Response | None:
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    route = f"{method} {_ID_SEGMENT.sub('/{id}', path)}"
    started = time.monotonic()
    try:
        resp = http.request(method, path, json=body, headers=headers)
    except httpx.TransportError:
        ledger.answer("transport_error", time.monotonic() - started, route)
        return None
    ledger.answer(resp.status_code, time.monotonic() - started, route)
    return resp


# ------------------------------------------------------------------------------------------ onboarding


def onboard(base_url: str, admin_key: str, ledger: Acknowledged, users: int, orgs: int,
            declining_every: int = 8) -> list[Customer]:
    """Usage-tier users on `pro` (every `declining_every`-th with a card that declines, so dunning has
    work) and report-plan orgs on `reports_ultimate`, all over HTTP."""
    run = uuid.uuid4().hex[:6]

    def one(i: int) -> Customer | None:
        kind = "user" if i < users else "org"
        card = DECLINING_CARD if kind == "user" and i % declining_every == declining_every - 1 else GOOD_CARD
        with _client(base_url, admin_key) as http:
            return _subscribe(http, ledger, f"chaos-{run}-{i}", kind, card)

    with ThreadPoolExecutor(8) as pool:
        made = [c for c in pool.map(one, range(users + orgs)) if c is not None]
    with _client(base_url, admin_key) as http:
        for org in (c for c in made if c.kind == "org"):
            _call(http, ledger, "PUT", f"/v1/quota/orgs/{org.customer_id}/plan",
                  {"plan": "reports_ultimate", "subscription_id": None})
    return made


def _subscribe(http: httpx.Client, ledger: Acknowledged, external_id: str, kind: str,
               card: str = GOOD_CARD) -> Customer | None:
    body = {"external_id": external_id, "kind": kind, "name": f"Chaos {external_id}",
            "email": f"{external_id}@example.com", "currency": "USD", "timezone": "UTC", "tax_rate_bps": 0,
            "members": [{"user_id": f"{external_id}-u{m}"} for m in range(3 if kind == "org" else 0)],
            "payment_method_id": card}
    resp = _call(http, ledger, "POST", "/v1/customers", body, str(uuid.uuid4()))
    if resp is None or resp.status_code not in (200, 201):
        return None
    customer_id = resp.json()["customer_id"]
    plan = "pro" if kind == "user" else "reports_basic"
    resp = _call(http, ledger, "POST", "/v1/subscriptions",
                 {"customer_id": customer_id, "plan_id": plan, "payment_method_id": card}, str(uuid.uuid4()))
    if resp is None or resp.status_code not in (200, 201, 202):
        return None
    subscription_id = resp.json()["subscription_id"]
    with ledger.lock:
        ledger.subscriptions.add(subscription_id)
    return Customer(customer_id, subscription_id, kind)


# ------------------------------------------------------------------------------------------ load threads


class LoadThread(threading.Thread):
    """Runs `step` until stopped; `pause_s` between steps keeps the 2-core box usable for the services."""

    def __init__(self, name: str, step: Callable[[], None], pause_s: float) -> None:
        super().__init__(name=name, daemon=True)
        self._step = step
        self._pause_s = pause_s
        self._stopping = threading.Event()  # not `_stop`: threading.Thread has a method of that name

    def run(self) -> None:
        while not self._stopping.is_set():
            self._step()
            self._stopping.wait(self._pause_s)

    def stop(self) -> None:
        self._stopping.set()
        self.join(60)


def _usage_events(rng: random.Random, users: list[Customer], now: datetime, count: int, tag: str
                  ) -> list[tuple[Customer, UsageEvent]]:
    out = []
    for _ in range(count):
        c = rng.choice(users)
        out.append((c, UsageEvent(transaction_id=f"chaos-{tag}-{uuid.uuid4().hex}", customer_id=c.customer_id,
                                  event_type="inference", timestamp=now - timedelta(seconds=rng.randrange(1, 1800)),
                                  properties={"cost_usd_micros": rng.randint(1, 50_000)})))
    return out


def http_usage_step(base_url: str, admin_key: str, ledger: Acknowledged, users: list[Customer], now: datetime,
                    batch: int = 20, seed: int = 1) -> Callable[[], None]:
    """POST /v1/ingest batches; an event counts as acknowledged when its result says `accepted`."""
    rng = random.Random(seed)
    http = _client(base_url, admin_key)

    def step() -> None:
        events = _usage_events(rng, users, now, batch, "http")
        body = [e.model_dump(mode="json") for _, e in events]
        resp = _call(http, ledger, "POST", "/v1/ingest", body)
        if resp is None or resp.status_code != 200:
            return
        for result in resp.json()["results"]:
            if result["status"] == "accepted":
                c, e = events[result["index"]]
                with ledger.lock:
                    ledger.usage[e.transaction_id] = (c.customer_id, c.subscription_id,
                                                      int(e.properties["cost_usd_micros"]))

    return step


def kafka_usage_step(settings: Settings, ledger: Acknowledged, users: list[Customer], now: datetime,
                     batch: int = 20, seed: int = 2) -> Callable[[], None]:
    """Usage straight to Kafka as the SDK writes it; acknowledged when Kafka acknowledged (acks=all)."""
    rng = random.Random(seed)
    producer = KafkaProducer(settings, client_id="chaos-sdk", **QUIET_DURING_OUTAGES, **{"message.timeout.ms": 5000})

    def step() -> None:
        events = _usage_events(rng, users, now, batch, "sdk")
        messages = [usage_message(e, customer_id=c.customer_id, subscription_id=c.subscription_id,
                                  received_at=now, producer="chaos-sdk") for c, e in events]
        try:
            producer.send_and_wait(messages, timeout=10)
        except Exception:  # the broker is down: nothing of this batch counts as acknowledged
            ledger.answer("kafka_not_acknowledged")
            return
        with ledger.lock:
            for c, e in events:
                ledger.usage[e.transaction_id] = (c.customer_id, c.subscription_id,
                                                  int(e.properties["cost_usd_micros"]))

    return step


def mixed_commands_step(base_url: str, admin_key: str, ledger: Acknowledged, customers: list[Customer],
                        seed: int = 3) -> Callable[[], None]:
    """Commands and quota decisions in turn: a new subscriber, a cancel at period end, a report credit."""
    rng = random.Random(seed)
    http = _client(base_url, admin_key)
    cancellable = [c for c in customers if c.kind == "user"][: max(1, len(customers) // 5)]
    orgs = [c for c in customers if c.kind == "org"]
    turn = [0]

    def step() -> None:
        turn[0] += 1
        kind = turn[0] % 3
        if kind == 0:
            _subscribe(http, ledger, f"chaos-mixed-{uuid.uuid4().hex[:10]}", "user")
        elif kind == 1 and cancellable:
            c = cancellable.pop()
            resp = _call(http, ledger, "POST", f"/v1/subscriptions/{c.subscription_id}/cancel",
                         {"at_period_end": True, "reason": "chaos"}, str(uuid.uuid4()))
            if resp is not None and resp.status_code in (200, 202):
                with ledger.lock:
                    ledger.cancels.add(c.subscription_id)
        elif orgs:
            org, enquiry = rng.choice(orgs), f"enq-{uuid.uuid4().hex}"
            resp = _call(http, ledger, "POST", f"/v1/quota/orgs/{org.customer_id}/report-credits",
                         {"user_id": "chaos-reporter", "enquiry_id": enquiry})
            if resp is not None and resp.status_code in (200, 201):
                with ledger.lock:
                    ledger.enquiries.add((org.customer_id, enquiry))

    return step
