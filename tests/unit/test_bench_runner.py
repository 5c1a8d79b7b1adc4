"""`make bench`'s runner (issue 17): a failing benchmark marks its own metrics failed, the others are still
measured and reported, and the run exits 1; every output folder is made before any benchmark runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import run as runner

pytestmark = pytest.mark.unit


def quick(ctx: Any) -> dict[str, dict[str, Any]]:
    return {"quick_per_s": {"value": 200, "unit": "ops/s", "baseline": "base_per_s"},
            "base_per_s": {"value": 100, "unit": "ops/s", "baseline": None}}


def broken(ctx: Any) -> dict[str, dict[str, Any]]:
    raise RuntimeError("the worker did not catch up within 600 s")


broken.metrics = ["broken_events_per_s", "broken_peak_rss_mb"]  # type: ignore[attr-defined]


def test_a_failing_area_marks_its_metrics_failed_the_others_are_reported_and_the_run_exits_1(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    metrics: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    runner.measure("bench_broken", broken, None, metrics, errors)
    runner.measure("bench_quick", quick, None, metrics, errors)
    out = tmp_path / "var" / "bench"  # does not exist yet, as on a fresh clone

    assert runner.report(metrics, errors, out) == 1

    written = json.loads((out / "results.json").read_text())
    assert written["failed"] == ["bench_broken"]
    assert "RuntimeError: the worker did not catch up" in written["errors"]["bench_broken"]
    for name in ("broken_events_per_s", "broken_peak_rss_mb"):
        assert written["metrics"][name]["failed"] is True and written["metrics"][name]["value"] is None
    assert (written["metrics"]["quick_per_s"]["value"], written["metrics"]["quick_per_s"]["ratio"]) == (200, 2.0)
    table = capsys.readouterr().out
    assert [line.split()[:2] for line in table.splitlines() if line.startswith("broken_")] == [
        ["broken_events_per_s", "FAILED"], ["broken_peak_rss_mb", "FAILED"]]


def test_a_run_without_failures_exits_0(tmp_path: Path) -> None:
    metrics: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    runner.measure("bench_quick", quick, None, metrics, errors)
    assert runner.report(metrics, errors, tmp_path / "out") == 0
    assert json.loads((tmp_path / "out" / "results.json").read_text())["failed"] == []


def test_an_area_that_declares_no_metrics_fails_under_its_own_name() -> None:
    def anonymous(ctx: Any) -> dict[str, dict[str, Any]]:
        raise ValueError("boom")
    metrics: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    runner.measure("bench_anonymous", anonymous, None, metrics, errors)
    assert metrics["bench_anonymous"]["failed"] is True and "ValueError: boom" in metrics["bench_anonymous"]["error"]


def test_a_module_that_cannot_be_imported_fails_alone() -> None:
    area = runner._area("bench_does_not_exist")
    metrics: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    runner.measure("bench_does_not_exist", area, None, metrics, errors)
    assert list(errors) == ["bench_does_not_exist"] and metrics["bench_does_not_exist"]["failed"] is True


def test_the_output_folder_exists_before_the_stack_is_even_asked_for(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "var" / "bench"

    def no_stack() -> dict[str, str]:
        raise SystemExit("no stack in a unit test")
    monkeypatch.setattr(runner, "OUT", out)
    monkeypatch.setattr(runner, "_endpoints", no_stack)
    with pytest.raises(SystemExit):
        runner.main(["bench.run", "materialize"])
    assert out.is_dir()


def test_the_benchmarks_this_part_owns_declare_the_metrics_they_report() -> None:
    from bench import bench_ingest, bench_materialize, bench_payments

    assert "materialize_events_per_s" in bench_materialize.METRICS
    assert "ingest_pipeline_events_per_s" in bench_ingest.METRICS
    assert "billing_run_paid_seconds" in bench_payments.METRICS
