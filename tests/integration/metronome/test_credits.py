"""Metronome's credit grants and contract balances through the official SDK against the real edge and the REAL
billing worker: a grant on the customer's contract, its listing, the customer's balances (the contract's
recurring credit and the grant), the net balance, the ledger, a void; refusals with our problem detail.

Hand-computed: a contract on Pro with a 200-cent monthly recurring credit on inference and a 500-cent grant:
balances 200 + 500 = 700 cents; voiding the grant writes off its 500: ledger +500, -500, net balance 200.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import metronome
import pytest

from .conftest import START
from .test_contracts import ADVANCE, MONTHLY, Card, customer, make_card

pytestmark = pytest.mark.integration
USD = "2714e483-4ff1-48e4-9e25-ac732e8f24f2"


@pytest.fixture(scope="module")
def card(edge_url: str, real_worker: Any) -> Iterator[Card]:
    with metronome.Metronome(bearer_token="test-admin-key", base_url=f"{edge_url}/metronome",
                             max_retries=0) as client:
        yield make_card(client)


def pro_contract(client: metronome.Metronome, card: Card, customer_id: str) -> str:
    return client.v1.contracts.create(
        customer_id=customer_id, rate_card_id=card.rate_card_id, starting_at=START,
        subscriptions=[{**ADVANCE, "subscription_rate": {"product_id": card.pro, **MONTHLY}}],
        recurring_credits=[{"product_id": card.inference, "applicable_product_ids": [card.inference],
                            "access_amount": {"unit_price": 200, "credit_type_id": USD},
                            "commit_duration": {"value": 1}, "priority": 1, "starting_at": START,
                            "name": "Pro monthly credit"}]).data.id


def grant(client: metronome.Metronome, card: Card, customer_id: str, cents: int = 500, **extra: Any) -> str:
    return client.v1.credit_grants.create(
        customer_id=customer_id, name="Launch credit", grant_amount={"amount": cents, "credit_type_id": USD},
        paid_amount={"amount": 0, "credit_type_id": USD}, priority=1, expires_at=START + timedelta(days=60),
        product_ids=[card.inference], reason="launch", **extra).data.id


def test_a_grant_and_the_contracts_credit_are_the_customers_balances_and_a_void_writes_off_the_rest(
        metronome_client: metronome.Metronome, native: httpx.Client, card: Card) -> None:
    cid = customer(native)
    contract_id = pro_contract(metronome_client, card, cid)
    grant_id = grant(metronome_client, card, cid, uniqueness_key=f"launch-{uuid.uuid4().hex[:8]}")

    [listed] = metronome_client.v1.credit_grants.list(customer_ids=[cid]).data
    assert (listed.id, listed.name, listed.grant_amount.amount, listed.balance.including_pending) == (
        grant_id, "Launch credit", 500, 500)
    assert listed.products and listed.products[0].id == card.inference and listed.reason == "launch"
    assert listed.expires_at == START + timedelta(days=60)

    balances = list(metronome_client.v1.contracts.list_balances(customer_id=cid, include_balance=True))
    by_id = {b.id: b for b in balances}
    assert len(balances) == 2 and by_id[grant_id].balance == 500
    [recurring] = [b for b in balances if b.id != grant_id]
    assert recurring.contract is not None and recurring.contract.id == contract_id
    assert (recurring.balance, recurring.name, recurring.product.id) == (200, "Pro monthly credit", card.inference)
    assert metronome_client.v1.contracts.get_net_balance(customer_id=cid).data.balance == 700

    voided = metronome_client.v1.credit_grants.void(id=grant_id).data
    assert voided.id == grant_id
    [after] = metronome_client.v1.credit_grants.list(customer_ids=[cid]).data
    assert after.balance.including_pending == 0
    assert [(d.amount, d.reason) for d in after.deductions] == [(-500, "Voided")]
    assert metronome_client.v1.contracts.get_net_balance(customer_id=cid).data.balance == 200

    [ledger_page] = metronome_client.v1.credit_grants.list_entries(customer_ids=[cid]).data
    [ledger] = ledger_page.ledgers
    assert [(e.amount, e.running_balance) for e in ledger.entries] == [(500, 500), (-500, 0)]
    assert ledger.ending_balance.including_pending == 0


def test_grants_and_ledgers_page_through_the_sdk(metronome_client: metronome.Metronome, native: httpx.Client,
                                                 card: Card) -> None:
    first, second = customer(native), customer(native)
    for cid in (first, second):
        pro_contract(metronome_client, card, cid)
    made = [grant(metronome_client, card, first, cents) for cents in (100, 200, 300)]
    page = metronome_client.v1.credit_grants.list(customer_ids=[first], limit=2)
    assert len(page.data) == 2 and page.next_page
    seen = [g.id for g in metronome_client.v1.credit_grants.list(customer_ids=[first], limit=2)]  # 2 pages
    assert sorted(seen) == sorted(made)  # each once (granted at one instant: ordered by id)
    ledgers = list(metronome_client.v1.credit_grants.list_entries(customer_ids=[first, second]))
    assert sorted(p.customer_id for p in ledgers) == sorted([first, second])
    assert [len(p.ledgers[0].entries) for p in ledgers if p.customer_id == first] == [3]


def test_what_credits_cannot_do_is_refused_through_the_sdks_exceptions(
        metronome_client: metronome.Metronome, native: httpx.Client, card: Card) -> None:
    cid = customer(native)
    with pytest.raises(metronome.BadRequestError) as no_contract:
        grant(metronome_client, card, cid)
    assert no_contract.value.body["errors"][0]["field"] == "customer_id"  # type: ignore[index]
    pro_contract(metronome_client, card, cid)
    with pytest.raises(metronome.BadRequestError) as paid:
        metronome_client.v1.credit_grants.create(
            customer_id=cid, name="Bought", grant_amount={"amount": 500, "credit_type_id": USD},
            paid_amount={"amount": 500, "credit_type_id": USD}, priority=1, expires_at=START + timedelta(days=30),
            product_ids=[card.inference])
    assert paid.value.body["code"] == "not_supported"  # type: ignore[index]
    assert paid.value.body["errors"][0]["field"] == "paid_amount"  # type: ignore[index]
    with pytest.raises(metronome.BadRequestError) as two:
        metronome_client.v1.credit_grants.create(
            customer_id=cid, name="Both", grant_amount={"amount": 500, "credit_type_id": USD},
            paid_amount={"amount": 0, "credit_type_id": USD}, priority=1, expires_at=START + timedelta(days=30),
            product_ids=[card.inference, card.storage])
    assert two.value.body["errors"][0]["field"] == "product_ids"  # type: ignore[index]
    with pytest.raises(metronome.NotFoundError):
        metronome_client.v1.credit_grants.void(id="cg_" + uuid.uuid4().hex)
    key = f"once-{uuid.uuid4().hex[:8]}"
    grant(metronome_client, card, cid, uniqueness_key=key)
    with pytest.raises(metronome.ConflictError):
        grant(metronome_client, card, cid, uniqueness_key=key)
