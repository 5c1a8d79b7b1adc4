from __future__ import annotations

import pytest

from shared.domain.catalog import Catalog
from shared.domain.errors import CurrencyMismatchError

pytestmark = pytest.mark.unit

MINIMAL = {"version": 1, "currency": "USD", "meters": [], "plans": [
    {"id": "starter", "name": "Starter", "family": "classic", "interval": "month", "price": "12.50"}]}


def test_a_plan_sold_in_the_customers_currency_is_accepted() -> None:
    Catalog.from_dict(MINIMAL).plan("starter").require_sold_in("USD")


def test_a_plan_sold_in_another_currency_is_refused_naming_both() -> None:
    with pytest.raises(CurrencyMismatchError) as refused:
        Catalog.from_dict(MINIMAL).plan("starter").require_sold_in("EUR")
    assert (refused.value.left, refused.value.right) == ("USD", "EUR")
