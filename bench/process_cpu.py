"""Processes on this machine as Linux /proc shows them: their CPU time (the benchmarks' CPU-per-unit figures)
and their children (a py-spy-wrapped worker's real pid)."""

from __future__ import annotations

import os
from pathlib import Path

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | str) -> float:
    """User + system CPU a process has used so far (every thread), in seconds; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_SECOND


def postgres_cpu_seconds() -> float | None:
    """CPU seconds used so far by every PostgreSQL process of this machine (None: none visible, e.g. a
    database on another host)."""
    pids = [entry.name for entry in _processes() if _command(entry) == "postgres"]
    return sum(cpu_seconds(pid) for pid in pids) if pids else None


def kafka_cpu_seconds() -> float | None:
    """CPU seconds used so far by the Kafka brokers of this machine (a JVM running `kafka.Kafka`, as the local
    stack starts it; None: none visible, e.g. brokers in containers or on other hosts)."""
    pids = [entry.name for entry in _processes() if _command(entry) == "java" and b"kafka.Kafka" in _argv(entry)]
    return sum(cpu_seconds(pid) for pid in pids) if pids else None


def _processes() -> list[Path]:
    return [entry for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _command(entry: Path) -> str:
    try:
        return (entry / "comm").read_text().strip()
    except OSError:
        return ""


def _argv(entry: Path) -> list[bytes]:
    try:
        return (entry / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def child_pids(pid: int) -> list[int]:
    """The pids of a process's children (none once it is gone)."""
    try:
        return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]
    except OSError:
        return []
