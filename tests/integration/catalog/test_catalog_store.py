"""The catalog in PostgreSQL: the YAML bootstrap imported idempotently, plan versions, archival, the
provider's cached snapshot (real PostgreSQL, a schema of this module)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from shared.adapters.catalog_file import (
    CATALOG_DIR,
    DEFAULT_CATALOG_FILES,
    dump_catalog_document,
    load_default_catalog,
    read_catalog_documents,
)
from shared.adapters.postgres import catalog_store
from shared.adapters.postgres.schema.catalog import catalog_plan_versions, catalog_revision
from shared.domain.errors import CatalogError
from shared.domain.money import Money

AT = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _empty_catalog(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE catalog_plan_versions, catalog_plans, catalog_meters, catalog_coupons, "
                             "catalog_revision"))


def _documents() -> list[Any]:
    return read_catalog_documents(CATALOG_DIR / name for name in DEFAULT_CATALOG_FILES)


def _counts(conn: sa.Connection) -> tuple[int, int]:
    versions = conn.execute(sa.select(sa.func.count()).select_from(catalog_plan_versions)).scalar_one()
    revision = conn.execute(sa.select(catalog_revision.c.revision)).scalar_one()
    return int(versions), int(revision)


def test_importing_the_yaml_twice_changes_nothing_and_reads_back_the_same_catalog(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        assert catalog_store.load_stored_catalog(conn) is None
        first = catalog_store.import_documents(conn, _documents(), AT)
        assert first.changed and "pro" in first.plans_added and "WELCOME20" in first.coupons_added
        before = _counts(conn)
    with engine.begin() as conn:
        second = catalog_store.import_documents(conn, _documents(), AT)
        assert not second.changed
        assert _counts(conn) == before  # no version added, revision not bumped
        stored = catalog_store.load_stored_catalog(conn)
    assert stored == load_default_catalog()
    with engine.begin() as conn:  # an export imported again is no change either
        exported = yaml.safe_load(dump_catalog_document(catalog_store.export_document(conn)))
        assert not catalog_store.import_documents(conn, [exported], AT).changed


def test_a_changed_price_is_a_new_current_version_and_the_old_one_is_kept(engine: sa.Engine) -> None:
    documents = _documents()
    changed = copy.deepcopy(documents)
    pro = next(p for p in changed[0]["plans"] if p["id"] == "pro")
    pro["price"] = "12.00"
    with engine.begin() as conn:
        catalog_store.import_documents(conn, documents, AT)
        changes = catalog_store.import_documents(conn, changed, AT)
        assert changes.versions_added == [("pro", 2)] and not changes.plans_added
        stored = catalog_store.load_stored_catalog(conn)
        assert stored is not None  # version 1 keeps the plan's id (its subscriptions keep it), 2 is "pro@v2"
        assert (stored.plan("pro").price, stored.plan("pro@v2").price) == (Money.of("9.00", "USD"),
                                                                           Money.of("12.00", "USD"))
        assert catalog_store.load_plan_version(conn, "pro", 1).price == Money.of("9.00", "USD")
        assert [v for v, _, _ in catalog_store.plan_versions(conn, "pro")] == [1, 2]
        assert not catalog_store.import_documents(conn, changed, AT).changed


def test_a_meter_may_be_renamed_but_not_reaggregated(engine: sa.Engine) -> None:
    documents = _documents()
    renamed = copy.deepcopy(documents)
    renamed[0]["meters"][0]["name"] = "GPU compute"
    reaggregated = copy.deepcopy(documents)
    reaggregated[0]["meters"][0]["value_property"] = "other"
    with engine.begin() as conn:
        catalog_store.import_documents(conn, documents, AT)
        assert catalog_store.import_documents(conn, renamed, AT).meters_updated == ["inference"]
        with pytest.raises(CatalogError) as refused:
            catalog_store.import_documents(conn, reaggregated, AT)
        assert refused.value.code == "meter_changed"


def test_the_provider_serves_the_yaml_until_something_is_stored_then_reloads_on_a_new_revision(
        engine: sa.Engine) -> None:
    fallback = load_default_catalog()
    ticks = iter(range(0, 10_000, 10))
    provider = catalog_store.CatalogProvider(engine, fallback, refresh_seconds=5, monotonic=lambda: next(ticks))
    assert provider.current() is fallback
    documents = _documents()
    with engine.begin() as conn:
        catalog_store.import_documents(conn, documents, AT)
    assert provider.current() == fallback  # reloaded from PostgreSQL (equal, another object)
    assert provider.current() is not fallback
    changed = copy.deepcopy(documents)
    next(p for p in changed[0]["plans"] if p["id"] == "pro")["price"] = "15.00"
    with engine.begin() as conn:
        catalog_store.import_documents(conn, changed, AT)
    assert provider.refresh().plan("pro@v2").price == Money.of("15.00", "USD")
    assert provider.versions["pro"] == 2


def test_the_bootstrap_is_imported_only_while_nothing_is_stored(engine: sa.Engine) -> None:
    assert catalog_store.import_if_empty(engine, _documents, AT) is True
    with engine.connect() as conn:
        before = _counts(conn)
    assert catalog_store.import_if_empty(engine, lambda: [{"version": 1, "plans": []}], AT) is False
    with engine.connect() as conn:
        assert _counts(conn) == before


def test_billing_catalog_import_twice_changes_nothing_and_export_reads_back(
        engine: sa.Engine, database_url: str, db_schema: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from typer.testing import CliRunner

    from services.cli import app

    # the test's own database, whatever the environment says (a stack on other ports, no BILLING_* exported)
    monkeypatch.setenv("BILLING_DATABASE_URL", database_url)
    monkeypatch.setenv("BILLING_DATABASE_SCHEMA", db_schema)
    monkeypatch.setenv("BILLING_CLOCK", "real")
    runner = CliRunner()
    first = runner.invoke(app, ["catalog", "import", str(CATALOG_DIR)])
    assert first.exit_code == 0, first.output
    assert json.loads(first.output)["changed"] is True
    second = runner.invoke(app, ["catalog", "import", str(CATALOG_DIR)])
    assert second.exit_code == 0 and json.loads(second.output)["changed"] is False, second.output
    exported = runner.invoke(app, ["catalog", "export"])
    assert exported.exit_code == 0, exported.output
    document = yaml.safe_load(exported.output)
    assert {p["id"] for p in document["plans"]} == {str(p) for p in load_default_catalog().plans}
