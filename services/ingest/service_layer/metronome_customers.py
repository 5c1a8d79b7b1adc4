"""Metronome's customer calls over our customers: create (onboarding), list with Metronome's filters,
archive, set ingest aliases, set name.

Mapping (see also `services.ingest.metronome.customers`): Metronome's `external_id` is our `external_id` and,
as in Metronome, also an id usable in usage events (it is registered as an ingest alias); `ingest_aliases` are
our customer aliases; a Stripe `billing_config` records the given Stripe customer (none is created);
`custom_fields` are stored as given. Metronome's customer has no currency, kind or email: the customer is
an organisation billed in USD (Metronome's default credit type), with the `email` custom field as its
e-mail address when given.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from services.ingest.auth import Principal
from services.ingest.service_layer import customers as onboarding
from services.ingest.service_layer.customers import PaymentCustomers
from services.ingest.service_layer.refusals import AliasTaken, MetronomeRefusal
from services.ingest.service_layer.unit_of_work import CustomerRecord, UnitOfWorkFactory

CURRENCY = "USD"  # NOTE: Metronome's default credit type (USD, amounts in cents)
EMAIL_FIELD = "email"


@dataclass(frozen=True)
class CreateCustomer:
    name: str
    external_id: str | None = None
    ingest_aliases: Sequence[str] = ()
    stripe_customer_id: str | None = None
    custom_fields: Mapping[str, str] | None = None


@dataclass(frozen=True)
class CustomerQuery:
    after: str | None
    limit: int
    customer_ids: Sequence[str] | None = None
    ingest_alias: str | None = None
    only_archived: bool = False


def unknown_customer(customer_id: str) -> MetronomeRefusal:
    return MetronomeRefusal(f"no customer {customer_id!r}", code="not_found",
                            fields=[("customer_id", "unknown customer")])


def create(uow: UnitOfWorkFactory, payments: PaymentCustomers, request: CreateCustomer, *, principal: Principal,
           request_id: str | None) -> CustomerRecord:
    """Onboard a Metronome customer (idempotent by `external_id`, like our onboarding: the same data again
    answers the customer, other data is `already_onboarded`)."""
    external_id = request.external_id or f"mtr_{uuid.uuid4().hex}"
    fields = dict(request.custom_fields or {})
    command = onboarding.Onboard(
        external_id=external_id, kind="org", name=request.name, email=fields.get(EMAIL_FIELD, ""),
        currency=CURRENCY, aliases=sorted({*request.ingest_aliases, external_id}),
        stripe_customer_id=request.stripe_customer_id, custom_fields=fields)
    record, _ = onboarding.onboard(uow, payments, command, principal=principal, request_id=request_id)
    return record


def customer(uow: UnitOfWorkFactory, customer_id: str) -> CustomerRecord:
    with uow() as work:
        found = work.customer(customer_id)
    if found is None:
        raise unknown_customer(customer_id)
    return found


def customers_page(uow: UnitOfWorkFactory, query: CustomerQuery) -> list[CustomerRecord]:
    """Up to `query.limit + 1` customers in id order (the extra one tells that a next page exists)."""
    with uow() as work:
        ids = work.customer_ids_where(query.after, query.limit + 1, customer_ids=query.customer_ids,
                                      alias=query.ingest_alias, archived=query.only_archived)
        records = [work.customer(i) for i in ids]
    return [r for r in records if r is not None]


def archive(uow: UnitOfWorkFactory, customer_id: str, at: datetime, *, principal: Principal,
            request_id: str | None) -> CustomerRecord:
    """Archive a customer: no longer listed unless archived ones are asked for; its history stays.

    # NOTE: Metronome also ends the customer's contracts; here a customer still billed by a live
    # subscription is refused (`customer_has_live_subscription`): end its contracts first, so an archive
    # never leaves a subscription billing silently."""
    with uow() as work:
        record = work.customer(customer_id)
        if record is None:
            raise unknown_customer(customer_id)
        if record.archived_at is None:
            if work.has_live_subscription(customer_id):
                raise MetronomeRefusal(f"customer {customer_id!r} still has a live subscription: end it first",
                                       code="customer_has_live_subscription",
                                       fields=[("id", "has a live subscription")])
            work.update_customer(customer_id, {"archived_at": at})
            work.audit(principal, "customer.archive", customer_id=customer_id, request_id=request_id)
        fresh = work.customer(customer_id)
    assert fresh is not None
    return fresh


def set_ingest_aliases(uow: UnitOfWorkFactory, customer_id: str, aliases: Sequence[str], *,
                       principal: Principal, request_id: str | None) -> tuple[CustomerRecord, list[str]]:
    """Replace the customer's ingest aliases (its external id stays one: Metronome keeps it usable in
    events); an alias of another customer is refused (`alias_taken`). Returns the customer and every alias
    whose owner changed (for the edge's routing cache)."""
    with uow() as work:
        record = work.customer(customer_id)
        if record is None:
            raise unknown_customer(customer_id)
        wanted = sorted({*aliases, record.external_id})
        lost, owners = work.replace_aliases(customer_id, wanted)
        taken = [a for a in wanted if owners.get(a) != customer_id]
        if taken:
            raise AliasTaken(taken)
        work.update_customer(customer_id, {})
        work.audit(principal, "customer.ingest_aliases", customer_id=customer_id, request_id=request_id,
                   aliases=wanted)
        fresh = work.customer(customer_id)
    assert fresh is not None
    return fresh, sorted({*lost, *wanted})


def set_name(uow: UnitOfWorkFactory, customer_id: str, name: str, *, principal: Principal,
             request_id: str | None) -> CustomerRecord:
    with uow() as work:
        if work.customer(customer_id) is None:
            raise unknown_customer(customer_id)
        work.update_customer(customer_id, {"name": name})
        work.audit(principal, "customer.name", customer_id=customer_id, request_id=request_id)
        fresh = work.customer(customer_id)
    assert fresh is not None
    return fresh
