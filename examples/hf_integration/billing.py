"""A Hugging Face-style billing integration written only against the official Metronome SDK (`metronome-sdk`)
and Stripe's SDK: it runs unchanged against Metronome or against OpenLedger's edge (`base_url=<edge>/metronome`).

Users and organisations are Metronome customers linked to a Stripe customer that holds their card; a tier is a
contract on one rate card (free: no fee; pro, team, enterprise: a fee per seat) with a monthly inference credit;
upgrades, downgrades and seats are contract edits; promotional credit is a credit grant; inference and storage
are usage events; invoices are read back per customer.

Prices are Metronome's: cents of the USD credit type (a rate of 900 is USD 9.00 a seat a month; inference is
0.0001 cents per micro-dollar of compute, i.e. USD 1.00 per USD 1.00 of compute).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import metronome
import stripe

USD_CENTS = "2714e483-4ff1-48e4-9e25-ac732e8f24f2"

#: tier -> (recurring fee in cents a seat a month or None for none, monthly inference credit in cents,
#: credit per seat?, negotiated multiplier of the fee or None)
TIERS: Mapping[str, tuple[int | None, int, bool, float | None]] = {
    "free": (None, 10, False, None),
    "pro": (900, 200, False, None),
    "team": (2000, 200, True, None),
    "enterprise": (5000, 500, True, 0.8),
}
SUBSCRIPTION_DEFAULTS = {"collection_schedule": "ADVANCE",
                         "proration": {"is_prorated": True, "invoice_behavior": "BILL_IMMEDIATELY"}}


@dataclass(frozen=True)
class Catalog:
    """The ids of what `set_up_pricing` made."""

    rate_card_id: str
    inference_product_id: str
    storage_product_id: str
    tier_product_ids: Mapping[str, str]  # tier -> its SUBSCRIPTION product (none for free)
    inference_event_type: str
    storage_event_type: str


@dataclass(frozen=True)
class Account:
    """A user or an organisation: its Metronome customer and its Stripe customer and card."""

    customer_id: str
    handle: str
    stripe_customer_id: str
    payment_method_id: str


class HFBilling:
    """The integration: every call is a Metronome SDK call (and Stripe's for the card)."""

    def __init__(self, client: metronome.Metronome, stripe_client: stripe.StripeClient) -> None:
        self.client = client
        self.stripe = stripe_client

    # --- pricing, once ---------------------------------------------------------------------------------

    def set_up_pricing(self, starting_at: datetime, suffix: str = "") -> Catalog:
        """Billable metrics, products and one rate card with every tier's fee and the usage prices."""
        inference_event, storage_event = f"hf_inference{suffix}", f"hf_storage{suffix}"
        metrics = self.client.v1.billable_metrics
        inference_metric = metrics.create(name="Inference compute", event_type_filter={"in_values": [inference_event]},
                                          aggregation_type="SUM", aggregation_key="cost_usd_micros").data.id
        storage_metric = metrics.create(name="Private storage", event_type_filter={"in_values": [storage_event]},
                                        aggregation_type="SUM", aggregation_key="gb_months").data.id
        products = self.client.v1.contracts.products
        inference = products.create(name="Inference", type="USAGE", billable_metric_id=inference_metric).data.id
        storage = products.create(name="Storage", type="USAGE", billable_metric_id=storage_metric).data.id
        tier_products = {tier: products.create(name=tier.title(), type="SUBSCRIPTION").data.id
                         for tier, (fee, *_rest) in TIERS.items() if fee is not None}
        rate_card_id = self.client.v1.contracts.rate_cards.create(name="Hugging Face tiers").data.id
        rates: list[dict[str, Any]] = [
            {"product_id": inference, "entitled": True, "rate_type": "FLAT", "price": 0.0001,
             "starting_at": starting_at},
            {"product_id": storage, "entitled": True, "rate_type": "TIERED", "starting_at": starting_at,
             "tiers": [{"price": 0, "size": 100}, {"price": 1.8}]},  # 100 GB free, then 1.8 cents a GB-month
        ]
        rates += [{"product_id": tier_products[tier], "entitled": True, "rate_type": "FLAT", "price": fee,
                   "billing_frequency": "MONTHLY", "starting_at": starting_at}
                  for tier, (fee, *_rest) in TIERS.items() if fee is not None]
        self.client.v1.contracts.rate_cards.rates.add_many(rate_card_id=rate_card_id, rates=rates)  # type: ignore[arg-type]
        return Catalog(rate_card_id, inference, storage, tier_products, inference_event, storage_event)

    # --- onboarding ------------------------------------------------------------------------------------------

    def onboard(self, kind: str, handle: str, name: str, email: str, card: str = "pm_card_visa") -> Account:
        """A Stripe customer with a card, and the Metronome customer billed through it (ingest alias: the
        handle, so usage is sent by handle)."""
        stripe_customer = self.stripe.v1.customers.create(params={"email": email, "name": name,
                                                                  "metadata": {"handle": handle, "kind": kind}})
        created = self.client.v1.customers.create(
            name=name, external_id=f"{kind}:{handle}", ingest_aliases=[handle],
            billing_config={"billing_provider_customer_id": stripe_customer.id, "billing_provider_type": "stripe",
                            "stripe_collection_method": "charge_automatically"},
            custom_fields={"kind": kind}).data
        payment_method = self.stripe.v1.payment_methods.attach(card, params={"customer": stripe_customer.id})
        return Account(created.id, handle, stripe_customer.id, payment_method.id)

    # --- tiers, seats -----------------------------------------------------------------------------------------

    def _subscription(self, catalog: Catalog, tier: str, seats: int, starting_at: datetime) -> list[dict[str, Any]]:
        if TIERS[tier][0] is None:
            return []
        return [{**SUBSCRIPTION_DEFAULTS, "subscription_rate": {"product_id": catalog.tier_product_ids[tier],
                                                                 "billing_frequency": "MONTHLY"},
                 "initial_quantity": seats, "starting_at": starting_at, "temporary_id": tier}]

    def _credit(self, catalog: Catalog, tier: str, starting_at: datetime) -> dict[str, Any]:
        _, cents, per_seat, _ = TIERS[tier]
        credit: dict[str, Any] = {
            "product_id": catalog.inference_product_id, "applicable_product_ids": [catalog.inference_product_id],
            "access_amount": {"unit_price": cents, "credit_type_id": USD_CENTS}, "commit_duration": {"value": 1},
            "priority": 1, "starting_at": starting_at, "name": f"{tier.title()} monthly inference credit"}
        if per_seat:
            credit["subscription_config"] = {"allocation": "INDIVIDUAL", "subscription_id": tier,
                                             "apply_seat_increase_config": {"is_prorated": False}}
        return credit

    def _discount(self, catalog: Catalog, tier: str, starting_at: datetime) -> list[dict[str, Any]]:
        multiplier = TIERS[tier][3]
        if multiplier is None:
            return []
        return [{"product_id": catalog.tier_product_ids[tier], "type": "MULTIPLIER", "multiplier": multiplier,
                 "starting_at": starting_at}]

    def put_on_tier(self, account: Account, catalog: Catalog, tier: str, starting_at: datetime,
                    seats: int = 1) -> str:
        """A contract for the tier; returns its id."""
        return self.client.v1.contracts.create(
            customer_id=account.customer_id, rate_card_id=catalog.rate_card_id, starting_at=starting_at,
            name=f"{account.handle} {tier}", subscriptions=self._subscription(catalog, tier, seats, starting_at),  # type: ignore[arg-type]
            recurring_credits=[self._credit(catalog, tier, starting_at)],  # type: ignore[list-item]
            overrides=self._discount(catalog, tier, starting_at)).data.id  # type: ignore[arg-type]

    def _current_subscription(self, account: Account, contract_id: str) -> Any:
        contract = self.client.v2.contracts.retrieve(contract_id=contract_id, customer_id=account.customer_id).data
        return contract.subscriptions[0] if contract.subscriptions else None

    def change_tier(self, account: Account, catalog: Catalog, contract_id: str, tier: str, at: datetime) -> None:
        """Upgrade (at `at`, now: prorated at once) or downgrade (`at` = the period end): the tier's fee and
        credit replace the old ones; the seats are kept."""
        contract = self.client.v2.contracts.retrieve(contract_id=contract_id, customer_id=account.customer_id).data
        current = contract.subscriptions[0] if contract.subscriptions else None
        seats = int(current.quantity_schedule[-1].quantity) if current is not None else 1
        ending = [{"subscription_id": current.id, "ending_before": at}] if current is not None else []
        self.client.v2.contracts.edit(
            contract_id=contract_id, customer_id=account.customer_id, update_subscriptions=ending,  # type: ignore[arg-type]
            add_subscriptions=self._subscription(catalog, tier, seats, at),  # type: ignore[arg-type]
            update_recurring_credits=[{"recurring_credit_id": credit.id, "ending_before": at}
                                      for credit in contract.recurring_credits or ()],
            add_recurring_credits=[self._credit(catalog, tier, at)],  # type: ignore[list-item]
            add_overrides=self._discount(catalog, tier, at))  # type: ignore[arg-type]

    def set_seats(self, account: Account, contract_id: str, seats: int, at: datetime) -> None:
        current = self._current_subscription(account, contract_id)
        self.client.v2.contracts.edit(contract_id=contract_id, customer_id=account.customer_id, update_subscriptions=[
            {"subscription_id": current.id, "quantity_updates": [{"starting_at": at, "quantity": seats}]}])

    def period_end(self, account: Account, contract_id: str) -> datetime:
        current = self._current_subscription(account, contract_id)
        return current.billing_periods.current.ending_before  # type: ignore[no-any-return]

    # --- credits ----------------------------------------------------------------------------------------------

    def grant_credits(self, account: Account, catalog: Catalog, cents: int, name: str, expires_at: datetime) -> str:
        return self.client.v1.credit_grants.create(
            customer_id=account.customer_id, name=name, grant_amount={"amount": cents, "credit_type_id": USD_CENTS},
            paid_amount={"amount": 0, "credit_type_id": USD_CENTS}, priority=1, expires_at=expires_at,
            product_ids=[catalog.inference_product_id], reason="promotion",
            uniqueness_key=f"{account.handle}:{name}").data.id

    def credits_left(self, account: Account) -> dict[str, float]:
        """Each credit usable now (monthly credits and grants) with its balance in cents."""
        return {credit.name or credit.id: float(credit.balance or 0) for credit in
                self.client.v1.contracts.list_balances(customer_id=account.customer_id, include_balance=True)}

    def net_credit(self, account: Account) -> float:
        return self.client.v1.contracts.get_net_balance(customer_id=account.customer_id).data.balance

    # --- usage and invoices -------------------------------------------------------------------------------

    def send_usage(self, catalog: Catalog, events: Iterable[tuple[str, str, float, datetime]]) -> None:
        """(handle, "inference" | "storage", quantity, timestamp) -> Metronome usage events by ingest alias."""
        usage = [{"transaction_id": str(uuid.uuid4()), "customer_id": handle, "timestamp": at.isoformat(),
                  "event_type": catalog.inference_event_type if kind == "inference" else catalog.storage_event_type,
                  "properties": {"cost_usd_micros" if kind == "inference" else "gb_months": quantity}}
                 for handle, kind, quantity, at in events]
        self.client.v1.usage.ingest(usage=usage)  # type: ignore[arg-type]

    def invoices(self, account: Account) -> list[Any]:
        return list(self.client.v1.customers.invoices.list(customer_id=account.customer_id))
