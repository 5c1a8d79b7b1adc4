"""The dunning scenarios (tests/unit/dunning/scenarios.py) on the PostgreSQL store, so that the in-memory
store of the unit tests and the real adapter cannot drift."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from services.dunning.handlers import DunningHandlers
from services.dunning.reconciliation import PaymentAttemptReader
from services.dunning.repository import PostgresDunningStore
from shared.adapters.clock import ManualClock
from shared.adapters.postgres.schema.billing import INVOICE_KINDS, invoices, payment_attempts
from shared.adapters.postgres.schema.core import customers, outbox
from shared.adapters.postgres.schema.dunning import dunning_cases, dunning_notifications
from shared.contracts import topics
from shared.contracts.envelope import Envelope
from shared.domain.dunning import DunningPolicy
from tests.unit.dunning.scenarios import CUSTOMER_EMAIL, FIRST_FAILURE, DunningScenarios, World, unique_ids

pytestmark = pytest.mark.integration


class PostgresProbe:
    def __init__(self, engine: sa.Engine, subscription_id: str, customer_id: str) -> None:
        self._engine = engine
        self._subscription_id = subscription_id
        self._customer_id = customer_id

    def commands(self) -> list[Envelope]:
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(outbox.c.envelope).where(
                outbox.c.topic == topics.COMMANDS, outbox.c.message_key == self._subscription_id)
                .order_by(outbox.c.id)).scalars().all()
        return [Envelope.model_validate(row) for row in rows]

    def notices(self) -> list[tuple[str, str, str | None]]:
        n = dunning_notifications
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(n.c.action_key, n.c.kind, n.c.recipient)
                                .where(n.c.subscription_id == self._subscription_id).order_by(n.c.seq)).all()
        return [tuple(row) for row in rows]

    def case_status(self, invoice_id: str) -> str | None:
        with self._engine.connect() as conn:
            status: str | None = conn.execute(sa.select(dunning_cases.c.status)
                                              .where(dunning_cases.c.invoice_id == invoice_id)).scalar_one_or_none()
        return status

    def set_unsettled_attempt(self, invoice_id: str, unsettled: bool) -> None:
        with self._engine.begin() as conn:
            if not unsettled:
                conn.execute(payment_attempts.update().where(payment_attempts.c.invoice_id == invoice_id)
                             .values(status="declined"))
                return
            conn.execute(invoices.insert().values(
                invoice_id=invoice_id, subscription_id=self._subscription_id, customer_id=self._customer_id,
                kind=INVOICE_KINDS[0], period_start=FIRST_FAILURE - timedelta(days=30), period_end=FIRST_FAILURE,
                status="open", number=f"N-{invoice_id}", currency="USD", total_minor=2000,
                amount_due_minor=2000))
            conn.execute(payment_attempts.insert().values(
                attempt_id=f"{invoice_id}-a9", invoice_id=invoice_id, attempt_no=9,
                subscription_id=self._subscription_id, customer_id=self._customer_id, amount_minor=2000,
                currency="USD", idempotency_key=f"{invoice_id}-k9", status="unknown", requested_at=FIRST_FAILURE))


class TestDunningScenariosOnPostgres(DunningScenarios):
    @pytest.fixture
    def world(self, engine: sa.Engine) -> World:
        subscription_id, customer_id, invoice_id = unique_ids()
        with engine.begin() as conn:
            conn.execute(customers.insert().values(customer_id=customer_id, external_id=f"ext-{customer_id}",
                                                   kind="user", name="Ada", email=CUSTOMER_EMAIL, currency="USD"))
        policy = DunningPolicy()
        store = PostgresDunningStore(engine, policy, PaymentAttemptReader())
        clock = ManualClock(FIRST_FAILURE)
        return World(lambda: DunningHandlers(store, clock, policy=policy, channel="log"), clock,
                     PostgresProbe(engine, subscription_id, customer_id), subscription_id, customer_id, invoice_id)
