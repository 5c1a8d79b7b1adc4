"""Helpers for the billing handler tests: apply commands and usage straight through the handlers (no broker),
inside real PostgreSQL transactions, exactly as the batch processor does."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from services.billing_worker.adapters.usage import MeterMap, UsageMaterializer
from services.billing_worker.bootstrap import billing_handlers, message_bus, sql_unit_of_work
from shared.adapters.catalog_file import load_default_catalog
from shared.adapters.postgres.schema.billing import invoice_lines, invoices, subscriptions
from shared.adapters.postgres.schema.core import command_outcomes
from shared.contracts.envelope import Envelope, new_envelope
from shared.contracts.messages import TYPE_OF, Payload
from tests.integration.worker.harness import usage_envelope


class Billing:
    """The billing handlers (the real bootstrap's table) bound to one engine, fed one message at a time."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.catalog = load_default_catalog()
        self.bus = message_bus(billing_handlers())
        self.unit_of_work = sql_unit_of_work(self.catalog)
        self.usage = UsageMaterializer(MeterMap.from_catalog(self.catalog))
        self._tx = 0

    def send(self, payload: Payload, at: datetime) -> Envelope:
        """Apply one message as the worker does (payment outcomes store no command outcome)."""
        type_ = TYPE_OF[type(payload)]
        envelope = new_envelope(type_, payload.model_dump(mode="json"), producer="test", occurred_at=at)
        with self.engine.begin() as conn:
            self.bus.handle(self.unit_of_work(conn), [(envelope, payload)], at)
        return envelope

    def send_batch(self, payloads: list[Payload], at: datetime) -> list[Envelope]:
        envelopes = [new_envelope(TYPE_OF[type(p)], p.model_dump(mode="json"), producer="test", occurred_at=at)
                     for p in payloads]
        with self.engine.begin() as conn:
            self.bus.handle(self.unit_of_work(conn), list(zip(envelopes, payloads, strict=True)), at)
        return envelopes

    def record_usage(self, subscription_id: str, customer_id: str, event_type: str, properties: dict[str, Any],
                     at: datetime) -> None:
        self._tx += 1
        raw = usage_envelope(customer_id=customer_id, subscription_id=subscription_id,
                             transaction_id=f"tx-{subscription_id}-{self._tx}", event_type=event_type,
                             properties=properties, timestamp=at)
        with self.engine.begin() as conn:
            self.usage.apply(conn, [self.usage.decode(raw)])

    def outcome(self, envelope: Envelope) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(command_outcomes).where(
                command_outcomes.c.command_id == envelope.event_id)).one()

    def subscription(self, subscription_id: str) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(subscriptions).where(
                subscriptions.c.subscription_id == subscription_id)).one()

    def invoices(self, subscription_id: str) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(invoices).where(invoices.c.subscription_id == subscription_id)
                                     .order_by(invoices.c.number_seq)).all())

    def lines(self, invoice_id: str) -> list[tuple[str, int]]:
        with self.engine.connect() as conn:
            return [(r.kind, r.amount_minor) for r in conn.execute(
                sa.select(invoice_lines).where(invoice_lines.c.invoice_id == invoice_id)
                .order_by(invoice_lines.c.line_no))]
