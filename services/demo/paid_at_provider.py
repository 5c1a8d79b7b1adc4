"""Customers in dunning who pay their invoice on the provider's side (its hosted payment page), while the
webhook that would tell us is lost: only the dunning service's open-invoice reconciliation can find these.

The simulated provider keeps its record in PostgreSQL (``simulated_gateway_charges``): the worker's
executor charges through it and the dunning service's reconciler looks it up, each with its own
``SimulatedGateway`` on that table. A payment made here through a third gateway on the same record is
therefore what both services' provider sees, as a real provider's would be. Nothing reaches the edge.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from services.demo.population import GOOD_CARD, DemoCustomer
from shared.adapters.payments.simulated import PostgresProviderRecord, SimulatedGateway
from shared.adapters.postgres.schema.billing import invoices, payment_attempts
from shared.adapters.postgres.schema.dunning import dunning_cases


@dataclass(frozen=True, slots=True)
class ProviderPayment:
    """One invoice a customer paid at the provider, as the provider recorded it."""

    external_id: str
    invoice_id: str
    provider_ref: str


def invoice_in_dunning(conn: sa.Connection, subscription_id: str) -> tuple[str, str] | None:
    """The subscription's open invoice in an open dunning case and the PaymentIntent we last charged for it
    (what the hosted page of the dunning e-mail pays), or None when there is no such invoice."""
    i, a, c = invoices, payment_attempts, dunning_cases
    latest_ref = (sa.select(a.c.provider_ref)
                  .where(a.c.invoice_id == i.c.invoice_id, a.c.provider_ref.is_not(None))
                  .order_by(a.c.attempt_no.desc()).limit(1).scalar_subquery())
    row = conn.execute(
        sa.select(i.c.invoice_id, latest_ref.label("provider_ref"))
        .join(c, c.c.invoice_id == i.c.invoice_id)
        .where(i.c.subscription_id == subscription_id, i.c.status == "open", c.c.status == "open")
        .order_by(i.c.created_at).limit(1)).one_or_none()
    if row is None or row.provider_ref is None:
        return None
    return row.invoice_id, row.provider_ref


def pay_on_hosted_page(engine: sa.Engine, people: list[DemoCustomer]) -> list[ProviderPayment]:
    """Every customer scripted to do so pays its invoice in dunning at the provider with a working card."""
    gateway = SimulatedGateway(PostgresProviderRecord(engine))
    paid = []
    for customer in people:
        if not (customer.pays_at_provider_during_dunning and customer.subscription_id):
            continue
        with engine.connect() as conn:
            found = invoice_in_dunning(conn, customer.subscription_id)
        if found is None:
            continue
        invoice_id, intent = found
        # Raises if the PaymentIntent is unknown or already paid: the demo's script would be wrong.
        gateway.pay_out_of_band(intent, payment_method_id=GOOD_CARD)
        paid.append(ProviderPayment(customer.external_id, invoice_id, intent))
    return paid
