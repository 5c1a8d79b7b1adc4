"""The unit of work contract (tests/unit/worker/unit_of_work_contract.py) on PostgreSQL: the adapter the
worker runs, inside one transaction per test, rolled back at its end."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime

import pytest
import sqlalchemy as sa

from services.billing_worker.adapters.sql_unit_of_work import SqlBillingUnitOfWork
from services.billing_worker.adapters.usage import MeterMap, UsageMaterializer
from services.billing_worker.adapters.usage_close import close_usages
from services.billing_worker.service_layer.unit_of_work import BillingUnitOfWork
from shared.adapters.catalog_file import load_default_catalog
from tests.integration.worker.harness import usage_envelope
from tests.unit.worker.unit_of_work_contract import UnitOfWorkContract

pytestmark = pytest.mark.integration

CATALOG = load_default_catalog()
USAGE = UsageMaterializer(MeterMap.from_catalog(CATALOG))


class TestSqlUnitOfWork(UnitOfWorkContract):
    @pytest.fixture(autouse=True)
    def _transaction(self, engine: sa.Engine) -> Iterator[None]:
        with engine.connect() as conn:
            transaction = conn.begin()
            self.conn = conn
            try:
                yield
            finally:
                transaction.rollback()

    def new_uow(self) -> BillingUnitOfWork:
        return SqlBillingUnitOfWork(self.conn, CATALOG, close_usages)

    def record_usage(self, subscription_id: str, customer_id: str, cost_usd_micros: int, at: datetime) -> None:
        raw = usage_envelope(customer_id=customer_id, subscription_id=subscription_id,
                             transaction_id=f"tx-{uuid.uuid4().hex}", event_type="inference",
                             properties={"cost_usd_micros": cost_usd_micros}, timestamp=at)
        USAGE.apply(self.conn, [USAGE.decode(raw)])
