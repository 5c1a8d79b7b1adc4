"""The dunning scenarios on the in-memory store (no I/O); see scenarios.py."""

from __future__ import annotations

import uuid

import pytest

from services.dunning.handlers import DunningHandlers
from shared.adapters.clock import ManualClock
from shared.contracts.envelope import Envelope
from shared.domain.dunning import DunningPolicy
from tests.unit.dunning.memory_store import InMemoryDunningStore
from tests.unit.dunning.scenarios import CUSTOMER_EMAIL, FIRST_FAILURE, DunningScenarios, World, unique_ids

pytestmark = pytest.mark.unit


class InMemoryProbe:
    def __init__(self, store: InMemoryDunningStore) -> None:
        self._store = store

    def commands(self) -> list[Envelope]:
        return [command.envelope for command in self._store.state.commands]

    def notices(self) -> list[tuple[str, str, str | None]]:
        return [(n.action_key, n.kind, n.recipient) for n in self._store.state.notices]

    def case_status(self, invoice_id: str) -> str | None:
        found = [r for r in self._store.state.cases.values() if r.case.invoice_id == invoice_id]
        return found[0].case.status.value if found else None

    def set_unsettled_attempt(self, invoice_id: str, unsettled: bool) -> None:
        self._store.unsettled_attempts[invoice_id] = int(unsettled)


class TestDunningScenariosInMemory(DunningScenarios):
    @pytest.fixture
    def world(self) -> World:
        subscription_id, customer_id, invoice_id = unique_ids()
        store = InMemoryDunningStore({customer_id: CUSTOMER_EMAIL})
        clock = ManualClock(FIRST_FAILURE)
        return World(lambda: DunningHandlers(store, clock, policy=DunningPolicy(), channel="log"), clock,
                     InMemoryProbe(store), subscription_id, customer_id, invoice_id)


def test_a_transaction_that_fails_leaves_the_in_memory_store_unchanged() -> None:
    store = InMemoryDunningStore()
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.claim_event(uuid.uuid4(), "x", None)
        raise RuntimeError("boom")
    assert store.state.inbox == set()
