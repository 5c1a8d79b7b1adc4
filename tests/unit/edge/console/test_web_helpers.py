"""The console's small pure helpers: amounts typed by an operator, money and date cells, the days a period
touches, where a login may send the browser next."""

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from services.ingest.console.actions import minor_amount
from services.ingest.console.pages import _safe_next, period_days
from services.ingest.console.web import ConsoleError, money, number, when

pytestmark = pytest.mark.unit


def test_an_operator_amount_is_read_in_the_currency_minor_units_and_never_rounded():
    assert minor_amount("12.50", "USD") == 1250
    assert minor_amount(" 1,000 ", "USD") == 100_000
    assert minor_amount("500", "JPY") == 500
    for bad, currency in (("12.505", "USD"), ("1.5", "JPY"), ("abc", "USD"), ("NaN", "USD"), ("", "USD")):
        with pytest.raises(ConsoleError) as refused:
            minor_amount(bad, currency)
        assert refused.value.status == 422 and refused.value.code == "validation"


def test_cells_show_money_with_its_currency_and_numbers_with_grouping():
    assert money(123456, "USD") == "USD 1,234.56"
    assert money(-500, "JPY") == "-JPY 500"
    assert money(None, "USD") == ""
    assert number(Decimal("1500000")) == "1,500,000"
    assert number(Decimal("0.250")) == "0.25"
    assert when(datetime(2026, 3, 10, 12, 0, tzinfo=UTC)) == "2026-03-10 12:00 UTC"
    paris = timezone(timedelta(hours=1))
    assert when(datetime(2026, 3, 10, 13, 0, tzinfo=paris)) == "2026-03-10 12:00 UTC"
    assert when(date(2026, 3, 10)) == "2026-03-10" and when(None) == ""


def test_a_period_touches_every_utc_day_from_its_start_to_the_instant_before_its_end():
    days = period_days(datetime(2026, 3, 10, 12, tzinfo=UTC), datetime(2026, 4, 10, 12, tzinfo=UTC))
    assert len(days) == 32 and days[0] == date(2026, 3, 10) and days[-1] == date(2026, 4, 10)
    midnight = period_days(datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))
    assert len(midnight) == 31 and midnight[-1] == date(2026, 3, 31)


def test_after_logging_in_the_browser_only_goes_to_a_console_page():
    assert _safe_next("/console/customers?q=a") == "/console/customers?q=a"
    for target in (None, "", "https://evil.test/", "//evil.test/console/", "/v1/invoices", "/console\\..\\x"):
        assert _safe_next(target) == "/console/"
