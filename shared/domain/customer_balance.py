"""The customer credit balance: money a customer holds with us, per (customer, currency).

Contract:
- The balance is the sum of its append-only entries and never negative. An entry's ``amount_minor`` is
  signed: positive credits the customer (a credit note, the negative part of an invoice, a manual credit, a
  voided invoice giving back what it drew), negative takes from it (an invoice drawing it, a manual debit).
- An invoice draws at finalisation ``draw_amount(balance, owed)``: all it owes up to what the balance holds,
  never more than either, never negative. What the balance does not cover is charged. A negative total is
  credited to the balance instead (``settlement``: the one rule the worker records and a preview applies).
- Every entry has a deterministic id (``balance_entry_id``) so a replay writes it once: its storage under a
  primary key makes the second write a no-op, and only a written entry moves the balance.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from shared.domain.calendar import ensure_utc
from shared.domain.errors import DomainError, InvalidValueError
from shared.domain.ids import derived_id
from shared.domain.money import minor_units


class BalanceEntryKind(StrEnum):
    CREDIT_NOTE = "credit_note"  # a credit note's amount credited to the balance
    INVOICE_CREDIT = "invoice_credit"  # the negative part of an invoice's total (e.g. a downgrade credit)
    ADJUSTMENT = "adjustment"  # an operator's manual credit (+) or debit (-)
    INVOICE_DRAW = "invoice_draw"  # an invoice took from the balance at finalisation (-)
    VOID_RESTORE = "void_restore"  # a voided invoice gives back what it drew (+)


#: The sign each kind's amount must have (+1 credit, -1 debit, 0 either).
_SIGN: dict[BalanceEntryKind, int] = {
    BalanceEntryKind.CREDIT_NOTE: 1,
    BalanceEntryKind.INVOICE_CREDIT: 1,
    BalanceEntryKind.ADJUSTMENT: 0,
    BalanceEntryKind.INVOICE_DRAW: -1,
    BalanceEntryKind.VOID_RESTORE: 1,
}


class InsufficientBalanceError(DomainError):
    """A debit would take the customer's balance below zero."""

    code: str | None = "insufficient_balance"

    def __init__(self, customer_id: str, currency: str, balance_minor: int, amount_minor: int) -> None:
        super().__init__(f"customer {customer_id} holds {balance_minor} minor units of {currency}, "
                         f"cannot take {-amount_minor}")
        self.customer_id = customer_id
        self.currency = currency
        self.balance_minor = balance_minor
        self.amount_minor = amount_minor
        self.fields = [("amount_minor", "insufficient_balance")]  # (field, reason) the answer names


@dataclass(frozen=True, slots=True, kw_only=True)
class BalanceEntry:
    """One movement of a customer's balance (append-only)."""

    entry_id: str
    customer_id: str
    currency: str
    amount_minor: int
    kind: BalanceEntryKind
    occurred_at: datetime
    description: str
    invoice_id: str | None = None
    credit_note_id: str | None = None

    def __post_init__(self) -> None:
        minor_units(self.currency)
        object.__setattr__(self, "occurred_at", ensure_utc(self.occurred_at, "occurred_at"))
        object.__setattr__(self, "kind", BalanceEntryKind(self.kind))
        if isinstance(self.amount_minor, bool) or not isinstance(self.amount_minor, int) or self.amount_minor == 0:
            raise InvalidValueError(f"a balance entry moves a non-zero int of minor units, got {self.amount_minor!r}")
        sign = _SIGN[self.kind]
        if sign and (self.amount_minor > 0) != (sign > 0):
            raise InvalidValueError(f"a {self.kind.value} entry must be {'positive' if sign > 0 else 'negative'}, "
                                    f"got {self.amount_minor}")
        if not self.entry_id or not self.customer_id:
            raise InvalidValueError("a balance entry needs an entry id and a customer id")


def balance_entry_id(kind: BalanceEntryKind | str, *parts: object) -> str:
    """The deterministic id of an entry from what it is about (e.g. the invoice that drew): same parts, same id."""
    return derived_id("cbe", BalanceEntryKind(kind).value, *parts)


def draw_amount(balance_minor: int, owed_minor: int) -> int:
    """What an invoice owing `owed_minor` takes from a balance of `balance_minor`: min of both, never negative."""
    return max(0, min(balance_minor, owed_minor))


@dataclass(frozen=True, slots=True)
class Settlement:
    """What finalising an invoice does with the customer's balance: a negative total is credited to it
    (``credited_minor``, an ``invoice_credit`` entry), otherwise the invoice draws from it (``drawn_minor``,
    an ``invoice_draw`` entry); at most one of the two is non-zero."""

    credited_minor: int = 0
    drawn_minor: int = 0

    @property
    def balance_change_minor(self) -> int:
        """How the balance moves: + what is credited, - what is drawn."""
        return self.credited_minor - self.drawn_minor


def settlement(total_minor: int, applied_minor: int, balance_minor: int) -> Settlement:
    """The balance step of finalising an invoice of `total_minor` that already drew `applied_minor`, for a
    balance holding `balance_minor`: a negative total is credited to the balance (we never pay out a
    negative invoice), otherwise the invoice draws what it still owes up to what the balance holds
    (``draw_amount``); what the balance does not cover is charged."""
    if total_minor < 0:
        return Settlement(credited_minor=-total_minor)
    return Settlement(drawn_minor=draw_amount(balance_minor, total_minor - applied_minor))


def balance_after(customer_id: str, currency: str, balance_minor: int, amount_minor: int) -> int:
    """The balance once `amount_minor` is applied; a debit below zero is refused (``insufficient_balance``)."""
    after = balance_minor + amount_minor
    if after < 0:
        raise InsufficientBalanceError(customer_id, currency, balance_minor, amount_minor)
    return after
