"""The benchmarks' CPU accounting (issues 17 and 18): a process that exited inside the measured window still
counts, through its parent's count of reaped children (PostgreSQL's backends are the postmaster's)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench.process_cpu import cpu_seconds

pytestmark = pytest.mark.unit


def test_a_child_that_exited_and_was_waited_for_counts_in_its_parents_reaped_children() -> None:
    me = os.getpid()
    before_own, before_all = cpu_seconds(me), cpu_seconds(me, reaped_children=True)

    subprocess.run([sys.executable, "-c", "import time\nend = time.process_time() + 0.3\n"
                    "while time.process_time() < end: pass"], check=True)

    assert cpu_seconds(me, reaped_children=True) - before_all >= 0.25
    assert cpu_seconds(me) - before_own < 0.25  # the parent itself only waited
