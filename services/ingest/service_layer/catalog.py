"""The catalog API's use cases (admin): meters, plans and their versions, coupons, stored in PostgreSQL.

Each write runs in one transaction with its audit row, through `shared.adapters.postgres.catalog_store`,
whose validation is the YAML files' (`shared.domain.catalog`): an API body is a catalog document's entry.
The first write stores the YAML bootstrap first (`bootstrap`), so the plans of the files stay sold once
the stored catalog is the one served. Nothing is deleted: archival keeps what subscriptions and invoices
refer to, and a plan in use is refused deletion (``in_use``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from services.ingest.audit import record
from services.ingest.auth import Principal
from services.ingest.service_layer.lifecycle import PRODUCER
from services.ingest.service_layer.refusals import CatalogRefusal
from shared.adapters.postgres import catalog_store
from shared.adapters.postgres.outbox import add_to_outbox
from shared.adapters.postgres.schema.billing import subscriptions
from shared.adapters.postgres.schema.catalog import (
    catalog_coupons,
    catalog_meters,
    catalog_plan_versions,
    catalog_plans,
)
from shared.contracts import topics
from shared.contracts.envelope import Envelope, new_envelope
from shared.contracts.messages import TYPE_OF, ChangePlan
from shared.domain.catalog import catalog_document, catalog_error_field
from shared.domain.errors import CatalogError
from shared.errors import refusal_code

Bootstrap = Callable[[], Sequence[object]]


@dataclass(frozen=True)
class Entry:
    """A stored meter or coupon: its definition (the catalog document's entry) and its archival."""

    id: str
    definition: dict[str, Any]
    created_at: datetime
    archived_at: datetime | None


@dataclass(frozen=True)
class PlanVersion:
    version: int
    definition: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class StoredPlan:
    plan_id: str
    current_version: int
    created_at: datetime
    archived_at: datetime | None
    versions: list[PlanVersion]

    @property
    def definition(self) -> dict[str, Any]:
        return next(v.definition for v in self.versions if v.version == self.current_version)


@dataclass(frozen=True)
class Write:
    """Who writes, when, and the YAML bootstrap stored before the first write."""

    principal: Principal
    at: datetime
    request_id: str | None
    bootstrap: Bootstrap


# --- meters ---------------------------------------------------------------------------------------------


def create_meter(engine: sa.Engine, definition: Mapping[str, Any], write: Write) -> Entry:
    meter_id = str(definition.get("id"))
    with engine.begin() as conn:
        _ensure_bootstrap(conn, write)
        _refuse_taken(conn, catalog_meters, catalog_meters.c.meter_id, meter_id, "meter")
        _store(conn, catalog_document([definition], (), ()), write.at)
        record(conn, write.principal, "catalog.meter.create", request_id=write.request_id, meter_id=meter_id)
        return _meter(conn, meter_id)


def update_meter(engine: sa.Engine, meter_id: str, changes: Mapping[str, Any], write: Write) -> Entry:
    """Rename, describe or archive a meter (``archived: true``); its aggregation never changes."""
    with engine.begin() as conn:
        _ensure_bootstrap(conn, write)
        current = _meter(conn, meter_id)
        renamed = {key: value for key, value in changes.items() if key in ("name", "description")}
        if renamed:
            _store(conn, catalog_document([{**current.definition, **renamed}], (), ()), write.at)
        if changes.get("archived"):
            catalog_store.archive(conn, "meter", meter_id, write.at)
        record(conn, write.principal, "catalog.meter.update", request_id=write.request_id, meter_id=meter_id,
               changes=dict(changes))
        return _meter(conn, meter_id)


def meters(engine: sa.Engine) -> list[Entry]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(catalog_meters).order_by(catalog_meters.c.meter_id)).all()
    return [Entry(r.meter_id, dict(r.document), r.created_at, r.archived_at) for r in rows]


