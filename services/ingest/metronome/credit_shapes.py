"""Metronome's JSON for credit grants, the credit ledger and contract balances (pure): our grants and ledger
entries (minor units = USD cents) -> `CreditGrantListResponse`, `CreditLedgerEntry`, `Credit`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.ingest.metronome.pricing_shapes import CREATED_BY, USD_CREDIT_TYPE

#: Our ledger entry kinds as the reasons Metronome's ledger shows.
REASONS = {"grant": "Credit grant", "consume": "Usage", "expire": "Expiry", "void": "Voided", "reverse": "Reversal"}


@dataclass(frozen=True)
class Entry:
    grant_id: str
    kind: str
    amount_cents: int
    at: datetime
    invoice_id: str | None


@dataclass(frozen=True)
class GrantFacts:
    grant_id: str
    customer_id: str
    name: str
    amount_cents: int
    remaining_cents: int
    priority: int
    effective_at: datetime
    expires_at: datetime | None
    entries: Sequence[Entry]
    product_id: str | None = None
    reason: str | None = None
    credit_grant_type: str | None = None
    custom_fields: Mapping[str, str] | None = None
    uniqueness_key: str | None = None
    contract_id: str | None = None
    applicable_product_id: str | None = None


def ledger_entries(entries: Sequence[Entry], start: int = 0) -> list[dict[str, Any]]:
    """Entries in order with the running balance after each (from `start`)."""
    balance = start
    shown: list[dict[str, Any]] = []
    for entry in entries:
        balance += entry.amount_cents
        shown.append({"amount": entry.amount_cents, "created_by": CREATED_BY, "credit_grant_id": entry.grant_id,
                      "effective_at": entry.at.isoformat(), "reason": REASONS.get(entry.kind, entry.kind),
                      "running_balance": balance, "invoice_id": entry.invoice_id})
    return shown


def grant_json(grant: GrantFacts, names: Mapping[str, str], now: datetime) -> dict[str, Any]:
    ledger = ledger_entries(grant.entries)
    return {"id": grant.grant_id, "customer_id": grant.customer_id, "name": grant.name,
            "balance": {"effective_at": now.isoformat(), "excluding_pending": grant.remaining_cents,
                        "including_pending": grant.remaining_cents},
            "custom_fields": dict(grant.custom_fields or {}),
            "deductions": [e for e, raw in zip(ledger, grant.entries, strict=True) if raw.kind != "grant"],
            "pending_deductions": [], "effective_at": grant.effective_at.isoformat(),
            "expires_at": grant.expires_at.isoformat() if grant.expires_at else None,
            "grant_amount": {"amount": grant.amount_cents, "credit_type": USD_CREDIT_TYPE},
            "paid_amount": {"amount": 0, "credit_type": USD_CREDIT_TYPE}, "priority": grant.priority,
            "credit_grant_type": grant.credit_grant_type, "reason": grant.reason,
            "uniqueness_key": grant.uniqueness_key,
            "products": [{"id": grant.product_id, "name": names.get(grant.product_id, grant.product_id)}]
            if grant.product_id else []}


def customer_ledger(customer_id: str, grants: Sequence[GrantFacts], *, starting_on: datetime | None,
                    ending_before: datetime | None, descending: bool) -> dict[str, Any]:
    """One customer's credit ledger in USD cents: its API grants' entries in time order, the balance before
    the window and at its end."""
    entries = sorted((e for g in grants for e in g.entries), key=lambda e: e.at)
    before = [e for e in entries if starting_on is not None and e.at < starting_on]
    inside = [e for e in entries if (starting_on is None or e.at >= starting_on)
              and (ending_before is None or e.at < ending_before)]
    start = sum(e.amount_cents for e in before)
    shown = ledger_entries(inside, start)
    end = start + sum(e.amount_cents for e in inside)
    first_at = (starting_on or (inside[0].at if inside else None))
    last_at = (ending_before or (inside[-1].at if inside else None))
    return {"customer_id": customer_id, "ledgers": [{
        "credit_type": USD_CREDIT_TYPE,
        "starting_balance": {"effective_at": first_at.isoformat() if first_at else None,
                             "excluding_pending": start, "including_pending": start},
        "ending_balance": {"effective_at": last_at.isoformat() if last_at else None,
                           "excluding_pending": end, "including_pending": end},
        "entries": list(reversed(shown)) if descending else shown, "pending_entries": []}]}


def balance_json(grant: GrantFacts, names: Mapping[str, str], *, include_balance: bool,
                 include_ledgers: bool) -> dict[str, Any]:
    """A grant as a contract balance (`Credit`): a contract's recurring credit names its contract."""
    product_id = grant.product_id or ""
    shown: dict[str, Any] = {
        "id": grant.grant_id, "type": "CREDIT", "product": {"id": product_id, "name": names.get(product_id, "")},
        "name": grant.name, "priority": grant.priority, "created_by": CREATED_BY,
        "access_schedule": {"credit_type": USD_CREDIT_TYPE, "schedule_items": [{
            "id": grant.grant_id, "amount": grant.amount_cents, "starting_at": grant.effective_at.isoformat(),
            "ending_before": grant.expires_at.isoformat() if grant.expires_at else None}]},
        "applicable_product_ids": [grant.applicable_product_id or product_id],
        "contract": {"id": grant.contract_id} if grant.contract_id else None,
        "uniqueness_key": grant.uniqueness_key}
    if include_balance:
        shown["balance"] = grant.remaining_cents
    if include_ledgers:
        shown["ledger"] = [{"type": _ledger_type(e.kind), "amount": e.amount_cents, "timestamp": e.at.isoformat(),
                            "segment_id": grant.grant_id,
                            **({"invoice_id": e.invoice_id} if e.invoice_id else {})} for e in grant.entries]
    return shown


def _ledger_type(kind: str) -> str:
    return {"grant": "CREDIT_SEGMENT_START", "consume": "CREDIT_AUTOMATED_INVOICE_DEDUCTION",
            "expire": "CREDIT_EXPIRATION", "void": "CREDIT_CANCELED"}.get(kind, "CREDIT_MANUAL")
