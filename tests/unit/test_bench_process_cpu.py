"""The benchmarks' CPU accounting (issues 17 and 18): a process that exited inside the measured window still
counts, through its parent's count of reaped children (PostgreSQL's backends are the postmaster's), and a
server's worker processes count in the server's CPU."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench.process_cpu import cpu_seconds, tree_cpu_seconds

pytestmark = pytest.mark.unit


def test_a_child_that_exited_and_was_waited_for_counts_in_its_parents_reaped_children() -> None:
    me = os.getpid()
    before_own, before_all = cpu_seconds(me), cpu_seconds(me, reaped_children=True)

    subprocess.run([sys.executable, "-c", "import time\nend = time.process_time() + 0.3\n"
                    "while time.process_time() < end: pass"], check=True)

    assert cpu_seconds(me, reaped_children=True) - before_all >= 0.25
    assert cpu_seconds(me) - before_own < 0.25  # the parent itself only waited


def test_a_servers_cpu_counts_the_worker_processes_it_runs_its_work_in() -> None:
    # a supervisor that only waits, and a worker under it that works and stays alive (uvicorn --workers 2)
    worker = ("import sys, time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"
              "print('worked', flush=True)\nsys.stdin.read()")
    supervisor = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {worker!r}])"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert supervisor.stdout is not None and supervisor.stdout.readline() == "worked\n"
        assert cpu_seconds(supervisor.pid) < 0.25  # the supervisor alone: what the benchmark counted before
        assert tree_cpu_seconds(supervisor.pid) >= 0.25
    finally:
        supervisor.communicate("", timeout=30)
