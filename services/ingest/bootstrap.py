"""Composition root of the ingest edge: settings, engine, Kafka producer, Stripe client, clock, catalog
(`build_container`, once per process), and the services one app shares between its requests
(`build_edge_services`, once per app: authentication, idempotency keys, metrics, the customer directory, the
usage-tier spend service). `create_app` installs them on `app.state`; routes and middlewares only read them
there (a missing one is a wiring error, never something a request builds).

Nothing here runs at import time, and building connects to nothing yet (the engine's pool connects lazily;
the producers connect on first use). The clock, gateway, notifier and engine factories are the ones every
service shares (`shared.bootstrap`).
Usage batches have a producer of their own (`shared.sdk.kafka.BatchProducer`: one librdkafka call and
one delivery tracker per batch); commands, webhooks and replays go through `KafkaProducer`.
"""

from __future__ import annotations

from dataclasses import dataclass

import stripe

from services.ingest.auth import Authenticator
from services.ingest.console.session import SessionSigner
from services.ingest.container import Container
from services.ingest.directory import CustomerDirectory
from services.ingest.idempotency import IdempotencyStore
from services.ingest.last_known import LastKnownDatabaseClock
from services.ingest.metrics import EdgeMetrics
from services.ingest.problems import is_dependency_outage
from services.ingest.service_layer.spend import SpendService
from shared.adapters.catalog_file import load_catalog
from shared.adapters.kafka.producer import KafkaProducer
from shared.adapters.postgres.catalog_store import CatalogProvider
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
                     stripe=build_stripe_client(settings), clock=clock, catalog=catalog,
                     catalog_provider=CatalogProvider(engine, catalog))


@dataclass(frozen=True)
class EdgeServices:
    """What one app holds for all its requests (their caches are shared by every request of the app)."""

    authenticator: Authenticator  # API keys, cached; last known keys served through a PostgreSQL outage
    idempotency: IdempotencyStore
    metrics: EdgeMetrics
    directory: CustomerDirectory  # customer id or alias -> subscription, cached like the keys
    spend: SpendService  # usage tiers; its spend gate caches what it last read for every request
    console: SessionSigner  # the operator console's session cookies (one secret per process)


def build_edge_services(container: Container) -> EdgeServices:
    return EdgeServices(
        authenticator=Authenticator(container.engine, container.settings.admin_api_key.get_secret_value()),
        idempotency=IdempotencyStore(container.engine), metrics=EdgeMetrics(),
        directory=CustomerDirectory(container.engine),
        spend=SpendService(container.engine, container.clock, container.catalog, is_dependency_outage,
                           current_catalog=container.current_catalog),
        console=SessionSigner.from_setting(
            None if container.settings.console_secret is None else container.settings.console_secret.get_secret_value(),
            container.settings.console_session_seconds))
