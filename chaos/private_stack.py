"""A private Kafka + PostgreSQL + stripe-mock for the fault suite, built with deploy/stack.py's classes.

The outage scenarios stop and start the broker and the database, so they can never use the shared
development stack (ports 19092/15432/12111) that other people's tests run against. This stack lives in
var/chaos/stack, listens on its own ports, and only its own components are ever stopped.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent
STACK_DIR = REPO / "var" / "chaos" / "stack"
SHARED_STACK_DIR = REPO / "var" / "stack"


def _load_provisioner() -> ModuleType:
    """deploy/stack.py is a script, not a package: load it by path (its classes are the API we need)."""
    spec = importlib.util.spec_from_file_location("billing_stack_provisioner", REPO / "deploy" / "stack.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class PrivatePorts:
    kafka: int = int(os.environ.get("CHAOS_KAFKA_PORT", "29092"))
    kafka_controller: int = int(os.environ.get("CHAOS_KAFKA_CONTROLLER_PORT", "29093"))
    postgres: int = int(os.environ.get("CHAOS_PG_PORT", "25432"))
    stripe: int = int(os.environ.get("CHAOS_STRIPE_PORT", "22111"))

    def shared_stack_collision(self) -> str | None:
        shared = {19092, 19093, 15432, 12111, 12112}
        mine = {self.kafka, self.kafka_controller, self.postgres, self.stripe, self.stripe + 1}
        clash = shared & mine
        return f"ports {sorted(clash)} belong to the shared stack" if clash else None


class PrivateStack:
    """Up/down of the whole private stack, and stop/start of one component for an outage."""

    def __init__(self, ports: PrivatePorts | None = None, root: Path = STACK_DIR) -> None:
        self.ports = ports or PrivatePorts()
        if (clash := self.ports.shared_stack_collision()) is not None:
            raise ValueError(f"the chaos stack must not touch the shared stack: {clash}")
        self._provisioner = _load_provisioner()
        self.config = self._provisioner.StackConfig(
            root=root.resolve(), kafka_port=self.ports.kafka, kafka_controller_port=self.ports.kafka_controller,
            pg_port=self.ports.postgres, pg_os_user=os.environ.get("BILLING_STACK_PG_OS_USER", "billing-pg"),
            stripe_port=self.ports.stripe, kafka_heap="768m", mode="local")
        self.kafka = self._provisioner.Kafka(self.config)
        self.postgres = self._provisioner.Postgres(self.config)
        self.stripe = self._provisioner.StripeMock(self.config)

    def endpoints(self) -> dict[str, str]:
        return dict(self.config.endpoints())

    def up(self) -> None:
        self.config.logs.mkdir(parents=True, exist_ok=True)
        self._reuse_shared_downloads()
        self.postgres.up()
        self.kafka.up()
        self.stripe.up()

    def down(self) -> None:
        self.stripe.down()
        self.kafka.down()
        self.postgres.down()

    def _reuse_shared_downloads(self) -> None:
        """Copy the broker's jars and the stripe-mock binary from the shared stack's folder when it has
        them (read only), so a first chaos run needs no network and no Go build."""
        jars, marker = SHARED_STACK_DIR / "kafka" / "lib", SHARED_STACK_DIR / "kafka" / "lib" / ".complete"
        if marker.exists() and not (self.kafka.lib / ".complete").exists():
            shutil.copytree(jars, self.kafka.lib, dirs_exist_ok=True)
        binary = SHARED_STACK_DIR / "stripe-mock" / "bin" / "stripe-mock"
        if binary.exists() and not self.stripe.binary.exists():
            self.stripe.binary.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(binary, self.stripe.binary)
