"""Local stack provisioner: Apache Kafka (KRaft), PostgreSQL and stripe-mock without a Docker engine.

    python deploy/stack.py up [--only kafka,postgres,stripe] [--json]
    python deploy/stack.py status [--json]
    python deploy/stack.py down

Kafka comes from Maven Central (deploy/kafka/pom.xml, cached in ~/.m2), PostgreSQL from the Debian
binaries run as an unprivileged OS user, stripe-mock from `go install` (cached in the Go module cache).
Everything lives under $BILLING_STACK_DIR (default var/stack): data, pid files and logs (var/stack/logs).
`up` reuses components that are already healthy, so calling it twice is safe; `down` stops exactly the
processes whose pid files it wrote. When a Docker engine answers and BILLING_STACK_MODE is `auto` or
`docker`, `up`/`down` delegate to docker compose instead.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KAFKA_POM = REPO / "deploy" / "kafka" / "pom.xml"
STRIPE_MOCK_MODULE = "github.com/stripe/stripe-mock@v0.203.0"
PG_BIN_CANDIDATES = [Path("/usr/lib/postgresql") / v / "bin" for v in ("17", "16", "15")]


class StackError(RuntimeError):
    """A component failed; the message names it and where its log is."""


@dataclass(frozen=True)
class StackConfig:
    root: Path
    kafka_port: int
    kafka_controller_port: int
    pg_port: int
    pg_os_user: str
    stripe_port: int
    kafka_heap: str
    mode: str

    @classmethod
    def from_env(cls) -> StackConfig:
        env = os.environ
        root = Path(env.get("BILLING_STACK_DIR", str(REPO / "var" / "stack"))).resolve()
        return cls(
            root=root,
            kafka_port=int(env.get("BILLING_STACK_KAFKA_PORT", "19092")),
            kafka_controller_port=int(env.get("BILLING_STACK_KAFKA_CONTROLLER_PORT", "19093")),
            pg_port=int(env.get("BILLING_STACK_PG_PORT", "15432")),
            pg_os_user=env.get("BILLING_STACK_PG_OS_USER", "billing-pg"),
            stripe_port=int(env.get("BILLING_STACK_STRIPE_PORT", "12111")),
            kafka_heap=env.get("BILLING_STACK_KAFKA_HEAP", "1g"),
            mode=env.get("BILLING_STACK_MODE", "auto"),
        )

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def endpoints(self) -> dict[str, str]:
        return {
            "BILLING_KAFKA_BOOTSTRAP": f"127.0.0.1:{self.kafka_port}",
            "BILLING_DATABASE_URL": f"postgresql+psycopg://billing:billing@127.0.0.1:{self.pg_port}/billing",
            "BILLING_STRIPE_API_BASE": f"http://127.0.0.1:{self.stripe_port}",
        }


def log(msg: str) -> None:
    print(f"[stack] {msg}", file=sys.stderr, flush=True)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def pid_alive(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    # A zombie or a recycled pid of another program is not ours.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.split(") ", 1)[1].startswith("Z"):
            return None
    except (FileNotFoundError, IndexError):
        return None
    return pid


def wait_for(what: str, check: Callable[[], bool], timeout: float, log_file: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise StackError(f"{what} did not become healthy within {timeout:.0f}s; see its log: {log_file}")


def spawn(cmd: list[str], log_file: Path, pid_file: Path, cwd: Path, env: dict[str, str] | None = None) -> int:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd,
            start_new_session=True, env={**os.environ, **(env or {})},
        )
    pid_file.write_text(str(proc.pid))
    return proc.pid


def stop_pid(name: str, pid_file: Path, timeout: float = 20.0) -> None:
    pid = pid_alive(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return
    log(f"stopping {name} (pid {pid})")
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(pid_file):
        time.sleep(0.2)
    if pid_alive(pid_file):
        os.killpg(pid, signal.SIGKILL)
        time.sleep(0.5)
    pid_file.unlink(missing_ok=True)


# --------------------------------------------------------------------------- Kafka


def kraft_cluster_id() -> str:
    """A random KRaft cluster id (16 bytes, URL-safe base64) that does not start with '-'.

    # NOTE: kafka-storage parses `-t <id>` with argparse: an id starting with '-' (1 in 64) is read as an option
    # and the format fails ("argument --cluster-id/-t: expected one argument"): the private brokers' rare
    # "storage format failed" in CI.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


