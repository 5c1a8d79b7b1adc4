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
from shared.adapters.postgres.catalog_store import CatalogProvider, base_plan_id, versioned_plan_id
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
    catalog: Catalog  # the YAML bootstrap (served until the catalog is stored in PostgreSQL)
    catalog_provider: CatalogProvider | None = None  # the stored catalog (catalog API, `billing catalog import`)

    def current_catalog(self, plan_id: str | None = None, conn: sa.Connection | None = None) -> Catalog:
        """The catalog now: the provider's snapshot (reloaded at once when it lacks ``plan_id``: a plan just
        created through the API), else the YAML one. A caller holding a connection passes it (``conn``):
        the check then takes no second one from the pool.

        # NOTE: the snapshot's revision is compared at most every few seconds (one primary-key read), so a
        # caller in the event loop blocks on PostgreSQL that rarely; a miss reloads at once.
        """
        if self.catalog_provider is None:
            return self.catalog
        catalog = self.catalog_provider.current(conn)
        if plan_id is not None and plan_id not in catalog.plans:
            catalog = self.catalog_provider.refresh(conn)
        return catalog

    def current_plan_id(self, plan_id: str) -> str:
        """The catalog id of the plan's current version (what a new subscription or a plan change gets):
        "pro@v2" once "pro" has a second version; an id naming a version is kept."""
        if self.catalog_provider is None or base_plan_id(plan_id)[1] != 1:
            return plan_id
        return versioned_plan_id(plan_id, self.catalog_provider.versions.get(plan_id, 1))

    def archived(self, kind: str, entry_id: str) -> bool:
        """Is this stored plan, coupon or meter archived (no new subscription may take it)?"""
        return self.catalog_provider is not None and (kind, entry_id) in self.catalog_provider.archived


def get_container(request: Request) -> Container:
    container: Container = request.app.state.container
    return container
