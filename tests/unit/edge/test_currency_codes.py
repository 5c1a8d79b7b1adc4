"""A currency the API accepts is a known ISO 4217 code: `AAA` has the shape of one, is in no table, and reached
the balance's writer as an unknown currency (a 500, found by the OpenAPI fuzz run). It is a 422 naming the
field, wherever a request names a currency."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.ingest.routes.customers import OnboardRequest
from services.ingest.routes.invoices import AdjustmentRequest

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("code", ["AAA", "XYZ", "usd", "US"])
def test_a_balance_adjustment_in_an_unknown_currency_is_refused_naming_the_field(code: str) -> None:
    with pytest.raises(ValidationError) as refused:
        AdjustmentRequest(currency=code, amount_minor=100, description="goodwill")
    assert [e["loc"] for e in refused.value.errors()] == [("currency",)]


def test_known_codes_pass_with_their_own_precision() -> None:
    for code in ("USD", "JPY", "KWD"):
        assert AdjustmentRequest(currency=code, amount_minor=100, description="goodwill").currency == code


def test_onboarding_in_an_unknown_currency_is_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError) as refused:
        OnboardRequest.model_validate({"external_id": "acme", "kind": "org", "name": "Acme",
                                       "email": "a@acme.example", "currency": "AAA"})
    assert ("currency",) in [e["loc"] for e in refused.value.errors()]
