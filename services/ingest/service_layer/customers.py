"""Customer onboarding (users and organisations) and customer reads.

Onboarding is idempotent by `external_id` (with or without an Idempotency-Key):
1. the customer row is written first (its id derives from the external id), with aliases and members;
2. the payment provider's customer is created with an idempotency key derived from the customer id (itself
   derived from the external id), then recorded;
3. the payment method token (`pm_...`) is attached, then recorded as the default.
A retry after a failure at any step resumes where it stopped; a retry of a finished onboarding with the
same data answers the customer as it is (`created` False), with different data `AlreadyOnboarded`. Stripe
keeps idempotency keys for 24 h; since our row exists before the Stripe call and records the Stripe id right
after, a second Stripe customer can only appear if a crash between those two statements is followed by a
retry more than 24 h later.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.ingest.auth import Principal
from services.ingest.service_layer.refusals import (
    AliasTaken,
    AlreadyOnboarded,
    MembersForOrganisationsOnly,
    UnknownCustomer,
)
from services.ingest.service_layer.unit_of_work import CustomerRecord, Member, UnitOfWorkFactory

_CUSTOMER_NAMESPACE = uuid.UUID("0b7f3c52-2f0d-4d1e-8c55-6a0f5f7e9a11")
#: What must match for a repeated onboarding of an external id to be the same one.
SAME_FIELDS = ("kind", "name", "email", "currency", "timezone", "tax_rate_bps")


def customer_id_for(external_id: str) -> str:
    return f"cust_{uuid.uuid5(_CUSTOMER_NAMESPACE, external_id).hex[:24]}"


@dataclass(frozen=True)
class Onboard:
    external_id: str
    kind: str  # user | org
    name: str
    email: str
    currency: str
    timezone: str = "UTC"
    tax_rate_bps: int = 0
    members: Sequence[Member] = ()
    aliases: Sequence[str] = ()
    payment_method_id: str | None = None
    invoice_grace_seconds: int | None = None  # None: the issuer's default
    # an existing payment-provider customer (Metronome's billing_config): recorded, none is created
    stripe_customer_id: str | None = None
    custom_fields: Mapping[str, str] = field(default_factory=dict)


class PaymentCustomers(Protocol):
    """The payment provider's customers (Stripe in production: `services.ingest.stripe_customers`). A refusal
    is a `PaymentProviderRefused`, an outage an `InfrastructureError`."""

    def create_customer(self, customer: CustomerRecord, *, idempotency_key: str) -> str:
        """The provider's id of a new customer for `customer`."""

    def attach_payment_method(self, payment_method_id: str, provider_customer_id: str, *,
                              idempotency_key: str) -> None: ...


def _write_customer(uow: UnitOfWorkFactory, request: Onboard, principal: Principal,
                    request_id: str | None) -> tuple[CustomerRecord, bool]:
    customer_id = customer_id_for(request.external_id)
    if request.kind == "user" and request.members:
        raise MembersForOrganisationsOnly()
    with uow() as work:
        values = {"customer_id": customer_id, "external_id": request.external_id, "kind": request.kind,
                  "name": request.name, "email": request.email, "currency": request.currency,
                  "timezone": request.timezone, "tax_rate_bps": request.tax_rate_bps}
        if request.invoice_grace_seconds is not None:
            values["invoice_grace_seconds"] = request.invoice_grace_seconds
        if request.stripe_customer_id is not None:
            values["stripe_customer_id"] = request.stripe_customer_id
        if request.custom_fields:
            values["custom_fields"] = dict(request.custom_fields)
        created = work.insert_customer(values)
        if not created:
            existing = work.customer_by_external_id(request.external_id)
            differing = [f for f in SAME_FIELDS if existing[f] != values[f]]
            if differing:
                raise AlreadyOnboarded(differing)
        if request.aliases:
            owners = work.add_aliases(customer_id, request.aliases)
            taken = [a for a in request.aliases if owners.get(a) != customer_id]
            if taken:
                raise AliasTaken(taken)
        if request.members:
            work.add_members(customer_id, request.members)
        if created:
            work.audit(principal, "customer.onboard", customer_id=customer_id, request_id=request_id,
                       external_id=request.external_id, kind=request.kind)
        record = work.customer(customer_id)
    assert record is not None  # written in this transaction
    return record, created


def _ensure_payment_customer(uow: UnitOfWorkFactory, payments: PaymentCustomers, record: CustomerRecord,
                             payment_method_id: str | None) -> CustomerRecord:
    changes: dict[str, str] = {}
    provider_id = record.stripe_customer_id
    if provider_id is None:
        # The customer id derives from the external id (same key on every retry) and, unlike the external
        # id, is ASCII: HTTP headers cannot carry arbitrary Unicode.
        provider_id = changes["stripe_customer_id"] = payments.create_customer(
            record, idempotency_key=f"onboard-customer:{record.customer_id}")
    if payment_method_id and payment_method_id != record.default_payment_method_id:
        payments.attach_payment_method(payment_method_id, provider_id,
                                       idempotency_key=f"attach-pm:{record.customer_id}:{payment_method_id}")
        changes["default_payment_method_id"] = payment_method_id
    if not changes:
        return record
    with uow() as work:
        work.update_customer(record.customer_id, changes)
        fresh = work.customer(record.customer_id)
    assert fresh is not None
    return fresh


def onboard(uow: UnitOfWorkFactory, payments: PaymentCustomers, request: Onboard, *, principal: Principal,
            request_id: str | None) -> tuple[CustomerRecord, bool]:
    """Onboard (or resume onboarding) a customer; True if this call created it (see the module docstring)."""
    record, created = _write_customer(uow, request, principal, request_id)
    return _ensure_payment_customer(uow, payments, record, request.payment_method_id), created


def set_invoice_grace(uow: UnitOfWorkFactory, customer_id: str, seconds: int | None, *, principal: Principal,
                      request_id: str | None) -> CustomerRecord:
    """How long the customer's period-close invoices stay draft (None: the issuer's default, 0: finalised at
    the close). Taken by the scheduler when it closes a period: a draft already stored keeps its grace."""
    with uow() as work:
        if work.customer_terms(customer_id) is None:
            raise UnknownCustomer(f"no customer {customer_id!r}", field="customer_id")
        work.update_customer(customer_id, {"invoice_grace_seconds": seconds})
        work.audit(principal, "customer.invoice_settings", customer_id=customer_id, request_id=request_id,
                   invoice_grace_seconds=seconds)
        record = work.customer(customer_id)
    if record is None:
        raise UnknownCustomer(f"no customer {customer_id!r}", field="customer_id")
    return record


def customer(uow: UnitOfWorkFactory, customer_id: str) -> CustomerRecord | None:
    with uow() as work:
        return work.customer(customer_id)


def customers_page(uow: UnitOfWorkFactory, after: str | None, limit: int) -> tuple[list[CustomerRecord], bool]:
    """Up to `limit` customers by id after `after`, and whether more follow."""
    with uow() as work:
        ids = work.customer_ids(after, limit + 1)
        records = [work.customer(i) for i in ids[:limit]]
    return [r for r in records if r is not None], len(ids) > limit


def as_dict(record: CustomerRecord) -> dict[str, Any]:
    return {**record.__dict__, "members": [m.__dict__ for m in record.members]}
