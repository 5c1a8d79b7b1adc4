"""Who in the demo's population pays at the provider during dunning (the webhook is lost)."""

from __future__ import annotations

import pytest

from services.demo.population import PAYERS_AT_PROVIDER, SOFT_DECLINE, build_population

pytestmark = pytest.mark.unit


def test_three_soft_declined_customers_who_keep_their_card_and_are_charged_on_day_one_pay_at_the_provider() -> None:
    payers = [c for c in build_population(600) if c.pays_at_provider_during_dunning]

    assert len(payers) == PAYERS_AT_PROVIDER == 3
    assert all(c.payment_method == SOFT_DECLINE and not c.fixes_card_during_dunning and not c.trial_days
               and c.plan_id not in (None, "free") for c in payers)

