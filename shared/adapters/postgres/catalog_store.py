"""The catalog in PostgreSQL: entries stored as the documents they were validated from, plans as versions.

Every write goes through `shared.domain.catalog` (`catalog_entries`, `Catalog.from_dict`): the rules of the
YAML files are the rules of the API. Writers lock the `catalog_revision` row first (one writer at a time)
and bump it when something changed, so readers' caches (`CatalogProvider`) know when to reload.

- A plan's price, fee, credits or pricing change is a new version (`version` = last + 1, made current);
  existing versions are never updated.
- A meter or a coupon may change its name or description only: anything else is a new meter or coupon
  (code ``meter_changed`` / ``coupon_changed``).
- Importing the same documents twice changes nothing (content hashes of the canonical JSON).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from shared.adapters.postgres.schema.billing import subscriptions
from shared.adapters.postgres.schema.catalog import (
    catalog_coupons,
    catalog_meters,
    catalog_plan_versions,
    catalog_plans,
    catalog_revision,
)
from shared.domain.catalog import CURRENCY_SEPARATOR, Catalog, Plan, PlanId, catalog_document, catalog_entries
from shared.domain.errors import CatalogError

#: What may change on a meter or a coupon without making it another one.
_RENAMEABLE = frozenset({"name", "description"})


def content_hash(entry: Mapping[str, object]) -> str:
    """The hash of an entry's canonical JSON (sorted keys): equal entries hash equal across imports."""
    text = json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class CatalogChanges:
    """What a write did; all empty: nothing changed (the revision was not bumped)."""

    meters_added: list[str] = field(default_factory=list)
    meters_updated: list[str] = field(default_factory=list)
    plans_added: list[str] = field(default_factory=list)
    versions_added: list[tuple[str, int]] = field(default_factory=list)
    coupons_added: list[str] = field(default_factory=list)
    coupons_updated: list[str] = field(default_factory=list)
    archived: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any((self.meters_added, self.meters_updated, self.plans_added, self.versions_added,
                    self.coupons_added, self.coupons_updated, self.archived))


# --- revision -------------------------------------------------------------------------------------------


def lock_revision(conn: sa.Connection) -> int:
    """Lock the revision row (created at the first write) for this transaction; returns the revision."""
    conn.execute(pg_insert(catalog_revision).values(id=1, revision=0).on_conflict_do_nothing())
    return int(conn.execute(sa.select(catalog_revision.c.revision).where(catalog_revision.c.id == 1)
                            .with_for_update()).scalar_one())


def bump_revision(conn: sa.Connection, at: datetime) -> None:
    conn.execute(sa.update(catalog_revision).where(catalog_revision.c.id == 1)
                 .values(revision=catalog_revision.c.revision + 1, changed_at=at))


def current_revision(conn: sa.Connection) -> int | None:
    """The revision, or None when nothing was ever stored (the YAML bootstrap applies)."""
    value = conn.execute(sa.select(catalog_revision.c.revision).where(catalog_revision.c.id == 1)).scalar()
    return None if value is None else int(value)


# --- reads ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredEntries:
    """Every stored entry: meters and coupons by id, plans at their current version."""

    meters: dict[str, dict[str, Any]]
    plans: dict[str, dict[str, Any]]
    coupons: dict[str, dict[str, Any]]
    meter_archived: dict[str, datetime | None]
    plan_archived: dict[str, datetime | None]
    coupon_archived: dict[str, datetime | None]
    plan_versions: dict[str, int]
    plan_hashes: dict[str, str]

    def document(self) -> dict[str, object]:
        return catalog_document(self.meters.values(), self.plans.values(), self.coupons.values())


def stored_entries(conn: sa.Connection) -> StoredEntries:
    meters = conn.execute(sa.select(catalog_meters).order_by(catalog_meters.c.meter_id)).all()
    plans = conn.execute(
        sa.select(catalog_plans.c.plan_id, catalog_plans.c.current_version, catalog_plans.c.archived_at,
                  catalog_plan_versions.c.document, catalog_plan_versions.c.content_hash)
        .join(catalog_plan_versions, sa.and_(catalog_plan_versions.c.plan_id == catalog_plans.c.plan_id,
                                             catalog_plan_versions.c.version == catalog_plans.c.current_version))
        .order_by(catalog_plans.c.plan_id)).all()
    coupons = conn.execute(sa.select(catalog_coupons).order_by(catalog_coupons.c.coupon_id)).all()
    return StoredEntries(
        meters={r.meter_id: dict(r.document) for r in meters},
        plans={r.plan_id: dict(r.document) for r in plans},
        coupons={r.coupon_id: dict(r.document) for r in coupons},
        meter_archived={r.meter_id: r.archived_at for r in meters},
        plan_archived={r.plan_id: r.archived_at for r in plans},
        coupon_archived={r.coupon_id: r.archived_at for r in coupons},
        plan_versions={r.plan_id: int(r.current_version) for r in plans},
        plan_hashes={r.plan_id: r.content_hash for r in plans},
    )


