"""Composition root of the ingest edge: settings, engine, Kafka producer, Stripe client, clock, catalog.

Built once per process by `build_container`; nothing here runs at import time, and building connects to
nothing yet (the engine's pool connects lazily; the producers connect on first use).
Usage batches have a producer of their own (`shared.sdk.kafka.BatchProducer`: one librdkafka call and
one delivery tracker per batch); commands, webhooks and replays go through `KafkaProducer`.
"""

from __future__ import annotations

import stripe

from services.ingest.container import Container
from services.ingest.last_known import LastKnownDatabaseClock
from shared.adapters.catalog_file import load_catalog
from shared.adapters.kafka.producer import KafkaProducer
from shared.bootstrap import build_clock, build_engine
from shared.config import Settings
from shared.sdk.kafka import BatchProducer

PRODUCER_NAME = "ingest"


def build_stripe_client(settings: Settings) -> stripe.StripeClient:
    return stripe.StripeClient(settings.stripe_api_key.get_secret_value(),
                               base_addresses={"api": settings.stripe_api_base}, max_network_retries=2)


def build_container(settings: Settings | None = None) -> Container:
    settings = settings or Settings()
    engine = build_engine(settings)
    # NOTE: the edge's simulated clock serves its last reading through a PostgreSQL outage (usage ingest
    # keeps answering); the other services read the row each time.
    clock = build_clock(settings, engine, simulated=LastKnownDatabaseClock)
    catalog = load_catalog(sorted(settings.catalog_dir.glob("*.yaml")))
    producer = KafkaProducer(settings, client_id=PRODUCER_NAME)
    usage_producer = BatchProducer(settings.kafka_producer_config(**{"client.id": f"{PRODUCER_NAME}-usage"}))
    return Container(settings=settings, engine=engine, producer=producer, usage_producer=usage_producer,
                     stripe=build_stripe_client(settings), clock=clock, catalog=catalog)
