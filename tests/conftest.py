"""Session fixtures for real infrastructure.

Endpoints come, in this order, from BILLING_KAFKA_BOOTSTRAP / BILLING_DATABASE_URL /
BILLING_STRIPE_API_BASE when set, from testcontainers when a Docker engine answers, or from the local
provisioner (deploy/stack.py up), which reuses a running stack. Tests are isolated by uuid-named topic
prefixes and consumer groups and by one fresh PostgreSQL schema per test module, never by teardown.
Unit tests request none of these fixtures, so they run without any infrastructure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Endpoints:
    kafka_bootstrap: str
    database_url: str
    stripe_api_base: str
    source: str


def _docker_answers() -> bool:
    if os.environ.get("BILLING_STACK_MODE") == "local":
        return False
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


def _from_testcontainers(stack: list[object]) -> Endpoints:
    from testcontainers.core.container import DockerContainer
    from testcontainers.kafka import KafkaContainer
    from testcontainers.postgres import PostgresContainer

    kafka = KafkaContainer().with_kraft()
    pg = PostgresContainer("postgres:15", username="billing", password="billing", dbname="billing",
                           driver="psycopg")
    stripe = DockerContainer("stripe/stripe-mock:latest").with_exposed_ports(12111)
    for c in (kafka, pg, stripe):
        c.start()
        stack.append(c)
    bootstrap = kafka.get_bootstrap_server()
    return Endpoints(bootstrap, pg.get_connection_url(),
                     f"http://{stripe.get_container_host_ip()}:{stripe.get_exposed_port(12111)}", "testcontainers")


def _from_local_provisioner() -> Endpoints:
    out = subprocess.run([sys.executable, str(REPO / "deploy" / "stack.py"), "up", "--json"],
                         capture_output=True, text=True, env={**os.environ, "BILLING_STACK_MODE": "local"})
    if out.returncode != 0:
        pytest.exit(f"local stack failed to start:\n{out.stderr}", returncode=3)
    env = json.loads(out.stdout.strip().splitlines()[-1])
    return Endpoints(env["BILLING_KAFKA_BOOTSTRAP"], env["BILLING_DATABASE_URL"], env["BILLING_STRIPE_API_BASE"],
                     "local")


@pytest.fixture(scope="session")
def endpoints() -> Iterator[Endpoints]:
    env = os.environ
    if env.get("BILLING_KAFKA_BOOTSTRAP") and env.get("BILLING_DATABASE_URL"):
        yield Endpoints(env["BILLING_KAFKA_BOOTSTRAP"], env["BILLING_DATABASE_URL"],
                        env.get("BILLING_STRIPE_API_BASE", "http://127.0.0.1:12111"), "environment")
        return
    if _docker_answers():
        containers: list[object] = []
        try:
            yield _from_testcontainers(containers)
        finally:
            for c in containers:
                c.stop()  # type: ignore[attr-defined]
        return
    yield _from_local_provisioner()


@pytest.fixture(scope="session")
def kafka_bootstrap(endpoints: Endpoints) -> str:
    return endpoints.kafka_bootstrap


@pytest.fixture(scope="session")
def database_url(endpoints: Endpoints) -> str:
    return endpoints.database_url


@pytest.fixture(scope="session")
def stripe_api_base(endpoints: Endpoints) -> str:
    return endpoints.stripe_api_base


@pytest.fixture(scope="module")
def db_schema(database_url: str) -> Iterator[str]:
    """A fresh schema with all migrations applied, private to the test module."""
    from shared.adapters.postgres.migrate import drop_schema, upgrade

    schema = f"t_{uuid.uuid4().hex[:12]}"
    upgrade(database_url, schema)
    yield schema
    drop_schema(database_url, schema)


@pytest.fixture(scope="module")
def topic_prefix(kafka_bootstrap: str) -> Iterator[str]:
    """A uuid prefix with every declared topic (and DLQ) created, 3 partitions each; deleted afterwards.

    Deleting matters on a reused local broker: ~18,000 leftover partitions made its next start-up take
    longer than the provisioner's health timeout.
    """
    from shared.adapters.kafka.admin import create_topics, delete_topics

    prefix = f"t{uuid.uuid4().hex[:10]}."
    create_topics(kafka_bootstrap, prefix=prefix, partitions=3)
    yield prefix
    delete_topics(kafka_bootstrap, prefix)


@pytest.fixture(scope="module")
def settings(endpoints: Endpoints, db_schema: str, topic_prefix: str):  # type: ignore[no-untyped-def]
    from shared.config import Settings

    return Settings(kafka_bootstrap=endpoints.kafka_bootstrap, database_url=endpoints.database_url,
                    database_schema=db_schema, topic_prefix=topic_prefix,
                    stripe_api_base=endpoints.stripe_api_base, consumer_group=f"g-{uuid.uuid4().hex[:8]}",
                    log_json=False)


@pytest.fixture(scope="module")
def engine(settings):  # type: ignore[no-untyped-def]
    from shared.adapters.postgres.engine import make_engine

    eng = make_engine(settings, pool_size=5)
    yield eng
    eng.dispose()