#: Separates a plan id from its version in the id a subscription pinned to a later version bills under.
VERSION_SEPARATOR = "@v"


def versioned_plan_id(plan_id: str, version: int) -> str:
    """The catalog id of one version of a plan: the plan's own id for version 1 (every plan of the YAML
    files, every subscription made before a price change), "<plan>@v<version>" for a later one."""
    return plan_id if version == 1 else f"{plan_id}{VERSION_SEPARATOR}{version}"


def base_plan_id(plan_id: str) -> tuple[str, int]:
    """(plan id, version) of a catalog plan id: "pro@v2" -> ("pro", 2), "pro" -> ("pro", 1); a price list in
    another currency is its plan's: "pro@v2~EUR" -> ("pro", 2)."""
    plan_id = plan_id.split(CURRENCY_SEPARATOR, 1)[0]
    base, separator, version = plan_id.rpartition(VERSION_SEPARATOR)
    if separator and version.isdigit():
        return base, int(version)
    return plan_id, 1


def load_stored_catalog(conn: sa.Connection) -> Catalog | None:
    """The stored catalog, or None when nothing was ever stored: every meter and coupon (archived ones
    too: subscriptions and invoices still refer to them) and every VERSION of every plan, version 1 under
    the plan's id and version n > 1 under "<plan>@v<n>" (`versioned_plan_id`).

    # NOTE: a subscription keeps the version it was sold (its plan id names it), so a price change never
    # changes what a subscription is billed until it is migrated (a plan change to the new version's id,
    # at the period end by default: the period under way is billed at the old version).
    """
    if current_revision(conn) is None:
        return None
    entries = stored_entries(conn)
    rows = conn.execute(sa.select(catalog_plan_versions).order_by(catalog_plan_versions.c.plan_id,
                                                                  catalog_plan_versions.c.version)).all()
    first = [dict(r.document) for r in rows if r.version == 1]
    catalog = Catalog.from_dict(catalog_document(entries.meters.values(), first, entries.coupons.values()))
    later = [r for r in rows if r.version > 1]
    if not later:
        return catalog
    versions = Catalog.from_dict(catalog_document(
        entries.meters.values(), [{**r.document, "id": f"{r.plan_id}.v{r.version}"} for r in later], ()))
    plans = dict(catalog.plans)
    for r in later:
        versioned = PlanId(versioned_plan_id(r.plan_id, int(r.version)))
        plans[versioned] = replace(versions.plan(f"{r.plan_id}.v{r.version}"), id=versioned)
        for currency in r.document.get("prices") or {}:  # its price lists in other currencies: "<plan>@v<n>~EUR"
            variant = PlanId(f"{versioned}{CURRENCY_SEPARATOR}{currency}")
            plans[variant] = replace(versions.plan(f"{r.plan_id}.v{r.version}{CURRENCY_SEPARATOR}"
                                                   f"{currency}"), id=variant)
    return Catalog(catalog.meters, MappingProxyType(plans), catalog.coupons)


def current_versions(conn: sa.Connection) -> dict[str, int]:
    """plan id -> its current version (what new subscriptions get)."""
    return {r.plan_id: int(r.current_version)
            for r in conn.execute(sa.select(catalog_plans.c.plan_id, catalog_plans.c.current_version))}


def plan_versions(conn: sa.Connection, plan_id: str) -> list[tuple[int, dict[str, Any], datetime]]:
    """(version, document, created_at) of every version of a plan, oldest first."""
    rows = conn.execute(sa.select(catalog_plan_versions).where(catalog_plan_versions.c.plan_id == plan_id)
                        .order_by(catalog_plan_versions.c.version)).all()
    return [(int(r.version), dict(r.document), r.created_at) for r in rows]


