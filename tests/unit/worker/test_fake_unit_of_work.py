"""The unit of work contract (unit_of_work_contract.py) on the fake the handler unit tests use."""

from __future__ import annotations

from datetime import datetime

import pytest

from services.billing_worker.service_layer.unit_of_work import BillingUnitOfWork
from shared.adapters.catalog_file import load_default_catalog
from tests.unit.worker.fakes import FakeBillingStore, FakeUnitOfWork
from tests.unit.worker.unit_of_work_contract import UnitOfWorkContract

CATALOG = load_default_catalog()


class TestFakeUnitOfWork(UnitOfWorkContract):
    @pytest.fixture(autouse=True)
    def _store(self) -> None:
        self.store = FakeBillingStore()

    def new_uow(self) -> BillingUnitOfWork:
        return FakeUnitOfWork(CATALOG, self.store)

    def record_usage(self, subscription_id: str, customer_id: str, cost_usd_micros: int, at: datetime) -> None:
        self.store.record_usage(subscription_id, "inference", cost_usd_micros, at)
