"""The demo's printed summary reads as sentences: counts with separators, money with its currency, no JSON.
The figures are a real run's `var/demo/summary.json` (600 customers, 2026-12-06)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.demo.summary_text import summary_rows

pytestmark = pytest.mark.unit

SUMMARY = json.loads((Path(__file__).resolve().parents[2] / "fixtures" / "demo_summary.json").read_text())


def test_every_row_is_text_without_a_json_document() -> None:
    rows = summary_rows(SUMMARY)
    assert [label for label, _ in rows][:4] == ["customers", "invoices", "revenue USD", "usage events"]
    for label, text in rows:
        assert not any(mark in text for mark in ("{", "}", '"', "[", "]")), (label, text)


def test_the_rows_say_what_the_figures_are() -> None:
    rows = dict(summary_rows(SUMMARY))
    assert rows["customers"] == ("600 (318 orgs, 282 users); subscriptions active 579, cancelled 21 "
                                 "(31 on pro@v2)")
    assert rows["invoices"] == ("1,248: 1,233 paid, 12 uncollectible, 3 void (600 subscription start, "
                                "596 period close, 42 subscription change, 10 manual)")
    assert rows["revenue USD"].startswith("invoiced USD 234,014.98, collected USD 232,754.47, outstanding USD 0.00")
    assert rows["reports"] == ("allowed 21,135; denied 19,976 (user limit 12,112, org limit 7,818, "
                               "trial exhausted 2, trial expired 44); top-ups 15")
    assert rows["credits"] == ("inference USD 8,539.69 granted, USD 1,523.05 consumed, USD 2,708.87 expired; "
                               "reports 845 granted; storage 4,185,880 granted, 64,959.42 consumed")
    assert rows["payments"] == "attempts: 809 succeeded, 56 declined"
    assert rows["reconciliation"] == ("3 invoices found paid at the provider and settled, of 3 paid there "
                                      "without a webhook")
    assert "6 refunded (USD 308.95, 6 refunds succeeded), 6 credited to balances (USD 307.18 held)" in \
        rows["corrections"]
    assert rows["throughput"].endswith("wall time 14 min 15 s")
    assert rows["invariants"].startswith("all 15 true: no duplicate invoice per subscription and period, ")


def test_a_failed_invariant_is_named_with_its_violations() -> None:
    failing = {**SUMMARY, "invariants": {**SUMMARY["invariants"], "no_quota_overspend": 3}}
    assert dict(summary_rows(failing))["invariants"] == "14 of 15 true; FAILED: no quota overspend (3 violations)"


def test_the_screenshots_row_names_the_files_and_any_failure() -> None:
    taken = {**SUMMARY, "screenshots": {"customer_id": "cus_1", "errors": [],
                                        "written": ["var/demo/screens/usage-january.png",
                                                    "var/demo/screens/overview.png"]}}
    assert dict(summary_rows(taken))["screenshots"] == \
        "2 written under var/demo/screens/ (usage-january.png, overview.png; customer cus_1)"
    failed = {**SUMMARY, "screenshots": {"errors": ["Error: no chromium"]}}
    assert dict(summary_rows(failed))["screenshots"] == "none written; not taken: Error: no chromium"
