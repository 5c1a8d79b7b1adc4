"""Voiding a credit grant (issue 15, item 3): the unused remainder is written off by one `void` entry; what was
consumed is never taken back; the grant is never drawn from again, also once the ledger is replayed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from shared.domain.ledger import CreditLedger, EntryKind, GrantSource, LedgerError, MeterCredit
from shared.domain.money import Money

pytestmark = pytest.mark.unit

T0 = datetime(2025, 6, 1, tzinfo=UTC)


def usd(cents: int) -> Money:
    return Money(cents, "USD")


def new_ledger() -> CreditLedger:
    return CreditLedger.open("acct", [MeterCredit("inference", "USD"), MeterCredit("storage")])


def test_void_writes_off_only_what_is_left_and_consumed_credit_stays_consumed() -> None:
    ledger = new_ledger()
    ledger.grant(grant_id="promo", meter="inference", amount=usd(500), source=GrantSource.PROMOTIONAL,
                 effective_at=T0)
    ledger.grant(grant_id="paid", meter="inference", amount=usd(300), source=GrantSource.TOP_UP, effective_at=T0,
                 expires_at=T0 + timedelta(days=60))
    ledger.consume("inference", usd(350), T0 + timedelta(hours=1), reference="usage-1")  # promo first: 500 -> 150

    entry = ledger.void("promo", T0 + timedelta(hours=2))

    assert (entry.kind, entry.entry_id, entry.amount) == (EntryKind.VOID, "void:promo", usd(-150))
    assert ledger.remaining("promo") == usd(0)
    assert ledger.balance("inference", T0 + timedelta(hours=3)) == usd(300)
    drawn = ledger.consume("inference", usd(400), T0 + timedelta(hours=4), reference="usage-2")
    assert [(e.grant_id, e.amount) for e in drawn.entries] == [("paid", usd(-300))]
    assert drawn.uncovered == usd(100)


def test_void_is_idempotent_and_of_a_used_up_grant_writes_zero() -> None:
    ledger = new_ledger()
    ledger.grant(grant_id="units", meter="storage", amount=Decimal(10), source=GrantSource.PROMOTIONAL,
                 effective_at=T0)
    ledger.consume("storage", Decimal(10), T0 + timedelta(hours=1), reference="u")
    first = ledger.void("units", T0 + timedelta(hours=2))
    again = ledger.void("units", T0 + timedelta(hours=5))
    assert first == again and first.amount == Decimal(0)
    assert [e.kind for e in ledger.entries].count(EntryKind.VOID) == 1


def test_a_voided_grant_stays_void_when_the_ledger_is_replayed_and_a_reversal_forfeits() -> None:
    ledger = new_ledger()
    ledger.grant(grant_id="promo", meter="inference", amount=usd(500), source=GrantSource.PROMOTIONAL,
                 effective_at=T0)
    ledger.consume("inference", usd(200), T0 + timedelta(hours=1), reference="inv-1")
    ledger.void("promo", T0 + timedelta(hours=2))
    replayed = CreditLedger.open("acct", ledger.meters.values(), grants=ledger.grants("inference"),
                                 entries=ledger.entries)

    reversal = replayed.reverse("inference", "inv-1", T0 + timedelta(hours=3))  # e.g. the invoice voided

    assert (reversal.restored, reversal.forfeited) == (usd(0), usd(200))
    assert replayed.balance("inference", T0 + timedelta(hours=3)) == usd(0)
    assert replayed.is_voided("promo")


def test_voiding_an_unknown_grant_raises() -> None:
    with pytest.raises(LedgerError):
        new_ledger().void("nope", T0)
