"""Metronome's contract pricing (products, rate cards, rates): the edge's use cases (admin).

What is stored here is what the Metronome-compatible surface was told; nothing is billed from it directly.
A contract's terms are turned into a plan of our catalog when the contract is made or edited
(`services.ingest.metronome.contract_terms.plan_definition`, `metronome_contracts`). A USAGE product names a
billable metric, which is one of our meters; a SUBSCRIPTION (or FIXED) product is a recurring fee.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from services.ingest.metronome.contract_terms import (
    SUPPORTED_RATE_TYPES,
    USD_CENTS,
    Product,
    RateCard,
    RateRow,
)
from services.ingest.metronome.customers import not_supported
from services.ingest.service_layer.refusals import MetronomeRefusal
from shared.adapters.postgres.schema.contract_pricing import mx_products, mx_rate_cards, mx_rates


@dataclass(frozen=True)
class StoredProduct:
    product: Product
    tags: list[str]
    custom_fields: dict[str, str]
    created_at: datetime
    archived_at: datetime | None
    seq: int


@dataclass(frozen=True)
class StoredRateCard:
    card: RateCard
    description: str | None
    aliases: list[dict[str, Any]]
    custom_fields: dict[str, str]
    created_at: datetime
    seq: int


def not_found(what: str, ident: str, field: str) -> MetronomeRefusal:
    return MetronomeRefusal(f"no {what} {ident!r}", code="not_found", fields=[(field, f"unknown {what}")])


# --- products -----------------------------------------------------------------------------------------------


def create_product(engine: sa.Engine, body: Mapping[str, Any], known_meters: Collection[str]) -> str:
    """A product: USAGE (on a billable metric, one of our meters), SUBSCRIPTION or FIXED (a recurring fee)."""
    kind = body["type"]
    if kind not in ("USAGE", "SUBSCRIPTION", "FIXED"):
        raise not_supported("type", f"{kind} products")
    for key in ("composite_product_ids", "composite_tags", "quantity_conversion", "quantity_rounding",
                "pricing_group_key", "presentation_group_key"):
        if body.get(key):
            raise not_supported(key, key)
    metric = body.get("billable_metric_id")
    if kind == "USAGE":
        if metric is None:
            raise MetronomeRefusal("a USAGE product needs a billable metric",
                                  fields=[("billable_metric_id", "required for USAGE")])
        if metric not in known_meters:
            raise not_found("billable metric", metric, "billable_metric_id")
    elif metric is not None:
        raise MetronomeRefusal("only a USAGE product has a billable metric",
                              fields=[("billable_metric_id", "only for USAGE")])
    product_id = str(uuid.uuid4())
    with engine.begin() as conn:
        conn.execute(sa.insert(mx_products).values(
            product_id=product_id, name=body["name"], type=kind, billable_metric_id=metric,
            tags=list(body.get("tags") or ()), custom_fields=dict(body.get("custom_fields") or {})))
    return product_id


def _product(row: Any) -> StoredProduct:
    return StoredProduct(Product(row.product_id, row.name, row.type, row.billable_metric_id), list(row.tags),
                         dict(row.custom_fields), row.created_at, row.archived_at, int(row.seq))


def product(engine: sa.Engine, product_id: str) -> StoredProduct:
    with engine.connect() as conn:
        row = conn.execute(sa.select(mx_products).where(mx_products.c.product_id == product_id)).first()
    if row is None:
        raise not_found("product", product_id, "id")
    return _product(row)


def products_page(engine: sa.Engine, after: str | None, limit: int, archive_filter: str) -> list[StoredProduct]:
    """Up to `limit + 1` products in creation order after the cursor key (a sequence number)."""
    query = sa.select(mx_products).order_by(mx_products.c.seq).limit(limit + 1)
    if after is not None:
        query = query.where(mx_products.c.seq > _seq(after))
    if archive_filter == "NOT_ARCHIVED":
        query = query.where(mx_products.c.archived_at.is_(None))
    elif archive_filter == "ARCHIVED":
        query = query.where(mx_products.c.archived_at.is_not(None))
    with engine.connect() as conn:
        return [_product(row) for row in conn.execute(query)]


def archive_product(engine: sa.Engine, product_id: str, at: datetime) -> str:
    """Archive a product: kept for the contracts and rates that name it. Archiving again changes nothing."""
    with engine.begin() as conn:
        found = conn.execute(sa.update(mx_products).where(mx_products.c.product_id == product_id)
                             .values(archived_at=sa.func.coalesce(mx_products.c.archived_at, at))
                             .returning(mx_products.c.product_id)).first()
    if found is None:
        raise not_found("product", product_id, "product_id")
    return product_id


def products_by_id(conn: sa.Connection) -> dict[str, Product]:
    return {row.product_id: Product(row.product_id, row.name, row.type, row.billable_metric_id)
            for row in conn.execute(sa.select(mx_products))}


def _seq(key: str) -> int:
    if not key.isdigit() or len(key) > 18:
        raise MetronomeRefusal("pass back a next_page value unchanged", fields=[("next_page", "not a cursor")])
    return int(key)


# --- rate cards ---------------------------------------------------------------------------------------------


def create_rate_card(engine: sa.Engine, body: Mapping[str, Any]) -> str:
    if body.get("fiat_credit_type_id") not in (None, USD_CENTS):
        raise not_supported("fiat_credit_type_id", "rate cards in a credit type other than USD (cents)")
    if body.get("credit_type_conversions"):
        raise not_supported("credit_type_conversions", "custom credit types")
    rate_card_id = str(uuid.uuid4())
    aliases = [{key: (value.isoformat() if isinstance(value, datetime) else value) for key, value in alias.items()}
               for alias in body.get("aliases") or ()]
    with engine.begin() as conn:
        conn.execute(sa.insert(mx_rate_cards).values(
            rate_card_id=rate_card_id, name=body["name"], description=body.get("description"), currency="USD",
            aliases=aliases, custom_fields=dict(body.get("custom_fields") or {})))
    return rate_card_id


def _card(row: Any) -> StoredRateCard:
    return StoredRateCard(RateCard(row.rate_card_id, row.name, row.currency), row.description, list(row.aliases),
                          dict(row.custom_fields), row.created_at, int(row.seq))


def rate_card(engine: sa.Engine, rate_card_id: str) -> StoredRateCard:
    with engine.connect() as conn:
        return rate_card_in(conn, rate_card_id)


def rate_card_in(conn: sa.Connection, rate_card_id: str, field: str = "id") -> StoredRateCard:
    row = conn.execute(sa.select(mx_rate_cards).where(mx_rate_cards.c.rate_card_id == rate_card_id)).first()
    if row is None:
        raise not_found("rate card", rate_card_id, field)
    return _card(row)


def rate_cards_page(engine: sa.Engine, after: str | None, limit: int) -> list[StoredRateCard]:
    query = sa.select(mx_rate_cards).order_by(mx_rate_cards.c.seq).limit(limit + 1)
    if after is not None:
        query = query.where(mx_rate_cards.c.seq > _seq(after))
    with engine.connect() as conn:
        return [_card(row) for row in conn.execute(query)]


# --- rates --------------------------------------------------------------------------------------------------


def _rate_document(rate: Mapping[str, Any], product: Product, path: str) -> dict[str, Any]:
    rate_type = rate["rate_type"]
    if rate_type not in SUPPORTED_RATE_TYPES:
        raise not_supported(f"{path}.rate_type", f"{rate_type} rates")
    for key in ("custom_rate", "commit_rate", "quantity", "pricing_group_values"):
        if rate.get(key) not in (None, {}, []):
            raise not_supported(f"{path}.{key}", key)
    if rate.get("credit_type_id") not in (None, USD_CENTS):
        raise not_supported(f"{path}.credit_type_id", "rates in a credit type other than USD (cents)")
    if rate.get("is_prorated") is False and product.type != "USAGE":
        raise not_supported(f"{path}.is_prorated", "fees are prorated on changes")
    if product.type == "USAGE" and rate_type == "SUBSCRIPTION":
        raise MetronomeRefusal("a SUBSCRIPTION rate is for SUBSCRIPTION products",
                              fields=[(f"{path}.rate_type", "not for USAGE products")])
    if product.type != "USAGE" and rate_type == "TIERED":
        raise not_supported(f"{path}.rate_type", "TIERED rates on recurring fees")
    document: dict[str, Any] = {"rate_type": rate_type}
    if rate_type == "TIERED":
        tiers = list(rate.get("tiers") or ())
        if not tiers:
            raise MetronomeRefusal("a TIERED rate needs tiers", fields=[(f"{path}.tiers", "required")])
        document["tiers"] = [{"price": str(Decimal(str(t["price"]))),
                              **({"size": str(Decimal(str(t["size"])))} if t.get("size") is not None else {})}
                             for t in tiers]
    else:
        if rate.get("price") is None:
            raise MetronomeRefusal("a rate needs a price", fields=[(f"{path}.price", "required")])
        price = Decimal(str(rate["price"]))
        if price < 0:
            raise MetronomeRefusal("a price is not negative", fields=[(f"{path}.price", "negative")])
        document["price"] = str(price)
    if rate.get("billing_frequency") is not None:
        document["billing_frequency"] = rate["billing_frequency"]
    return document


def add_rates(engine: sa.Engine, rate_card_id: str, rates: Sequence[Mapping[str, Any]],
              path: str = "rates") -> list[dict[str, Any]]:
    """Add rates to a rate card (one transaction); each rate prices its product from `starting_at`. Returns
    the stored rate documents in order."""
    with engine.begin() as conn:
        rate_card_in(conn, rate_card_id, "rate_card_id")
        products = products_by_id(conn)
        stored: list[dict[str, Any]] = []
        for index, rate in enumerate(rates):
            where = f"{path}[{index}]" if path else "rate"
            found = products.get(rate["product_id"])
            if found is None:
                raise not_found("product", rate["product_id"], f"{where}.product_id")
            document = _rate_document(rate, found, where)
            conn.execute(sa.insert(mx_rates).values(
                rate_card_id=rate_card_id, product_id=found.product_id, starting_at=rate["starting_at"],
                ending_before=rate.get("ending_before"), entitled=bool(rate["entitled"]), rate=document))
            stored.append(document)
    return stored


def rates_of(conn: sa.Connection, rate_card_id: str) -> list[RateRow]:
    rows = conn.execute(sa.select(mx_rates).where(mx_rates.c.rate_card_id == rate_card_id)
                        .order_by(mx_rates.c.seq))
    return [RateRow(row.product_id, row.starting_at, row.entitled, dict(row.rate), row.ending_before)
            for row in rows]


@dataclass(frozen=True)
class RateAt:
    row: RateRow
    product: Product
    seq: int


def rates_at(engine: sa.Engine, rate_card_id: str, at: datetime, product_ids: Collection[str] | None,
             after: str | None, limit: int) -> list[RateAt]:
    """The rates in force at `at` (one per product: the latest started), in product creation order, up to
    `limit + 1` after the cursor key (a product's sequence number)."""
    with engine.connect() as conn:
        rate_card_in(conn, rate_card_id, "rate_card_id")
        products = {row.product_id: (Product(row.product_id, row.name, row.type, row.billable_metric_id),
                                     int(row.seq)) for row in conn.execute(sa.select(mx_products))}
        rows = rates_of(conn, rate_card_id)
    current: dict[str, RateRow] = {}
    for row in rows:
        if row.covers(at) and (row.product_id not in current or row.starting_at >= current[row.product_id].starting_at):
            current[row.product_id] = row
    found = [RateAt(row, products[pid][0], products[pid][1]) for pid, row in current.items()
             if product_ids is None or pid in product_ids]
    found.sort(key=lambda r: r.seq)
    if after is not None:
        start = _seq(after)
        found = [r for r in found if r.seq > start]
    return found[:limit + 1]