def meter(engine: sa.Engine, meter_id: str) -> Entry:
    with engine.connect() as conn:
        return _meter(conn, meter_id)


def _meter(conn: sa.Connection, meter_id: str) -> Entry:
    row = conn.execute(sa.select(catalog_meters).where(catalog_meters.c.meter_id == meter_id)).first()
    if row is None:
        raise CatalogRefusal(f"unknown meter {meter_id!r}", code="unknown_meter")
    return Entry(row.meter_id, dict(row.document), row.created_at, row.archived_at)


# --- plans ----------------------------------------------------------------------------------------------


def create_plan(engine: sa.Engine, definition: Mapping[str, Any], write: Write) -> StoredPlan:
    plan_id = str(definition.get("id"))
    with engine.begin() as conn:
        _ensure_bootstrap(conn, write)
        _refuse_taken(conn, catalog_plans, catalog_plans.c.plan_id, plan_id, "plan")
        _store_plan(conn, definition, write.at)
        record(conn, write.principal, "catalog.plan.create", request_id=write.request_id, plan_id=plan_id)
        return _plan(conn, plan_id)


def add_plan_version(engine: sa.Engine, plan_id: str, definition: Mapping[str, Any], write: Write) -> StoredPlan:
    """A new current version of the plan (new subscriptions get it; existing ones keep theirs until
    migrated). The same definition as the current version adds nothing."""
    if definition.get("id", plan_id) != plan_id:
        raise CatalogRefusal("the id of a version is its plan's", fields=[("id", "must be the plan's id or absent")])
    with engine.begin() as conn:
        _ensure_bootstrap(conn, write)
        before = _plan(conn, plan_id)
        _store_plan(conn, {**definition, "id": plan_id}, write.at)
        after = _plan(conn, plan_id)
        record(conn, write.principal, "catalog.plan.version", request_id=write.request_id, plan_id=plan_id,
               version=after.current_version, previous_version=before.current_version)
        return after


def archive_plan(engine: sa.Engine, plan_id: str, write: Write, *, refuse_in_use: bool = False) -> StoredPlan:
    """Archive a plan: no new subscription can take it, its subscriptions keep it. ``refuse_in_use`` (the
    DELETE): a plan a subscription refers to is refused with ``in_use`` (archive it instead)."""
    with engine.begin() as conn:
        _ensure_bootstrap(conn, write)
        _plan(conn, plan_id)
        if refuse_in_use and catalog_store.plan_in_use(conn, plan_id):
            raise CatalogRefusal(f"plan {plan_id!r} is used by subscriptions: archive it instead", code="in_use")
        catalog_store.archive(conn, "plan", plan_id, write.at)
        record(conn, write.principal, "catalog.plan.archive", request_id=write.request_id, plan_id=plan_id)
        return _plan(conn, plan_id)


def plans(engine: sa.Engine) -> list[StoredPlan]:
    with engine.connect() as conn:
        ids = conn.execute(sa.select(catalog_plans.c.plan_id).order_by(catalog_plans.c.plan_id)).scalars().all()
        return [_plan(conn, plan_id) for plan_id in ids]


def plan(engine: sa.Engine, plan_id: str) -> StoredPlan:
    with engine.connect() as conn:
        return _plan(conn, plan_id)


def _plan(conn: sa.Connection, plan_id: str) -> StoredPlan:
    row = conn.execute(sa.select(catalog_plans).where(catalog_plans.c.plan_id == plan_id)).first()
    if row is None:
        raise CatalogRefusal(f"unknown plan {plan_id!r}", code="unknown_plan")
    versions = conn.execute(sa.select(catalog_plan_versions).where(catalog_plan_versions.c.plan_id == plan_id)
                            .order_by(catalog_plan_versions.c.version)).all()
    return StoredPlan(row.plan_id, int(row.current_version), row.created_at, row.archived_at,
                      [PlanVersion(int(v.version), dict(v.document), v.created_at) for v in versions])


