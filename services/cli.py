"""`billing`: the operator CLI (the demo uses it too).

    billing up | down | status          the local stack (Kafka, PostgreSQL, stripe-mock)
    billing migrate                     apply migrations, create the declared topics, store the YAML catalog
    billing ingest | worker | dunning | webhooks   run one service in the foreground
    billing clock now | advance 1d      the simulated billing clock
    billing customers | subscriptions | invoices   look around (read-only SQL)
    billing demo                        the simulated billing month (see services/demo)
    billing catalog import DIR | export  the catalog in PostgreSQL from / to YAML documents
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from shared.config import Settings

REPO = Path(__file__).resolve().parent.parent
STACK = REPO / "deploy" / "stack.py"

app = typer.Typer(help="Operator CLI of the billing engine: the local stack, the three services, the billing "
                  "clock and read-only views of customers, subscriptions and invoices.", no_args_is_help=True)
clock_app = typer.Typer(help="The billing clock (simulated clocks only move forward).", no_args_is_help=True)
app.add_typer(clock_app, name="clock")
catalog_app = typer.Typer(help="The catalog stored in PostgreSQL and its YAML bootstrap files.", no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")
console = Console()


def _settings() -> Settings:
    return Settings()


def _stack(*args: str) -> int:
    return subprocess.call([sys.executable, str(STACK), *args])


@app.command()
def up(only: Annotated[str, typer.Option(help="components: kafka,postgres,stripe")] = "kafka,postgres,stripe"
       ) -> None:
    """Start the local stack (reuses healthy components; safe to run twice)."""
    raise typer.Exit(_stack("up", "--only", only))


@app.command()
def down() -> None:
    """Stop exactly the stack processes `up` started."""
    raise typer.Exit(_stack("down"))


@app.command()
def status() -> None:
    """Health of each stack component, with its port and log file."""
    raise typer.Exit(_stack("status"))


@app.command()
def migrate() -> None:
    """Apply the database migrations and create the topics of deploy/topics.yaml."""
    from shared.adapters.catalog_file import read_catalog_documents
    from shared.adapters.kafka.admin import create_topics
    from shared.adapters.postgres.catalog_store import import_if_empty
    from shared.adapters.postgres.migrate import upgrade
    from shared.bootstrap import build_clock, build_engine

    s = _settings()
    upgrade(s.database_url, s.database_schema)
    created = create_topics(s.kafka_bootstrap, prefix=s.topic_prefix)
    # NOTE: the YAML catalogs are the bootstrap of the catalog stored in PostgreSQL: imported once, when
    # nothing is stored yet (later changes go through the catalog API or `billing catalog import`).
    engine = build_engine(s, pool_size=1)
    imported = import_if_empty(engine, lambda: read_catalog_documents(sorted(s.catalog_dir.glob("*.yaml"))),
                               build_clock(s, engine).now())
    engine.dispose()
    console.print(f"migrations applied; {len(created)} topics present"
                  + ("; catalog imported from the YAML files" if imported else ""))


@app.command()
def ingest() -> None:
    """Run the HTTP edge (uvicorn) in the foreground."""
    from services.ingest.__main__ import main

    main()


@app.command()
def worker() -> None:
    """Run a billing worker (consumer, scheduler, payment executor, outbox relay)."""
    from services.billing_worker.__main__ import main

    main([])


@app.command()
def dunning() -> None:
    """Run the dunning service (faust-streaming)."""
    from services.dunning.__main__ import main

    main()


@app.command()
def webhooks() -> None:
    """Run the outgoing webhooks service (fan-out consumer of billing events and the delivery dispatcher)."""
    from services.webhooks.__main__ import main

    main()


_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    """`90s`, `15m`, `12h`, `1d`, `2w` -> timedelta."""
    match = _DURATION.match(text.strip())
    if not match:
        raise typer.BadParameter(f"{text!r} is not a duration like 30m, 12h, 1d or 2w")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


@clock_app.command("now")
def clock_now() -> None:
    """Print the billing clock."""
    from shared.bootstrap import build_clock, build_engine

    s = _settings()
    console.print(build_clock(s, build_engine(s, pool_size=1)).now().isoformat())


@clock_app.command("advance")
def clock_advance(
    duration: Annotated[str, typer.Argument(help="how far: 30m, 12h, 1d, 2w")],
    url: Annotated[str, typer.Option(help="the edge's base URL")] = "http://127.0.0.1:8080",
) -> None:
    """Advance the simulated billing clock through the edge (admin key from BILLING_ADMIN_API_KEY)."""
    import httpx

    s = _settings()
    delta = parse_duration(duration)
    resp = httpx.post(f"{url}/v1/clock/advance", json={"seconds": int(delta.total_seconds())},
                      headers={"Authorization": f"Bearer {s.admin_api_key.get_secret_value()}"}, timeout=30)
    if resp.status_code >= 400:
        console.print(f"[red]{resp.status_code}[/red] {resp.text}")
        raise typer.Exit(1)
    answer = resp.json()
    console.print(f"{answer.get('clock', 'billing')} clock now {answer.get('now')}")


def _print_rows(title: str, sql: str, params: dict[str, object]) -> None:
    import sqlalchemy as sa

    from services.tables import row_cells
    from shared.adapters.postgres.engine import make_engine

    engine = make_engine(_settings(), pool_size=1)
    with engine.connect() as conn:
        result = conn.execute(sa.text(sql), params)
        columns = list(result.keys())
        rows = [row_cells(columns, tuple(row)) for row in result]
    table = Table(title=title)
    for header in rows[0][0] if rows else columns:
        table.add_column(header)
    for _, cells in rows:
        table.add_row(*cells)
    console.print(table)


@app.command()
def customers(limit: int = 20) -> None:
    """The most recently onboarded customers."""
    _print_rows("customers", "SELECT customer_id, external_id, kind, name, email, currency, created_at "
                "FROM customers ORDER BY created_at DESC LIMIT :limit", {"limit": limit})


@app.command()
def subscriptions(limit: int = 20, status_filter: Annotated[str | None, typer.Option("--status")] = None) -> None:
    """Subscriptions, optionally of one status (ACTIVE, PAST_DUE, ...)."""
    where = "WHERE status = :status" if status_filter else ""
    _print_rows("subscriptions", f"SELECT subscription_id, customer_id, plan_id, status, seats, "
                f"current_period_start, current_period_end FROM subscriptions {where} "
                "ORDER BY current_period_end LIMIT :limit", {"limit": limit, "status": status_filter})


@app.command()
def invoices(limit: int = 20, status_filter: Annotated[str | None, typer.Option("--status")] = None) -> None:
    """Invoices, newest first, optionally of one status (OPEN, PAID, UNCOLLECTIBLE, ...)."""
    where = "WHERE status = :status" if status_filter else ""
    _print_rows("invoices", f"SELECT invoice_id, number, subscription_id, status, total_minor, currency "
                f"FROM invoices {where} ORDER BY created_at DESC LIMIT :limit",
                {"limit": limit, "status": status_filter})


@app.command()
def demo(
    keep_stack: Annotated[bool, typer.Option(help="leave the local stack running afterwards")] = False,
    customers_count: Annotated[int, typer.Option("--customers", help="how many customers to onboard")] = 600,
) -> None:
    """Bill a realistic simulated month end to end and audit the result (writes var/demo/)."""
    from services.demo import run_demo

    raise typer.Exit(run_demo(customers=customers_count, keep_stack=keep_stack))


@catalog_app.command("import")
def catalog_import(directory: Annotated[Path, typer.Argument(help="a folder of catalog *.yaml files")]) -> None:
    """Store the catalog documents of a folder (idempotent: unchanged entries add nothing; a changed plan
    becomes its new current version; a meter or coupon may change only its name and description)."""
    from shared.adapters.catalog_file import read_catalog_documents
    from shared.adapters.postgres.catalog_store import import_documents
    from shared.bootstrap import build_clock, build_engine

    s = _settings()
    engine = build_engine(s, pool_size=1)
    documents = read_catalog_documents(sorted(directory.glob("*.yaml")))
    with engine.begin() as conn:
        changes = import_documents(conn, documents, build_clock(s, engine).now())
    engine.dispose()
    console.print(json.dumps({"changed": changes.changed, "meters_added": changes.meters_added,
                              "meters_updated": changes.meters_updated, "plans_added": changes.plans_added,
                              "versions_added": [f"{p}@{v}" for p, v in changes.versions_added],
                              "coupons_added": changes.coupons_added, "coupons_updated": changes.coupons_updated}))


@catalog_app.command("export")
def catalog_export() -> None:
    """Print the stored catalog as one YAML document (plans at their current version)."""
    from shared.adapters.catalog_file import dump_catalog_document
    from shared.adapters.postgres.catalog_store import export_document
    from shared.bootstrap import build_engine

    engine = build_engine(_settings(), pool_size=1)
    with engine.connect() as conn:
        document = export_document(conn)
    engine.dispose()
    sys.stdout.write(dump_catalog_document(document))


if __name__ == "__main__":
    app()
