"""Composition root of the webhooks service: settings -> engine, clock, consumer, sender, dispatcher.

Built once per process; nothing connects at import. The clock is the billing clock (`shared.bootstrap.
build_clock`): delivery schedules are billing-clock instants, so a simulated clock advanced through the edge
moves the retry schedule with it; signatures carry the wall clock (receivers check it against theirs).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import sqlalchemy as sa
from confluent_kafka import Consumer

from services.webhooks.adapters.sender import SignedHttpSender
from services.webhooks.adapters.sql_store import sql_delivery_store
from services.webhooks.entrypoints.dispatcher import Dispatcher, lease_for
from services.webhooks.entrypoints.fan_out_consumer import FanOutConsumer
from shared.adapters.kafka.dlq import DeadLetterPublisher
from shared.adapters.kafka.producer import KafkaProducer
from shared.adapters.webhooks.sender import HttpSender
from shared.bootstrap import build_clock, build_engine
from shared.config import Settings
from shared.contracts import topics
from shared.domain.clock import Clock

CONSUMER_GROUP = "webhooks-fan-out"
HTTP_TIMEOUT_SECONDS = 10.0
CONCURRENCY = 8
BATCH_SIZE = 100
PER_ENDPOINT = 25


@dataclass
class WebhooksService:
    engine: sa.Engine
    clock: Clock
    fan_out: FanOutConsumer
    dispatcher: Dispatcher
    sender: SignedHttpSender
    dead_letters: DeadLetterPublisher
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self, stop: threading.Event) -> None:
        """Run the fan-out consumer and the dispatcher on their own threads until `stop` is set."""
        for name, target in (("webhooks-fan-out", self.fan_out.run), ("webhooks-dispatch", self.dispatcher.run)):
            thread = threading.Thread(target=target, args=(stop,), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def join(self, timeout: float = 30.0) -> None:
        for thread in self._threads:
            thread.join(timeout)
        self.sender.close()
        self.dead_letters.close()
        self.engine.dispose()


def build_webhooks(settings: Settings, *, clock: Clock | None = None, group_id: str | None = None,
                   http_timeout: float = HTTP_TIMEOUT_SECONDS, concurrency: int = CONCURRENCY,
                   dispatch_interval: float = 1.0) -> WebhooksService:
    engine = build_engine(settings, pool_size=concurrency + 2)
    clock = clock or build_clock(settings, engine, ensure=True)
    stores = sql_delivery_store(engine)
    consumer = Consumer(settings.kafka_consumer_config(settings.topic_prefix + (group_id or CONSUMER_GROUP)))
    dead_letters = DeadLetterPublisher(KafkaProducer(settings, client_id="webhooks-dlq"))
    fan_out = FanOutConsumer(consumer, settings.topic(topics.BILLING_EVENTS), stores, clock, dead_letters)
    sender = SignedHttpSender(HttpSender(http_timeout))
    dispatcher = Dispatcher(stores, sender, clock, concurrency=concurrency, batch_size=BATCH_SIZE,
                            per_endpoint=PER_ENDPOINT, interval=dispatch_interval,
                            lease_seconds=lease_for(http_timeout, BATCH_SIZE, concurrency))
    return WebhooksService(engine, clock, fan_out, dispatcher, sender, dead_letters)
