"""Settings: one frozen object per process, read from `BILLING_*` environment variables.

Built once in each service's composition root (`bootstrap.py`) and passed down; nothing reads the
environment anywhere else. This is also the only place that renders librdkafka configuration.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.domain.dunning import DunningPolicy

REPO_ROOT = Path(__file__).resolve().parent.parent
_DUNNING_DEFAULTS = DunningPolicy()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BILLING_", frozen=True, extra="ignore")

    # --- infrastructure
    kafka_bootstrap: str = "127.0.0.1:19092"
    database_url: str = "postgresql+psycopg://billing:billing@127.0.0.1:15432/billing"
    database_schema: str | None = Field(
        default=None, description="PostgreSQL schema (search_path); tests use one schema per module")
    database_pool_size: int = 20
    # A host that stops answering (rather than refusing) would otherwise hold a connection attempt for the
    # OS's TCP timeout (about 2 minutes): every outage path waits this long at most per attempt instead.
    database_connect_timeout_s: int = Field(default=5, ge=1, le=300)
    topic_prefix: str = Field(default="", description="prefix for every topic name; tests use a uuid")

    # --- stripe
    stripe_api_key: SecretStr = SecretStr("sk_test_123")
    stripe_api_base: str = "http://127.0.0.1:12111"
    stripe_webhook_secret: SecretStr = SecretStr("whsec_local_dev_secret")
    payment_gateway: Literal["stripe", "simulated"] = "simulated"
    payment_rate_limit_per_s: float = Field(
        default=100.0, ge=0, description="the provider account's operations per second (Stripe: 100 live, 25 "
                                         "test mode); a charge is 2 (create + confirm); 0: unpaced")
    payment_executor_processes: int = Field(
        default=1, ge=1, description="worker processes charging the same provider account: each paces its "
                                     "calls at payment_rate_limit_per_s / this")
    payment_concurrency: int = Field(
        default=32, ge=1, description="charges the payment executor keeps in flight (threads); enough for the "
                                      "rate limit at the provider's latency: limit / calls per charge x latency")
    simulated_gateway_rate_limit_per_s: float = Field(
        default=0.0, ge=0, description="the simulated provider's own limit (429 beyond it); 0: none")

    # --- time
    clock: Literal["real", "simulated"] = "real"
    simulated_clock_start: str = "2026-01-01T00:00:00+00:00"

    # --- edge
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    http_workers: int = Field(
        default=1, ge=1, description="edge processes sharing the port (uvicorn workers); one per core on a "
                                     "machine of its own, 1 in a pod scaled by replicas")
    admin_api_key: SecretStr = SecretStr("admin-dev-key-change-me")
    portal_secret: SecretStr = Field(
        default=SecretStr("portal-dev-secret-change-me"),
        description="HMAC key of the customer usage-page links (POST /v1/customers/{id}/portal-links); "
                    "rotating it revokes every link")
    console_secret: SecretStr | None = Field(
        default=None, description="HMAC key of the operator console's session cookies and CSRF tokens; unset: "
                                  "a random one per process (sessions end with the process)")
    console_session_seconds: int = Field(default=28_800, ge=60, description="console session lifetime")
    command_wait_seconds: float = 3.0
    max_request_bytes: int = 1_048_576
    max_batch_events: int = 1000
    quota_group_commit: bool = Field(
        default=True, description="report-credit batches of the orgs ready while a write is in flight are "
                                  "committed in one statement (false: one statement per org's batch)")
    quota_leases: bool = Field(
        default=True, description="report credits of busy orgs are decided from memory under leases (blocks of "
                                  "the month reserved in PostgreSQL) and written by one pipelined group commit")
    quota_lease_seconds: float = Field(
        default=5.0, gt=0.5, le=300, description="life of a report-credit lease by the database clock; a "
                                                 "crashed edge's unused reports come back after it")
    spend_keep_warm_seconds: float = Field(
        default=60.0, ge=0, description="spend authorisations: orgs authorised within this many seconds are read "
                                        "ahead even when idle, so that many orgs coming back together do not all "
                                        "read on the request path (0: only busy orgs are read ahead)")
    quota_lease_min_rate: float = Field(
        default=1000.0, ge=0, description="report credits per second one edge process must see for an org before "
                                          "it asks for that org's leases; below it the exact path decides")

    # --- worker
    consumer_group: str = "billing-worker"
    worker_batch_max: int = 5000
    worker_batch_timeout_s: float = 0.05
    scheduler_interval_s: float = 1.0
    scheduler_full_sweep_s: float = Field(
        default=10.0, gt=0, description="wall-clock seconds between two sweeps of every due period end; the ticks "
                                        "between them look only at period ends that fell due since the last sweep")
    # how stale the worker's set of subscriptions with an enabled auto-recharge may be (usage-path hints)
    auto_recharge_refresh_s: float = Field(default=5.0, ge=0)
    period_close_grace_s: float = Field(default=0.0, ge=0)
    invoice_grace_seconds: int = Field(
        default=0, ge=0, le=90 * 86_400,
        description="how long a period-close invoice stays draft after its period ends (late usage of the period "
                    "still lands on it); a customer's own setting overrides it; 0: finalised at the close")
    worker_member_id: str | None = Field(
        default=None, description="Kafka static membership (group.instance.id), e.g. the pod name: a restart "
                                  "with the same id resumes its partitions without a rebalance")
    worker_session_timeout_ms: int | None = Field(
        default=None, description="how soon a silent worker loses its partitions (librdkafka default 45 s)")
    worker_relay: bool = Field(default=True, description="run the outbox relay in this worker process")
    worker_partition_assignment: Literal["cooperative-sticky", "range"] = Field(
        default="cooperative-sticky",
        description="how the workers' group shares partitions: cooperative-sticky balances the total count and "
                    "moves few partitions on a join, but may give one worker every commands.v1 partition; range "
                    "splits each topic evenly (a billing run's closes shared by every worker), eager rebalances")
    worker_attempts_before_parking: int = Field(
        default=5, ge=1, description="failed attempts of a batch (transient error, database answering) before "
                                     "the message at fault is parked in the DLQ as retries_exhausted")
    worker_health_port: int | None = Field(
        default=None, description="serve /healthz and /readyz on this port in the worker process (off: None)")
    worker_health_host: str = "127.0.0.1"

    # --- dunning / notifications (days after the first failed payment); the defaults are the domain's
    dunning_retry_days: tuple[int, ...] = _DUNNING_DEFAULTS.retry_offsets_days
    dunning_notify_days: tuple[int, ...] = _DUNNING_DEFAULTS.notify_offsets_days
    dunning_give_up_day: int = _DUNNING_DEFAULTS.give_up_after_days
    invoice_issuer_name: str = Field(default="OpenLedger Billing", min_length=1, max_length=200)
    dunning_reconcile_uncollectible_days: int = Field(default=30, ge=0)
    dunning_web_port: int | None = Field(
        default=None, description="serve the dunning service's readiness (GET /readyz) on this port; off when unset")
    notifier: Literal["log", "webhook", "smtp"] = "log"
    notify_webhook_url: str | None = None
    notify_webhook_secret: SecretStr = SecretStr("notify-dev-secret")
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 8025
    smtp_sender: str = "billing@localhost"

    # --- catalog
    catalog_dir: Path = REPO_ROOT / "shared" / "catalogs"

    log_level: str = "INFO"
    log_json: bool = True

    def to_env(self) -> dict[str, str]:
        """The BILLING_* environment that rebuilds these settings in a child process (secrets included;
        sequences and mappings as JSON, which is how pydantic-settings reads complex values)."""
        env: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if isinstance(value, list | tuple | dict):
                text = json.dumps(value)
            elif isinstance(value, bool):
                text = str(value).lower()
            else:
                text = str(value)
            env[f"BILLING_{name.upper()}"] = text
        return env

    def topic(self, name: str) -> str:
        """The physical topic name for a logical one (e.g. `usage.v1`)."""
        return f"{self.topic_prefix}{name}"

    @cached_property
    def database_session_options(self) -> str:
        """libpq `options` of every session: the schema, and UTC as the session time zone.

        # NOTE: instants come back in the session's zone. A server set to "Etc/UTC" (Debian's default) gives
        # psycopg a ZoneInfo, and comparing or converting those against the domain's `datetime.UTC` costs
        # ~330 ns each instead of ~20 (a billing run makes hundreds per close); "UTC" gives `datetime.UTC`
        # itself. A server in another zone gives the same instants, now in UTC as the domain wants them."""
        options = "-ctimezone=UTC"
        if self.database_schema:
            options += f" -csearch_path={self.database_schema}"
        return options

    @cached_property
    def sqlalchemy_connect_args(self) -> dict[str, Any]:
        return {"connect_timeout": self.database_connect_timeout_s, "options": self.database_session_options}

    def kafka_producer_config(self, **overrides: Any) -> dict[str, Any]:
        """Idempotent producer: no duplicates or reordering per partition on retry, acks from all ISRs."""
        return {
            "bootstrap.servers": self.kafka_bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
            "batch.size": 262144,
            "message.timeout.ms": 30000,
            **overrides,
        }

    def kafka_consumer_config(self, group_id: str, **overrides: Any) -> dict[str, Any]:
        """Offsets are stored in PostgreSQL with the effects, so Kafka auto-commit stays off."""
        return {
            "bootstrap.servers": self.kafka_bootstrap,
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "partition.assignment.strategy": "cooperative-sticky",
            "fetch.min.bytes": 1,
            "max.partition.fetch.bytes": 4_194_304,
            **overrides,
        }

    def kafka_admin_config(self) -> dict[str, Any]:
        return {"bootstrap.servers": self.kafka_bootstrap}
