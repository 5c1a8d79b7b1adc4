"""Processes on this machine as Linux /proc shows them: their CPU time (the benchmarks' CPU-per-unit figures)
and their children (a py-spy-wrapped worker's real pid)."""

from __future__ import annotations

import os
from pathlib import Path

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | str, *, reaped_children: bool = False) -> float:
    """User + system CPU a process has used so far (every thread), in seconds; 0 once it is gone. With
    `reaped_children`, also what its children that exited and were waited for had used."""
    fields = _stat(pid)
    if not fields:
        return 0.0
    ticks = int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if reaped_children else 0)
    return ticks / TICKS_PER_SECOND


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by a process, its descendants alive now and the ones it reaped: a server that
    runs its work in child processes (uvicorn with several workers) is measured whole."""
    return cpu_seconds(pid, reaped_children=True) + sum(tree_cpu_seconds(child) for child in child_pids(pid))


def postgres_cpu_seconds() -> float | None:
    """CPU seconds used so far by every PostgreSQL process of this machine (None: none visible, e.g. a
    database on another host), including backends and autovacuum workers that have exited since: the
    postmaster reaps them, so their time is in its children's count. Without it a pool that closes its
    overflow connections, or a vacuum that ends, took its CPU out of the measured window."""
    pids = {entry.name for entry in _processes() if _command(entry) == "postgres"}
    return sum(cpu_seconds(pid, reaped_children=_parent(pid) not in pids) for pid in pids) if pids else None


def kafka_cpu_seconds() -> float | None:
    """CPU seconds used so far by the Kafka brokers of this machine (a JVM running `kafka.Kafka`, as the local
    stack starts it; None: none visible, e.g. brokers in containers or on other hosts)."""
    pids = [entry.name for entry in _processes() if _command(entry) == "java" and b"kafka.Kafka" in _argv(entry)]
    return sum(cpu_seconds(pid) for pid in pids) if pids else None


def _stat(pid: int | str) -> list[str]:
    """The fields of /proc/<pid>/stat after the command (state, ppid, ...; [11] utime, [12] stime, [13] cutime,
    [14] cstime); none once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _parent(pid: int | str) -> str:
    fields = _stat(pid)
    return fields[1] if fields else ""


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
