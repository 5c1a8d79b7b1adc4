"""`examples/hf_integration` end to end against the real edge and the REAL billing worker: the example module
(only the Metronome SDK and Stripe's SDK, Stripe being stripe-mock) onboards a user and an org with a card,
puts them on tiers, upgrades, adds seats, downgrades, grants and reads credits, sends inference and storage
usage and reads the invoices of the month. The test plays Stripe's part that stripe-mock cannot: it delivers
the signed `payment_method.attached` webhook of each card to the edge.

Hand-computed (period 10 Mar 12:00 -> 10 Apr 12:00, 31 days): ana on Pro pays 9.00 at the start, bigco on
Enterprise 2 seats x 50.00 x 0.8 = 80.00 with 2 x 5.00 of monthly credit; acme on Free
upgrades to Team on day 1 (+20.00 x 30/31 = 19.35), takes 5 seats on day 2 (+4 x 20.00 x 29/31 = 74.84), and
gets a 5.00 grant; at the close acme pays next month's 5 x 20.00 = 100.00 plus storage 150 GB x 0.018 = 2.70,
its 9.00 of inference drawn from its credits (the 5.00 grant, then 4.00 of the Team credits: 2.00 a seat);
ana, downgraded to Free at the period end, pays no fee and her 1.00 of inference is within Pro's 2.00.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import metronome
import pytest
import stripe

from examples.hf_integration.billing import Account, HFBilling

from .conftest import START, eventually

pytestmark = pytest.mark.integration


def _deliver_card(native: httpx.Client, secret: str, account: Account) -> None:
    """What Stripe sends when a card is attached (stripe-mock sends no webhooks)."""
    payload = json.dumps({"id": f"evt_{uuid.uuid4().hex[:16]}", "type": "payment_method.attached",
                          "created": int(time.time()), "data": {"object": {
                              "id": account.payment_method_id, "object": "payment_method",
                              "customer": account.stripe_customer_id}}}).encode()
    at = int(time.time())
    signature = hmac.new(secret.encode(), f"{at}.".encode() + payload, hashlib.sha256).hexdigest()
    delivered = native.post("/v1/webhooks/stripe", content=payload, headers={
        "Stripe-Signature": f"t={at},v1={signature}", "content-type": "application/json"})
    assert delivered.status_code == 200, delivered.text


def _advance(native: httpx.Client, **span: int) -> datetime:
    moved = native.post("/v1/clock/advance", json=span)
    assert moved.status_code == 200, moved.text
    return datetime.fromisoformat(moved.json()["now"])


def _invoices(native: httpx.Client, customer_id: str) -> list[dict[str, Any]]:
    return list(native.get(f"/v1/customers/{customer_id}/invoices").json()["data"])


def test_the_hf_integration_runs_against_the_engine_through_the_sdks(
        metronome_client: metronome.Metronome, native: httpx.Client, edge_settings: Any) -> None:
    stripe_client = stripe.StripeClient(edge_settings.stripe_api_key.get_secret_value(),
                                        base_addresses={"api": edge_settings.stripe_api_base})
    hf = HFBilling(metronome_client, stripe_client)
    secret = edge_settings.stripe_webhook_secret.get_secret_value()
    catalog = hf.set_up_pricing(START - timedelta(days=1))

    ana = hf.onboard("user", f"ana-{uuid.uuid4().hex[:6]}", "Ana", "ana@hf.test")
    acme = hf.onboard("org", f"acme-{uuid.uuid4().hex[:6]}", "Acme", "billing@acme.test")
    bigco = hf.onboard("org", f"bigco-{uuid.uuid4().hex[:6]}", "BigCo", "ap@bigco.test")
    for account in (ana, acme, bigco):
        _deliver_card(native, secret, account)
    ana_contract = hf.put_on_tier(ana, catalog, "pro", START)
    acme_contract = hf.put_on_tier(acme, catalog, "free", START)
    hf.put_on_tier(bigco, catalog, "enterprise", START, seats=2)
    for account, fee in ((ana, 900), (bigco, 8000)):  # bigco: 2 seats x 50.00 x 0.8 (negotiated)
        [start] = eventually(lambda account=account: [i for i in _invoices(native, account.customer_id)
                                                      if i["status"] == "paid"], f"{account.handle}'s paid start")
        assert start["total_minor"] == fee
    assert hf.credits_left(bigco) == {"Enterprise monthly inference credit": 1000}  # 5.00 a seat

    day1 = _advance(native, days=1)
    hf.change_tier(acme, catalog, acme_contract, "team", day1)
    day2 = _advance(native, days=1)
    hf.set_seats(acme, acme_contract, 5, day2)
    changes = eventually(lambda: (lambda found: found if len(found) == 2 else None)(
        [i for i in _invoices(native, acme.customer_id) if i["total_minor"] > 0]), "acme's upgrade and seats")
    assert sorted(i["total_minor"] for i in changes) == [1935, 7484]
    grant_id = hf.grant_credits(acme, catalog, 500, "launch", START + timedelta(days=60))
    assert hf.credits_left(acme)["launch"] == 500

    hf.send_usage(catalog, [(acme.handle, "inference", 9_000_000, day2), (acme.handle, "storage", 250, day2),
                            (ana.handle, "inference", 1_000_000, day2)])
    end = hf.period_end(ana, ana_contract)
    hf.change_tier(ana, catalog, ana_contract, "free", end)  # a downgrade waits for the period end

    _advance(native, seconds=int((end - day2).total_seconds()) + 60)
    for account in (ana, acme):
        eventually(lambda account=account: [i for i in _invoices(native, account.customer_id)
                                            if i["kind"] == "period_close"], f"{account.handle}'s close", timeout=120)

    # read back through the SDK: every invoice of the month, with its line items
    assert sorted(i.total for i in hf.invoices(ana)) == [0, 900]
    acme_invoices = hf.invoices(acme)
    assert sorted(i.total for i in acme_invoices) == [0, 1935, 7484, 10270]
    [close] = [i for i in acme_invoices if i.total == 10270]
    assert sorted(line.total for line in close.line_items) == [-900, 0, 270, 900, 10000]
    # the 5.00 grant went first, then 4.00 of the Team credits; April's Team credit is 5 x 2.00
    assert hf.credits_left(acme) == {"launch": 0, "Team monthly inference credit": 1000}
    assert hf.credits_left(ana) == {"Free monthly inference credit": 10}  # on Free since the period end
    assert (hf.net_credit(acme), hf.net_credit(ana)) == (1000, 10)
    assert grant_id in [g.id for g in metronome_client.v1.credit_grants.list(customer_ids=[acme.customer_id])]