def load_plan_version(conn: sa.Connection, plan_id: str, version: int) -> Plan:
    """One version of a plan as the domain reads it (validated with today's meters)."""
    document = conn.execute(sa.select(catalog_plan_versions.c.document).where(
        catalog_plan_versions.c.plan_id == plan_id, catalog_plan_versions.c.version == version)).scalar()
    if document is None:
        raise CatalogError(f"unknown version {version} of plan {plan_id!r}", code="unknown_plan_version")
    entries = stored_entries(conn)
    return Catalog.from_dict(catalog_document(entries.meters.values(), [document], ())).plan(plan_id)


def archived_entries(conn: sa.Connection) -> frozenset[tuple[str, str]]:
    """("meter" | "plan" | "coupon", id) of every archived entry: kept for what refers to them, refused to
    new subscriptions."""
    found: set[tuple[str, str]] = set()
    for kind, table, key in (("meter", catalog_meters, catalog_meters.c.meter_id),
                             ("plan", catalog_plans, catalog_plans.c.plan_id),
                             ("coupon", catalog_coupons, catalog_coupons.c.coupon_id)):
        found.update((kind, entry_id) for entry_id in
                     conn.execute(sa.select(key).where(table.c.archived_at.is_not(None))).scalars())
    return frozenset(found)


# --- writes ---------------------------------------------------------------------------------------------


def import_documents(conn: sa.Connection, documents: Sequence[object], at: datetime) -> CatalogChanges:
    """Store what these catalog documents define (the YAML bootstrap, or one API write as a document):
    new entries added, a changed plan as a new current version, unchanged entries left alone. The
    documents are validated like YAML files (and merged: an id defined twice is an error); the result,
    with what was stored before, must validate as one catalog. Runs in the caller's transaction."""
    Catalog.merge(Catalog.from_dict(document) for document in documents)
    lock_revision(conn)
    before = stored_entries(conn)
    changes = CatalogChanges()
    for document in documents:
        entries = catalog_entries(document)
        for meter_id, meter in entries.meters.items():
            _put_renameable(conn, catalog_meters, catalog_meters.c.meter_id, meter_id, dict(meter),
                            before.meters.get(meter_id), "meter", changes.meters_added, changes.meters_updated, at)
        for plan_id, plan in entries.plans.items():
            _put_plan(conn, plan_id, dict(plan), before, at, changes)
        for coupon_id, coupon in entries.coupons.items():
            _put_renameable(conn, catalog_coupons, catalog_coupons.c.coupon_id, coupon_id, dict(coupon),
                            before.coupons.get(coupon_id), "coupon", changes.coupons_added, changes.coupons_updated, at)
    if changes.changed:
        Catalog.from_dict(stored_entries(conn).document())  # NOTE: the whole stored catalog stays valid
        bump_revision(conn, at)
    return changes


def _put_renameable(conn: sa.Connection, table: sa.Table, key: sa.Column[Any], entry_id: str,
                    entry: dict[str, Any], stored: dict[str, Any] | None, kind: str, added: list[str],
                    updated: list[str], at: datetime) -> None:
    digest = content_hash(entry)
    if stored is None:
        conn.execute(table.insert().values({key.name: entry_id, "document": entry, "content_hash": digest,
                                            "created_at": at}))
        added.append(entry_id)
        return
    if content_hash(stored) == digest:
        return
    if {k: v for k, v in stored.items() if k not in _RENAMEABLE} != {
            k: v for k, v in entry.items() if k not in _RENAMEABLE}:
        raise CatalogError(f"{kind}s[{entry_id}]: only the name and description of a {kind} can change "
                           f"(create a new {kind} for anything else)", code=f"{kind}_changed")
    conn.execute(sa.update(table).where(key == entry_id).values(document=entry, content_hash=digest))
    updated.append(entry_id)


def _put_plan(conn: sa.Connection, plan_id: str, plan: dict[str, Any], before: StoredEntries, at: datetime,
              changes: CatalogChanges) -> None:
    digest = content_hash(plan)
    current = before.plan_versions.get(plan_id)
    if current is None:
        conn.execute(catalog_plans.insert().values(plan_id=plan_id, current_version=1, created_at=at))
        conn.execute(catalog_plan_versions.insert().values(plan_id=plan_id, version=1, document=plan,
                                                           content_hash=digest, created_at=at))
        changes.plans_added.append(plan_id)
        return
    if before.plan_hashes[plan_id] == digest:
        return
    last = int(conn.execute(sa.select(sa.func.max(catalog_plan_versions.c.version))
                            .where(catalog_plan_versions.c.plan_id == plan_id)).scalar_one())
    conn.execute(catalog_plan_versions.insert().values(plan_id=plan_id, version=last + 1, document=plan,
                                                       content_hash=digest, created_at=at))
    conn.execute(sa.update(catalog_plans).where(catalog_plans.c.plan_id == plan_id)
                 .values(current_version=last + 1))
    before.plan_versions[plan_id] = last + 1
    before.plan_hashes[plan_id] = digest
    changes.versions_added.append((plan_id, last + 1))


