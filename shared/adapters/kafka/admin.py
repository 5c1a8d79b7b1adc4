"""Create the topics declared in deploy/topics.yaml (and their DLQs) that do not exist yet.

Used by the local provisioner, `billing migrate` (the Kubernetes migrate job), the test fixtures (with a
uuid prefix and fewer partitions) and the benchmarks.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from shared.config import REPO_ROOT
from shared.errors import InfrastructureError

TOPICS_FILE = Path(os.environ.get("BILLING_TOPICS_FILE", REPO_ROOT / "deploy" / "topics.yaml"))


def declared_topics(prefix: str = "", partitions: int | None = None, path: Path = TOPICS_FILE
                    ) -> dict[str, dict[str, Any]]:
    """Physical topic name -> {partitions, replication_factor, config}, DLQs included."""
    spec = yaml.safe_load(path.read_text())
    defaults, dlq = spec["defaults"], spec["dlq"]
    out: dict[str, dict[str, Any]] = {}
    for t in spec["topics"]:
        out[prefix + t["name"]] = {
            "partitions": partitions or t.get("partitions", defaults["partitions"]),
            "replication_factor": defaults["replication_factor"],
            "config": {k: str(v) for k, v in (t.get("config") or {}).items()}}
        if t.get("dlq"):
            out[prefix + t["name"] + dlq["suffix"]] = {
                "partitions": partitions or dlq["partitions"], "replication_factor": defaults["replication_factor"],
                "config": {k: str(v) for k, v in (dlq.get("config") or {}).items()}}
    return out


def create_topics(bootstrap: str, prefix: str = "", partitions: int | None = None) -> list[str]:
    wanted = declared_topics(prefix, partitions)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = set(admin.list_topics(timeout=10).topics)
    missing = [NewTopic(name, t["partitions"], t["replication_factor"], config=t["config"])
               for name, t in wanted.items() if name not in existing]
    if missing:
        _settle(admin.create_topics(missing, operation_timeout=30), "create", tolerated="TOPIC_ALREADY_EXISTS")
        _until_listed(admin, [topic.topic for topic in missing])
    return list(wanted)


def _until_listed(admin: AdminClient, names: list[str], timeout_s: float = 30.0) -> None:
    """Wait until the broker's metadata lists every topic in ``names``.

    # NOTE: the controller acknowledges a creation before every broker's metadata has it. A process started at
    # once (the demo's dunning service) saw no topic, took an empty assignment and never asked again; on a
    # loaded machine the gap lasted seconds (the demo failed twice in a row while a test suite ran).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        listed = admin.list_topics(timeout=10).topics
        absent = [name for name in names if name not in listed or listed[name].error is not None]
        if not absent:
            return
        if time.monotonic() > deadline:
            raise InfrastructureError(f"topics created but not listed by the broker after {timeout_s:.0f} s: "
                                      f"{absent[:5]}")
        time.sleep(0.2)


def delete_topics(bootstrap: str, prefix: str) -> list[str]:
    """Delete every topic whose name starts with ``prefix`` (a test's or benchmark's private namespace).

    Refuses an empty prefix: this is for throw-away namespaces, never for the deployment's own topics.
    """
    if not prefix:
        raise ValueError("refusing to delete topics without a prefix")
    admin = AdminClient({"bootstrap.servers": bootstrap})
    doomed = [name for name in admin.list_topics(timeout=10).topics if name.startswith(prefix)]
    if doomed:
        _settle(admin.delete_topics(doomed, operation_timeout=30), "delete", tolerated="UNKNOWN_TOPIC_OR_PART")
    return doomed


def _settle(futures: dict[str, Any], verb: str, *, tolerated: str) -> None:
    """Wait for every topic operation; the error code ``tolerated`` means it is already done."""
    for name, fut in futures.items():
        try:
            fut.result()
        except Exception as exc:
            if tolerated not in str(exc):
                raise InfrastructureError(f"could not {verb} topic {name}: {exc}") from exc