def _store_plan(conn: sa.Connection, definition: Mapping[str, Any], at: datetime) -> None:
    # NOTE: a plan is validated with every stored meter beside it (a catalog document is self-contained).
    stored = catalog_store.stored_entries(conn)
    _store(conn, catalog_document(stored.meters.values(), [definition], ()), at)


# --- coupons --------------------------------------------------------------------------------------------


def create_coupon(engine: sa.Engine, definition: Mapping[str, Any], write: Write) -> Entry:
    coupon_id = str(definition.get("id"))
    with engine.begin() as conn:
        _ensure_bootstrap(conn, write)
        _refuse_taken(conn, catalog_coupons, catalog_coupons.c.coupon_id, coupon_id, "coupon")
        stored = catalog_store.stored_entries(conn)
        _store(conn, catalog_document(stored.meters.values(), stored.plans.values(), [definition]), write.at)
        record(conn, write.principal, "catalog.coupon.create", request_id=write.request_id, coupon_id=coupon_id)
        return _coupon(conn, coupon_id)


def archive_coupon(engine: sa.Engine, coupon_id: str, write: Write) -> Entry:
    with engine.begin() as conn:
        _ensure_bootstrap(conn, write)
        _coupon(conn, coupon_id)
        catalog_store.archive(conn, "coupon", coupon_id, write.at)
        record(conn, write.principal, "catalog.coupon.archive", request_id=write.request_id, coupon_id=coupon_id)
        return _coupon(conn, coupon_id)


def coupons(engine: sa.Engine) -> list[Entry]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(catalog_coupons).order_by(catalog_coupons.c.coupon_id)).all()
    return [Entry(r.coupon_id, dict(r.document), r.created_at, r.archived_at) for r in rows]


def _coupon(conn: sa.Connection, coupon_id: str) -> Entry:
    row = conn.execute(sa.select(catalog_coupons).where(catalog_coupons.c.coupon_id == coupon_id)).first()
    if row is None:
        raise CatalogRefusal(f"unknown coupon {coupon_id!r}", code="unknown_coupon")
    return Entry(row.coupon_id, dict(row.document), row.created_at, row.archived_at)


# --- what new subscriptions may take -----------------------------------------------------------------------


def refuse_archived(is_archived: Callable[[str, str], bool], plan_id: str, coupon_id: str | None = None) -> None:
    """Refuse a subscribe or a plan change to an archived plan (``plan_archived``) or with an archived
    coupon (``coupon_archived``): archived entries stay only for what already refers to them."""
    if is_archived("plan", catalog_store.base_plan_id(plan_id)[0]):
        raise CatalogRefusal(f"plan {plan_id!r} is archived", code="plan_archived",
                             fields=[("plan_id", "archived")])
    if coupon_id is not None and is_archived("coupon", coupon_id):
        raise CatalogRefusal(f"coupon {coupon_id!r} is archived", code="coupon_archived",
                             fields=[("coupon_id", "archived")])


def migration_target(plan_id: str, version: int | None, current_versions: Mapping[str, int]) -> str:
    """The catalog id a subscription on ``plan_id`` (any version) migrates to: ``version`` of its plan, or
    the plan's current version."""
    base, _ = catalog_store.base_plan_id(plan_id)
    return catalog_store.versioned_plan_id(base, version or current_versions.get(base, 1))


def subscription_plan(engine: sa.Engine, subscription_id: str) -> str | None:
    """The plan id (naming its version) a subscription is billed on, from the read model; None: unknown."""
    with engine.connect() as conn:
        return conn.execute(sa.select(subscriptions.c.plan_id)
                            .where(subscriptions.c.subscription_id == subscription_id)).scalar()


@dataclass(frozen=True)
class BulkMigration:
    """The plan changes a bulk migration sent: one command per live subscription on the source version."""

    plan_id: str
    from_version: int
    to_version: int
    timing: str
    commands: list[tuple[str, uuid.UUID]]  # (subscription id, command id)