def plan_in_use(conn: sa.Connection, plan_id: str) -> bool:
    """Does a subscription refer to the plan (as its plan or its scheduled one)?"""
    return bool(conn.execute(sa.select(sa.literal(1)).where(sa.or_(
        subscriptions.c.plan_id == plan_id, subscriptions.c.pending_plan_id == plan_id)).limit(1)).first())


def archive(conn: sa.Connection, kind: str, entry_id: str, at: datetime) -> bool:
    """Archive a meter, plan or coupon (kept, refused to new subscriptions); False when it is unknown.
    Archiving twice keeps the first instant."""
    table, key = {"meter": (catalog_meters, catalog_meters.c.meter_id),
                  "plan": (catalog_plans, catalog_plans.c.plan_id),
                  "coupon": (catalog_coupons, catalog_coupons.c.coupon_id)}[kind]
    lock_revision(conn)
    exists = conn.execute(sa.select(table.c.archived_at).where(key == entry_id)).first()
    if exists is None:
        return False
    if exists.archived_at is None:
        conn.execute(sa.update(table).where(key == entry_id).values(archived_at=at))
        bump_revision(conn, at)
    return True


# --- the YAML bootstrap ---------------------------------------------------------------------------------


def export_document(conn: sa.Connection) -> dict[str, object]:
    """One catalog document of what is stored (plans at their current version), importable again."""
    return stored_entries(conn).document()


def import_if_empty(engine: sa.Engine, documents: Callable[[], Iterable[object]], at: datetime) -> bool:
    """Import the bootstrap documents when nothing was ever stored; True if this call imported them."""
    with engine.begin() as conn:
        if current_revision(conn) is not None:
            return False
        lock_revision(conn)
        if stored_entries(conn).plans:
            return False
        import_documents(conn, list(documents()), at)
        return True


# --- the read path --------------------------------------------------------------------------------------


class CatalogProvider:
    """A cached snapshot of the stored catalog for a service's readers.

    The snapshot is reloaded when the revision changed, checked at most every ``refresh_seconds`` by
    ``current()`` and at once by ``refresh()`` (call it on a miss: an unknown plan or meter), so an entry
    created through the API is usable by the next request or command. Until anything is stored, the
    ``fallback`` catalog (the YAML files) is served.
    """

    def __init__(self, engine: sa.Engine, fallback: Catalog, *, refresh_seconds: float = 5.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._engine = engine
        self._fallback = fallback
        self._refresh_seconds = refresh_seconds
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._catalog = fallback
        self._revision: int | None = None
        self._checked_at: float | None = None
        self.archived: frozenset[tuple[str, str]] = frozenset()  # ("plan" | "coupon" | "meter", id)
        self.versions: dict[str, int] = {}  # plan id -> current version (empty: the YAML files, all version 1)

    def current(self, conn: sa.Connection | None = None) -> Catalog:
        """The snapshot, its revision compared first when ``refresh_seconds`` passed since the last check
        (on ``conn`` when given: the worker checks on each batch's own connection)."""
        now = self._monotonic()
        if self._checked_at is None or now - self._checked_at >= self._refresh_seconds:
            return self.refresh(conn)
        return self._catalog

    def refresh(self, conn: sa.Connection | None = None) -> Catalog:
        """Compare the revision now and reload the snapshot if it moved."""
        with self._lock:
            if conn is None:
                with self._engine.connect() as own:
                    self._reload_if_moved(own)
            else:
                self._reload_if_moved(conn)
            self._checked_at = self._monotonic()
            return self._catalog

    def _reload_if_moved(self, conn: sa.Connection) -> None:
        revision = current_revision(conn)
        if revision is not None and revision != self._revision:
            loaded = load_stored_catalog(conn)
            self._catalog = loaded if loaded is not None else self._fallback
            self.archived = archived_entries(conn)
            self.versions = current_versions(conn)
            self._revision = revision