class Kafka:
    name = "kafka"

    def __init__(self, cfg: StackConfig) -> None:
        self.cfg = cfg
        self.dir = cfg.root / "kafka"
        self.lib = self.dir / "lib"
        self.data = self.dir / "data"
        self.pid_file = self.dir / "kafka.pid"
        self.log_file = cfg.logs / "kafka.log"

    def fetch(self) -> None:
        marker = self.lib / ".complete"
        if marker.exists():
            return
        if shutil.which("mvn") is None or shutil.which("java") is None:
            raise StackError("kafka: needs `java` (17+) and `mvn` on PATH to fetch the broker from Maven Central")
        log("kafka: fetching the broker from Maven Central (cached in ~/.m2)")
        self.lib.mkdir(parents=True, exist_ok=True)
        fetch_log = self.cfg.logs / "kafka-fetch.log"
        with open(fetch_log, "wb") as out:
            rc = subprocess.call(
                ["mvn", "-B", "-q", "-f", str(KAFKA_POM), "dependency:copy-dependencies",
                 f"-DoutputDirectory={self.lib}", "-DincludeScope=runtime"],
                stdout=out, stderr=subprocess.STDOUT,
            )
        if rc != 0:
            raise StackError(f"kafka: maven fetch failed (exit {rc}); see {fetch_log}")
        marker.touch()

    def write_config(self) -> Path:
        c = self.cfg
        props = self.dir / "server.properties"
        props.write_text("\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{c.kafka_controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{c.kafka_port},CONTROLLER://127.0.0.1:{c.kafka_controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{c.kafka_port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"log.dirs={self.data}",
            "num.partitions=3",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=12",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            # Topics come from deploy/topics.yaml; a typo in a topic name must fail, not create a topic.
            "auto.create.topics.enable=false",
            "log.retention.check.interval.ms=300000",
            "",
        ]))
        (self.dir / "log4j.properties").write_text("\n".join([
            "log4j.rootLogger=INFO, stdout",
            "log4j.appender.stdout=org.apache.log4j.ConsoleAppender",
            "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout",
            "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n",
            "log4j.logger.kafka=INFO",
            "log4j.logger.org.apache.kafka=INFO",
            "log4j.logger.state.change.logger=WARN",
            "",
        ]))
        return props

    def java(self, *args: str) -> list[str]:
        return [
            "java", f"-Xmx{self.cfg.kafka_heap}", "-Xms256m", "-XX:+UseG1GC",
            f"-Dlog4j.configuration=file:{self.dir / 'log4j.properties'}",
            "-cp", f"{self.lib}/*", *args,
        ]

    def healthy(self) -> bool:
        return pid_alive(self.pid_file) is not None and port_open(self.cfg.kafka_port) and self._metadata_ok()

    def _metadata_ok(self) -> bool:
        try:
            from confluent_kafka.admin import AdminClient
        except ImportError:  # the provisioner also runs before the virtualenv exists
            return True
        try:
            AdminClient({"bootstrap.servers": f"127.0.0.1:{self.cfg.kafka_port}"}).list_topics(timeout=2)
            return True
        except Exception:
            return False

    def up(self) -> None:
        if self.healthy():
            log("kafka: already running")
            return
        if port_open(self.cfg.kafka_port):
            raise StackError(f"kafka: port {self.cfg.kafka_port} is taken by another process")
        self.fetch()
        props = self.write_config()
        if not (self.data / "meta.properties").exists():
            cluster_id = kraft_cluster_id()
            log("kafka: formatting KRaft storage")
            rc = subprocess.call(
                self.java("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)),
                stdout=open(self.log_file, "ab"), stderr=subprocess.STDOUT,
            )
            if rc != 0:  # the log's tail in the message: a test's private broker folder is removed after
                tail = self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""
                raise StackError(f"kafka: storage format failed; see {self.log_file}:\n{tail}")
        log(f"kafka: starting on 127.0.0.1:{self.cfg.kafka_port}")
        spawn(self.java("kafka.Kafka", str(props)), self.log_file, self.pid_file, self.dir)
        wait_for("kafka", self.healthy, 90, self.log_file)
        create_topics(f"127.0.0.1:{self.cfg.kafka_port}")

    def down(self) -> None:
        stop_pid("kafka", self.pid_file, timeout=30)

    def status(self) -> dict[str, object]:
        return {"healthy": self.healthy(), "pid": pid_alive(self.pid_file), "port": self.cfg.kafka_port,
                "log": str(self.log_file)}


def create_topics(bootstrap: str, prefix: str = "", partitions: int | None = None) -> list[str]:
    """Create the declared topics (deploy/topics.yaml); the logic lives in shared.adapters.kafka.admin."""
    sys.path.insert(0, str(REPO))
    from shared.adapters.kafka.admin import create_topics as create

    try:
        return create(bootstrap, prefix=prefix, partitions=partitions)
    except Exception as exc:
        raise StackError(f"kafka: {exc}") from exc


# --------------------------------------------------------------------------- PostgreSQL


class Postgres:
    name = "postgres"

    def __init__(self, cfg: StackConfig) -> None:
        self.cfg = cfg
        self.dir = cfg.root / "postgres"
        self.data = self.dir / "data"
        self.log_file = cfg.logs / "postgres.log"
        self.bin = next((p for p in PG_BIN_CANDIDATES if (p / "pg_ctl").exists()), None)

    def _as_owner(self, cmd: list[str]) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", self.cfg.pg_os_user, "--", *cmd]
        return cmd

    def _ensure_os_user(self) -> None:
        if os.geteuid() != 0:
            return
        try:
            pwd.getpwnam(self.cfg.pg_os_user)
        except KeyError:
            log(f"postgres: creating unprivileged OS user {self.cfg.pg_os_user} (PostgreSQL refuses root)")
            subprocess.check_call(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                                   self.cfg.pg_os_user])

    def _pg(self, tool: str) -> str:
        assert self.bin is not None
        return str(self.bin / tool)

    def healthy(self) -> bool:
        if self.bin is None or not port_open(self.cfg.pg_port):
            return False
        rc = subprocess.call([self._pg("pg_isready"), "-h", "127.0.0.1", "-p", str(self.cfg.pg_port), "-q"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return rc == 0

    def up(self) -> None:
        if self.bin is None:
            raise StackError("postgres: no server binaries under /usr/lib/postgresql/<version>/bin "
                             "(apt-get install postgresql)")
        if self.healthy() and (self.data / "postmaster.pid").exists():
            log("postgres: already running")
            self._bootstrap_db()
            return
        if port_open(self.cfg.pg_port):
            raise StackError(f"postgres: port {self.cfg.pg_port} is taken by another process")
        self._ensure_os_user()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cfg.logs.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.dir, self.cfg.pg_os_user)
            self.log_file.touch()
            shutil.chown(self.log_file, self.cfg.pg_os_user)
        if not (self.data / "PG_VERSION").exists():
            log("postgres: initdb")
            subprocess.check_call(self._as_owner([
                self._pg("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                "--locale=C.UTF-8"]), stdout=open(self.log_file, "ab"), stderr=subprocess.STDOUT)
            with open(self.data / "postgresql.conf", "a") as conf:
                conf.write("\n".join([
                    "", "# written by deploy/stack.py",
                    "listen_addresses = '127.0.0.1'",
                    f"port = {self.cfg.pg_port}",
                    "unix_socket_directories = ''",
                    "max_connections = 400",
                    "shared_buffers = 512MB",
                    "wal_level = minimal", "max_wal_senders = 0",
                    "max_wal_size = 4GB",
                    "checkpoint_timeout = 15min",
                    "log_min_messages = warning",
                    # JIT compiles any plan whose estimate passes jit_above_cost, and ours never run long
                    # enough to pay it back: measured, the scheduler's expiry scan spent ~92 ms compiling
                    # each tick of a 10,000-subscription run. Affects plans only, never what is stored.
                    "jit = off",
                    # per-statement server time, for `python -m bench.run` profiling (CREATE EXTENSION
                    # pg_stat_statements in the database to read it; the app never needs it)
                    "shared_preload_libraries = 'pg_stat_statements'",
                    "",
                ]))
        log(f"postgres: starting on 127.0.0.1:{self.cfg.pg_port}")
        rc = subprocess.call(self._as_owner([
            self._pg("pg_ctl"), "-D", str(self.data), "-l", str(self.log_file), "-w", "-t", "60", "start"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        if rc != 0:
            raise StackError(f"postgres: pg_ctl start failed (exit {rc}); see {self.log_file}")
        wait_for("postgres", self.healthy, 60, self.log_file)
        self._bootstrap_db()

    def psql(self, sql: str, db: str = "postgres") -> str:
        out = subprocess.run(
            [self._pg("psql"), "-h", "127.0.0.1", "-p", str(self.cfg.pg_port), "-U", "postgres", "-d", db,
             "-v", "ON_ERROR_STOP=1", "-tAc", sql], capture_output=True, text=True)
        if out.returncode != 0:
            raise StackError(f"postgres: {sql!r} failed: {out.stderr.strip()}; see {self.log_file}")
        return out.stdout.strip()

    def _bootstrap_db(self) -> None:
        if self.psql("SELECT 1 FROM pg_roles WHERE rolname='billing'") != "1":
            self.psql("CREATE ROLE billing LOGIN PASSWORD 'billing' CREATEDB")
        if self.psql("SELECT 1 FROM pg_database WHERE datname='billing'") != "1":
            self.psql("CREATE DATABASE billing OWNER billing")

    def down(self) -> None:
        if self.bin is None or not (self.data / "postmaster.pid").exists():
            return
        log("stopping postgres")
        subprocess.call(self._as_owner([self._pg("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]),
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def status(self) -> dict[str, object]:
        return {"healthy": self.healthy(), "port": self.cfg.pg_port, "data": str(self.data),
                "log": str(self.log_file)}


# --------------------------------------------------------------------------- stripe-mock


class StripeMock:
    name = "stripe"

    def __init__(self, cfg: StackConfig) -> None:
        self.cfg = cfg
        self.dir = cfg.root / "stripe-mock"
        self.binary = self.dir / "bin" / "stripe-mock"
        self.pid_file = self.dir / "stripe-mock.pid"
        self.log_file = cfg.logs / "stripe-mock.log"

    def build(self) -> None:
        if self.binary.exists():
            return
        if shutil.which("go") is None:
            raise StackError("stripe: needs the `go` toolchain to build stripe-mock")
        log(f"stripe: go install {STRIPE_MOCK_MODULE} (cached in the Go module cache)")
        self.binary.parent.mkdir(parents=True, exist_ok=True)
        build_log = self.cfg.logs / "stripe-mock-build.log"
        with open(build_log, "wb") as out:
            rc = subprocess.call(["go", "install", STRIPE_MOCK_MODULE], stdout=out, stderr=subprocess.STDOUT,
                                 env={**os.environ, "GOBIN": str(self.binary.parent)})
        if rc != 0:
            raise StackError(f"stripe: go install failed (exit {rc}); see {build_log}")

    def healthy(self) -> bool:
        return pid_alive(self.pid_file) is not None and port_open(self.cfg.stripe_port)

    def up(self) -> None:
        if self.healthy():
            log("stripe: already running")
            return
        if port_open(self.cfg.stripe_port):
            raise StackError(f"stripe: port {self.cfg.stripe_port} is taken by another process")
        self.build()
        log(f"stripe: starting stripe-mock on 127.0.0.1:{self.cfg.stripe_port}")
        # stripe-mock always opens an HTTPS listener too (default :12112); pin it next to the HTTP port.
        spawn([str(self.binary), "-http-addr", f"127.0.0.1:{self.cfg.stripe_port}",
               "-https-addr", f"127.0.0.1:{self.cfg.stripe_port + 1}"], self.log_file, self.pid_file, self.dir)
        wait_for("stripe-mock", self.healthy, 30, self.log_file)

    def down(self) -> None:
        stop_pid("stripe-mock", self.pid_file)

    def status(self) -> dict[str, object]:
        return {"healthy": self.healthy(), "pid": pid_alive(self.pid_file), "port": self.cfg.stripe_port,
                "log": str(self.log_file)}


# --------------------------------------------------------------------------- migrations and docker


def migrate(database_url: str) -> None:
    """Apply the Alembic migrations (needs the project's virtualenv)."""
    sys.path.insert(0, str(REPO))
    from shared.adapters.postgres.migrate import upgrade

    upgrade(database_url)


def docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.call(["docker", "info"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) == 0


def compose(*args: str) -> None:
    subprocess.check_call(["docker", "compose", "-f", str(REPO / "docker-compose.yml"), *args])


COMPONENTS = {"kafka": Kafka, "postgres": Postgres, "stripe": StripeMock}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["up", "down", "status", "env"])
    parser.add_argument("--only", default="kafka,postgres,stripe", help="comma-separated components")
    parser.add_argument("--json", action="store_true", help="print endpoints/status as JSON on stdout")
    parser.add_argument("--no-migrate", action="store_true")
    args = parser.parse_args(argv)
    cfg = StackConfig.from_env()
    cfg.logs.mkdir(parents=True, exist_ok=True)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    use_docker = cfg.mode == "docker" or (cfg.mode == "auto" and docker_available())
    try:
        if args.action == "up":
            if use_docker:
                compose("up", "-d", "--wait", "kafka", "postgres", "stripe-mock")
            else:
                for name in names:
                    COMPONENTS[name](cfg).up()
            if "postgres" in names and not args.no_migrate:
                migrate(cfg.endpoints()["BILLING_DATABASE_URL"])
            if use_docker and "kafka" in names:
                create_topics(cfg.endpoints()["BILLING_KAFKA_BOOTSTRAP"])
            if args.json:
                print(json.dumps(cfg.endpoints()))
            else:
                for k, v in cfg.endpoints().items():
                    print(f"export {k}={v}")
        elif args.action == "down":
            if use_docker:
                compose("down")
            for name in reversed(names):
                COMPONENTS[name](cfg).down()
        elif args.action == "env":
            for k, v in cfg.endpoints().items():
                print(f"export {k}={v}")
        else:
            status = {name: COMPONENTS[name](cfg).status() for name in names}
            if args.json:
                print(json.dumps(status))
            else:
                for name, st in status.items():
                    print(f"{name:9} {'healthy' if st['healthy'] else 'down':8} {st}")
            return 0 if all(st["healthy"] for st in status.values()) else 1
    except StackError as exc:
        log(f"FAILED: {exc}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
