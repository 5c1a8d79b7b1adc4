"""Metronome's credit grants and contract balances over our credit ledger: the edge's use cases.

A Metronome credit grant is one of our grants (`credits.grant`, a command to the worker, the only writer of
the ledger) on the customer's live subscription, on the meter of the ONE usage product it names (our ledger
keeps credit per meter), in USD cents (our minor units). Its Metronome-only fields (name, reason, type,
custom fields, uniqueness key) are kept in `mx_credit_grants`, written in the command's transaction.
Balances read the ledger: a grant's balance is the sum of its entries (grant +, consume / expire / void -).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from services.ingest.auth import Principal
from services.ingest.metronome.contract_terms import USD_CENTS, Terms
from services.ingest.metronome.customers import not_supported
from services.ingest.service_layer import credits
from services.ingest.service_layer.lifecycle import Accepted
from services.ingest.service_layer.metronome_pricing import not_found, products_by_id
from services.ingest.service_layer.refusals import MetronomeRefusal
from services.ingest.service_layer.unit_of_work import SqlUnitOfWork, UnitOfWork, sql_unit_of_work
from shared.adapters.postgres.outbox import rows_committed
from shared.adapters.postgres.schema.billing import credit_entries, credit_grants, subscriptions
from shared.adapters.postgres.schema.contract_pricing import mx_contracts, mx_credit_grants
from shared.adapters.postgres.subscription_reads import newest_live_subscription
from shared.domain.catalog import Catalog

API_SOURCES = ("promotional", "top_up")  # grants made through an API (plan-included ones are contract credits)


@dataclass(frozen=True)
class GrantRequest:
    customer_id: str
    name: str
    amount: Decimal  # cents of the USD credit type
    credit_type_id: str
    paid_amount: Decimal
    priority: Decimal
    expires_at: datetime
    effective_at: datetime | None = None
    product_ids: Sequence[str] = ()
    reason: str | None = None
    credit_grant_type: str | None = None
    custom_fields: dict[str, str] | None = None
    uniqueness_key: str | None = None


@contextmanager
def _joined(conn: sa.Connection) -> Iterator[UnitOfWork]:
    yield SqlUnitOfWork(conn)


def create_grant(engine: sa.Engine, catalog: Catalog, request: GrantRequest, *, principal: Principal,
                 authorize: Callable[[str], None], now: datetime, request_id: str | None) -> tuple[str, Accepted]:
    """Grant credit on the customer's live subscription; returns the grant id and the accepted command.
    Refuses a paid grant and a grant on several products or a custom credit type (`not_supported`), a
    customer without a live subscription (`invalid`), a repeated uniqueness key (`already_exists`)."""
    if request.credit_type_id != USD_CENTS:
        raise not_supported("grant_amount.credit_type_id", "credit types other than USD (cents)")
    if request.paid_amount != 0:
        raise not_supported("paid_amount", "a paid grant (buy credit with a credit purchase: it is invoiced)")
    if request.amount <= 0 or request.amount != request.amount.to_integral_value():
        raise MetronomeRefusal("a grant is a whole, positive number of cents",
                              fields=[("grant_amount.amount", "whole cents, above 0")])
    if request.priority < 0 or request.priority != request.priority.to_integral_value():
        raise not_supported("priority", "a fractional or negative priority")
    if len(request.product_ids) != 1:
        raise not_supported("product_ids", "a grant applies to exactly one usage product (credit is per meter)")
    with engine.begin() as conn:
        product = products_by_id(conn).get(request.product_ids[0])
        if product is None or product.type != "USAGE" or product.billable_metric_id is None:
            raise MetronomeRefusal("credit applies to a usage product",
                                  fields=[("product_ids", "not a USAGE product")])
        subscription_id = conn.execute(newest_live_subscription(
            request.customer_id, subscriptions.c.subscription_id)).scalar()
        if subscription_id is None:
            raise MetronomeRefusal(f"customer {request.customer_id!r} has no live contract",
                                  fields=[("customer_id", "no live contract or subscription")])
        key = request.uniqueness_key or uuid.uuid4().hex  # the grant's id derives from it (here and in `grant`)
        grant_id = credits.new_grant_id(subscription_id, key)
        try:
            with conn.begin_nested():
                conn.execute(sa.insert(mx_credit_grants).values(
                    grant_id=grant_id, customer_id=request.customer_id, product_id=product.product_id,
                    name=request.name, reason=request.reason, credit_grant_type=request.credit_grant_type,
                    custom_fields=request.custom_fields or {}, uniqueness_key=request.uniqueness_key))
        except IntegrityError as error:
            raise MetronomeRefusal("a credit grant with this uniqueness_key exists", code="already_exists",
                                  fields=[("uniqueness_key", "already used")]) from error
        accepted, _ = credits.grant(
            lambda: _joined(conn), catalog, subscription_id, credits.GrantRequest(
                meter_id=product.billable_metric_id, source="promotional", amount_minor=int(request.amount),
                priority=int(request.priority), effective_at=request.effective_at, expires_at=request.expires_at,
                description=request.name),
            idempotency_key=key, principal=principal, authorize=authorize, now=now,
            request_id=request_id)
    rows_committed()
    return grant_id, accepted


def void_grant(engine: sa.Engine, grant_id: str, *, principal: Principal, authorize: Callable[[str], None],
               now: datetime, request_id: str | None) -> Accepted:
    """Void a grant made through this API: what is left of it is written off by the worker."""
    with engine.connect() as conn:
        if conn.execute(sa.select(mx_credit_grants.c.grant_id).where(mx_credit_grants.c.grant_id == grant_id)) \
                .first() is None:
            raise not_found("credit grant", grant_id, "id")
    return credits.void(sql_unit_of_work(engine), engine, grant_id, None, principal=principal, authorize=authorize,
                        now=now, request_id=request_id)


# --- reads --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LedgerEntry:
    grant_id: str
    kind: str
    amount_cents: int
    at: datetime
    invoice_id: str | None


@dataclass(frozen=True)
class Grant:
    """A grant as the balance and grant calls show it."""

    grant_id: str
    customer_id: str
    subscription_id: str
    meter_id: str
    source: str
    priority: int
    amount_cents: int
    remaining_cents: int
    effective_at: datetime
    expires_at: datetime | None
    granted_at: datetime
    voided: bool
    entries: list[LedgerEntry]
    name: str | None = None
    product_id: str | None = None
    reason: str | None = None
    credit_grant_type: str | None = None
    custom_fields: dict[str, str] | None = None
    uniqueness_key: str | None = None
    contract_id: str | None = None  # a contract's recurring credit (plan-included)
    applicable_product_id: str | None = None


def _public_id() -> sa.ColumnElement[str]:
    """The id the APIs show: the stored id without its `<subscription>|` prefix (see `credits.public_grant_id`)."""
    g = credit_grants.c
    return sa.func.coalesce(sa.func.nullif(sa.func.split_part(g.grant_id, "|", 2), ""), g.grant_id)


def _grants(conn: sa.Connection, where: sa.ColumnElement[bool]) -> list[Grant]:
    g, m = credit_grants.c, mx_credit_grants.c
    rows = conn.execute(sa.select(credit_grants, m.name, m.product_id, m.reason, m.credit_grant_type,
                                  m.custom_fields, m.uniqueness_key)
                        .outerjoin(mx_credit_grants, m.grant_id == _public_id())
                        .where(where, g.amount_minor.is_not(None))
                        .order_by(g.granted_at, _public_id())).all()
    ids = [r.grant_id for r in rows]
    entries: dict[str, list[LedgerEntry]] = {}
    if ids:
        e = credit_entries.c
        for r in conn.execute(sa.select(e.grant_id, e.kind, e.amount_minor, e.occurred_at, e.invoice_id)
                              .where(e.grant_id.in_(ids)).order_by(e.seq)):
            entries.setdefault(r.grant_id, []).append(
                LedgerEntry(r.grant_id, r.kind, int(r.amount_minor or 0), r.occurred_at, r.invoice_id))
    found: list[Grant] = []
    for r in rows:
        own = entries.get(r.grant_id, [])
        found.append(Grant(
            credits.public_grant_id(r.grant_id, r.subscription_id), r.customer_id, r.subscription_id, r.meter_id,
            r.source, int(r.priority), int(r.amount_minor), sum(x.amount_cents for x in own), r.effective_at,
            r.expires_at, r.granted_at, any(x.kind == "void" for x in own), own, r.name, r.product_id, r.reason,
            r.credit_grant_type, dict(r.custom_fields) if r.custom_fields is not None else None, r.uniqueness_key))
    return found


def grants_page(engine: sa.Engine, customer_ids: Sequence[str] | None, grant_ids: Sequence[str] | None,
                after: str | None, limit: int) -> list[Grant]:
    """Up to `limit + 1` credit grants made through an API (not the contracts' recurring credits), in the
    order they were granted, after the cursor (a grant id of the previous page)."""
    g = credit_grants.c
    where: sa.ColumnElement[bool] = g.source.in_(API_SOURCES)
    if customer_ids:
        where = sa.and_(where, g.customer_id.in_(list(customer_ids)))
    if grant_ids:
        where = sa.and_(where, _public_id().in_(list(grant_ids)))
    with engine.connect() as conn:
        if after is not None:
            anchor = conn.execute(sa.select(g.granted_at).where(_public_id() == after)).scalar()
            if anchor is None:
                raise MetronomeRefusal("pass back a next_page value unchanged", fields=[("next_page", "not a cursor")])
            where = sa.and_(where, sa.tuple_(g.granted_at, _public_id()) > sa.tuple_(sa.literal(anchor),
                                                                                         sa.literal(after)))
        return _grants(conn, where)[:limit + 1]


def ledger_of(engine: sa.Engine, customer_id: str) -> list[Grant]:
    """The customer's API grants with their entries (the credit ledger Metronome's listEntries shows)."""
    with engine.connect() as conn:
        return _grants(conn, sa.and_(credit_grants.c.customer_id == customer_id,
                                     credit_grants.c.source.in_(API_SOURCES)))


def balances_of(engine: sa.Engine, customer_id: str, at: datetime) -> list[Grant]:
    """Every money grant of the customer usable at `at`: the contracts' recurring credits (with the contract
    and product they come from) and the API grants."""
    g = credit_grants.c
    with engine.connect() as conn:
        found = _grants(conn, sa.and_(g.customer_id == customer_id, g.effective_at <= at,
                                      sa.or_(g.expires_at.is_(None), g.expires_at > at)))
        contracts = {r.subscription_id: (r.contract_id, Terms.from_json(r.terms)) for r in conn.execute(
            sa.select(mx_contracts.c.subscription_id, mx_contracts.c.contract_id, mx_contracts.c.terms)
            .where(mx_contracts.c.customer_id == customer_id))}
        products = products_by_id(conn)
    shown: list[Grant] = []
    for grant in found:
        if grant.source == "plan_included" and grant.subscription_id in contracts:
            contract_id, terms = contracts[grant.subscription_id]
            credit = next((c for c in terms.recurring_credits
                           if getattr(products.get(c["applicable_product_id"]), "billable_metric_id", None)
                           == grant.meter_id), None)
            if credit is None:
                continue
            grant = replace(grant, contract_id=contract_id, product_id=credit["product_id"],
                          applicable_product_id=credit["applicable_product_id"], name=credit.get("name") or
                          "recurring credit", uniqueness_key=None)
        elif grant.source not in API_SOURCES:
            continue
        shown.append(grant)
    return shown
