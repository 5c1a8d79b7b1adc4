"""The CLI's table cells are readable values, never JSON documents."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from services.tables import cell, row_cells

pytestmark = pytest.mark.unit


def test_nested_values_become_words_and_numbers() -> None:
    assert cell({"total": 600, "by_kind": {"org": 318, "user": 282}}) == "total 600, by kind (org 318, user 282)"
    assert cell([{"meter_id": "inference", "units": Decimal("12.500")}, {"meter_id": "storage"}]) == \
        "meter id inference, units 12.5; meter id storage"
    assert cell({"empty": {}, "none": None}) == "empty, none"


def test_scalars_print_plainly() -> None:
    assert (cell(1234567), cell(Decimal("64959.418786")), cell(Decimal("10.00")), cell(None), cell(True)) == \
        ("1,234,567", "64,959.418786", "10", "", "true")
    assert cell(datetime(2026, 1, 31, 12, 0, 5, 123, tzinfo=UTC)) == "2026-01-31T12:00:05+00:00"


def test_an_amount_in_minor_units_prints_as_money_of_its_row_currency() -> None:
    headers, cells = row_cells(["invoice_id", "status", "total_minor", "currency"], ["inv_1", "paid", 123456, "USD"])
    assert headers == ["invoice_id", "status", "total", "currency"]
    assert cells == ["inv_1", "paid", "USD 1,234.56", "USD"]
    assert row_cells(["total_minor"], [5]) == (["total_minor"], ["5"])  # no currency: the number as it is


def test_clock_advance_prints_the_new_instant_not_a_dictionary(monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx
    from typer.testing import CliRunner

    from services.cli import app

    def answer(url: str, **_: object) -> httpx.Response:
        assert url.endswith("/v1/clock/advance")
        return httpx.Response(200, json={"clock": "simulated", "now": "2026-01-02T00:00:00+00:00"})

    monkeypatch.setattr(httpx, "post", answer)
    result = CliRunner().invoke(app, ["clock", "advance", "1d"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "simulated clock now 2026-01-02T00:00:00+00:00"
