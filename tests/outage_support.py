"""Private infrastructure that a test may stop and start: outage tests must never touch the shared stack.

    from tests.outage_support import private_postgres

    @pytest.fixture(scope="module")
    def pg():
        with private_postgres() as pg:   # initdb + start: a few seconds
            yield pg

    schema = pg.migrate()                # a fresh migrated schema (like tests/conftest.py's db_schema)
    settings = Settings(database_url=pg.url, database_schema=schema, ...)
    pg.stop()                            # fast shutdown: sessions get 57P01, new connections are refused
    pg.start()                           # same data, same port
    with pg.outage(seconds=5): ...       # stop, run the block (or sleep), start again

`private_kafka()` does the same for a KRaft broker (`.bootstrap`, `.create_topics(prefix)`, `.stop()`,
`.start()`); it reuses the shared stack's broker jars, so nothing is downloaded, but a start takes ~10-20 s.

Each instance lives in its own folder under /tmp with free ports and is removed afterwards. They are driven by
deploy/stack.py's own classes, so they behave like the shared stack's components.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _load_stack_module():  # type: ignore[no-untyped-def]
    """deploy/stack.py is a script, not a package: load it under a name of its own."""
    name = "billing_deploy_stack"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "deploy" / "stack.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


stack = _load_stack_module()


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports: every socket stays bound until all are chosen (two calls of a one-port
    helper may return the same port, and a broker whose listener and controller share a port fails to format)."""
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(count):
            s = held.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            ports.append(int(s.getsockname()[1]))
        return ports


def _private_root(kind: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix=f"billing-private-{kind}-"))
    # PostgreSQL runs as an unprivileged OS user when we are root: it must be able to reach its folder.
    os.chmod(root, 0o755)
    return root


def _config(root: Path, **ports: int) -> stack.StackConfig:
    return stack.StackConfig(
        root=root,
        kafka_port=ports.get("kafka_port", 0),
        kafka_controller_port=ports.get("kafka_controller_port", 0),
        pg_port=ports.get("pg_port", 0),
        pg_os_user=os.environ.get("BILLING_STACK_PG_OS_USER", "billing-pg"),
        stripe_port=0,
        kafka_heap=os.environ.get("BILLING_PRIVATE_KAFKA_HEAP", "512m"),
        mode="local",
    )


class PrivatePostgres:
    """A PostgreSQL server of this test's own: `.url` (SQLAlchemy psycopg URL), `.stop()`, `.start()`."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self._pg = stack.Postgres(_config(root, pg_port=port))
        self.url = f"postgresql+psycopg://billing:billing@127.0.0.1:{port}/billing"

    @property
    def log_file(self) -> Path:
        return self._pg.log_file

    def start(self) -> None:
        """Start (initdb on first call) and wait until it accepts connections; the data survives stops."""
        self._pg.up()

    def stop(self, mode: str = "fast") -> None:
        """`fast` ends every session (SQLSTATE 57P01) and refuses new ones; `immediate` is a crash (recovery
        on the next start). Returns once the server is down."""
        self._pg.cfg.logs.mkdir(parents=True, exist_ok=True)
        rc = stack.subprocess.call(
            self._pg._as_owner([self._pg._pg("pg_ctl"), "-D", str(self._pg.data), "-m", mode, "-w", "stop"]),
            stdout=stack.subprocess.DEVNULL, stderr=stack.subprocess.DEVNULL)
        if rc != 0 and self.healthy():
            raise stack.StackError(f"private postgres: pg_ctl stop failed (exit {rc}); see {self.log_file}")

    def healthy(self) -> bool:
        return self._pg.healthy()

    @contextlib.contextmanager
    def outage(self, seconds: float = 0.0, mode: str = "fast") -> Iterator[None]:
        """Stop the server, run the block (then wait out the rest of `seconds`), start it again."""
        started = time.monotonic()
        self.stop(mode)
        try:
            yield
            remaining = seconds - (time.monotonic() - started)
            if remaining > 0:
                time.sleep(remaining)
        finally:
            self.start()

    def migrate(self, schema: str | None = None) -> str:
        """Create a fresh schema (or the named one) with every migration applied; returns its name."""
        from shared.adapters.postgres.migrate import upgrade

        schema = schema or f"t_{uuid.uuid4().hex[:12]}"
        upgrade(self.url, schema)
        return schema

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A started private PostgreSQL (role and database `billing`, trust auth on 127.0.0.1), removed after."""
    pg = PrivatePostgres(_private_root("pg"), free_port())
    try:
        pg.start()
        yield pg
    finally:
        pg.close()


class PrivateKafka:
    """A KRaft broker of this test's own: `.bootstrap`, `.create_topics(prefix)`, `.stop()`, `.start()`."""

    def __init__(self, root: Path, port: int, controller_port: int) -> None:
        self.root = root
        self._kafka = stack.Kafka(_config(root, kafka_port=port, kafka_controller_port=controller_port))
        self.bootstrap = f"127.0.0.1:{port}"
        shared_lib = stack.Kafka(stack.StackConfig.from_env()).lib
        if (shared_lib / ".complete").exists():  # reuse the shared stack's jars instead of a Maven fetch
            self._kafka.dir.mkdir(parents=True, exist_ok=True)
            self._kafka.lib.symlink_to(shared_lib, target_is_directory=True)

    @property
    def log_file(self) -> Path:
        return self._kafka.log_file

    def start(self) -> None:
        self._kafka.cfg.logs.mkdir(parents=True, exist_ok=True)
        self._kafka.up()

    def stop(self) -> None:
        self._kafka.down()

    def healthy(self) -> bool:
        return self._kafka.healthy()

    @contextlib.contextmanager
    def outage(self, seconds: float = 0.0) -> Iterator[None]:
        started = time.monotonic()
        self.stop()
        try:
            yield
            remaining = seconds - (time.monotonic() - started)
            if remaining > 0:
                time.sleep(remaining)
        finally:
            self.start()

    def create_topics(self, prefix: str, partitions: int = 3) -> list[str]:
        from shared.adapters.kafka.admin import create_topics

        return create_topics(self.bootstrap, prefix=prefix, partitions=partitions)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def private_kafka() -> Iterator[PrivateKafka]:
    """A started private Kafka broker with the declared topics (no prefix) created, removed after."""
    kafka = PrivateKafka(_private_root("kafka"), *free_ports(2))
    try:
        kafka.start()
        yield kafka
    finally:
        kafka.close()