def migrate_plan(engine: sa.Engine, plan_id: str, from_version: int, to_version: int | None, timing: str,
                 write: Write) -> BulkMigration:
    """Move every live subscription on version ``from_version`` of a plan to ``to_version`` (default: the
    current one): one plan change per subscription, written to the outbox with the audit row.

    # NOTE: each command id is derived from (source, target, timing, subscription), so sending the same
    # migration again adds nothing to the outbox (its event id is unique) and the worker applies each once.
    """
    with engine.begin() as conn:
        stored = _plan(conn, plan_id)
        target_version = to_version or stored.current_version
        known = {v.version for v in stored.versions}
        for field, version in (("from_version", from_version), ("to_version", target_version)):
            if version not in known:
                raise CatalogRefusal(f"plan {plan_id!r} has no version {version}", code="unknown_plan_version",
                                     fields=[(field, "not a version of this plan")])
        if target_version == from_version:
            raise CatalogRefusal("a migration moves to another version",
                                 fields=[("to_version", "must differ from from_version")])
        source = catalog_store.versioned_plan_id(plan_id, from_version)
        target = catalog_store.versioned_plan_id(plan_id, target_version)
        rows = conn.execute(sa.select(subscriptions.c.subscription_id, subscriptions.c.customer_id)
                            .where(sa.func.split_part(subscriptions.c.plan_id, "~", 1) == source,  # price lists too
                                   subscriptions.c.status != "cancelled")
                            .order_by(subscriptions.c.subscription_id)).all()
        commands: list[tuple[str, uuid.UUID]] = []
        messages: list[tuple[str, str, Envelope]] = []
        for row in rows:
            command_id = uuid.uuid5(uuid.NAMESPACE_URL, f"migrate:{source}:{target}:{timing}:{row.subscription_id}")
            change = ChangePlan(subscription_id=row.subscription_id, customer_id=row.customer_id, plan_id=target,
                                timing=timing)
            messages.append((topics.COMMANDS, row.subscription_id, new_envelope(
                TYPE_OF[ChangePlan], change.model_dump(mode="json"), producer=PRODUCER, occurred_at=write.at,
                correlation_id=write.request_id, event_id=command_id)))
            commands.append((row.subscription_id, command_id))
        add_to_outbox(conn, messages)
        record(conn, write.principal, "catalog.plan.migrate", request_id=write.request_id, plan_id=plan_id,
               from_version=from_version, to_version=target_version, timing=timing, subscriptions=len(commands))
        return BulkMigration(plan_id, from_version, target_version, timing, commands)


# --- shared ---------------------------------------------------------------------------------------------


def _ensure_bootstrap(conn: sa.Connection, write: Write) -> None:
    """Store the YAML bootstrap before the first write (then the stored catalog replaces the files)."""
    if catalog_store.current_revision(conn) is None:
        catalog_store.lock_revision(conn)
        if not catalog_store.stored_entries(conn).plans:
            _store(conn, list(write.bootstrap()), write.at, many=True)


def _refuse_taken(conn: sa.Connection, table: sa.Table, key: sa.Column[Any], entry_id: str, kind: str) -> None:
    if conn.execute(sa.select(key).where(key == entry_id)).first() is not None:
        raise CatalogRefusal(f"{kind} {entry_id!r} exists (a price change is a new version; an archived "
                             f"{kind} keeps its id)", code="already_exists", fields=[("id", "already exists")])


def _store(conn: sa.Connection, document: object, at: datetime, *, many: bool = False) -> None:
    documents = list(document) if many and isinstance(document, list) else [document]
    try:
        catalog_store.import_documents(conn, documents, at)
    except CatalogError as error:
        code = refusal_code(error)
        if code in ("meter_changed", "coupon_changed"):
            raise CatalogRefusal(str(error), code=code) from error
        field, reason = catalog_error_field(error)
        raise CatalogRefusal(str(error), fields=[(field, reason)]) from error
