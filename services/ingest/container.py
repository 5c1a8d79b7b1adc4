"""What the edge's routes depend on, built once by `bootstrap.build_container` and held by the app.

Routes obtain it with the `get_container` dependency (`container: Container = Depends(get_container)`),
never from module globals, so a test can build an app on its own schema, topics and clock.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
import stripe
from fastapi import Request

from shared.adapters.kafka.producer import KafkaProducer
from shared.config import Settings
from shared.domain.catalog import Catalog
from shared.domain.clock import Clock
from shared.sdk.kafka import BatchProducer


@dataclass(frozen=True)
class Container:
    settings: Settings
    engine: sa.Engine
    producer: KafkaProducer  # commands, webhooks, replays
    usage_producer: BatchProducer  # the hot path: POST /v1/ingest batches
    stripe: stripe.StripeClient
    clock: Clock
    catalog: Catalog


def get_container(request: Request) -> Container:
    container: Container = request.app.state.container
    return container
