"""The billing-run benchmark's CPU figures (issue 17): what each kind of process spent per subscription in the
largest two-process run, and the 100k run the machine's cores would allow at that cost."""

from __future__ import annotations

import os

import pytest

from bench.bench_billing_run import _cpu_metrics

pytestmark = pytest.mark.unit


def test_cpu_per_subscription_by_process_and_the_bound_it_puts_on_a_100k_run() -> None:
    metrics = _cpu_metrics({"worker": 30.0, "postgres": 20.0, "kafka": 2.0}, 50_000)

    assert {name: m["value"] for name, m in metrics.items()} == {
        "billing_run_worker_cpu_us_per_subscription": 600.0,
        "billing_run_postgres_cpu_us_per_subscription": 400.0,
        "billing_run_kafka_cpu_us_per_subscription": 40.0,
        # 1,040 µs per subscription x 100,000 over the cores
        "billing_run_100k_cpu_bound_seconds": round(104.0 / (os.cpu_count() or 1), 1)}


def test_no_bound_when_postgres_or_kafka_run_elsewhere() -> None:
    metrics = _cpu_metrics({"worker": 30.0}, 50_000)

    assert list(metrics) == ["billing_run_worker_cpu_us_per_subscription"]
