"""The invoice aggregate: lines of rounded money, tax on the taxable lines, and a small state machine.

Contract:
- Every line amount is already rounded (``Money``); the total is the plain sum of the lines, so what
  the customer sees adds up to the cent (or yen, or fils).
- Tax is one line: ``rate_bps`` basis points of the sum of the taxable lines, rounded once.
- DRAFT -> OPEN (finalised and numbered) -> PAID | VOID | UNCOLLECTIBLE; UNCOLLECTIBLE -> PAID | VOID;
  DRAFT -> VOID (a draft voided before finalisation never gets a number).
  Lines can only change while DRAFT.
- The number is assigned at finalisation from a sequence the caller supplies. Gapless numbering per
  issuer is the adapter's job: it takes the next value from a per-issuer counter row
  (``UPDATE ... SET next = next + 1 RETURNING``) in the same transaction that stores the finalised
  invoice, so a rolled-back finalisation also rolls back the counter and no number is skipped.
- An invoice is identified by its ``InvoiceKey`` (subscription, reason, period); storing it under a
  unique constraint on that key makes "build the same invoice twice" a no-op.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from fractions import Fraction
from functools import lru_cache
from types import MappingProxyType

from shared.domain.calendar import Period, ensure_utc
from shared.domain.customer_balance import Settlement, settlement
from shared.domain.errors import InvalidTransitionError, InvalidValueError, InvoiceError
from shared.domain.events import (
    DomainEvent,
    InvoiceFinalized,
    InvoiceMarkedUncollectible,
    InvoicePaid,
    InvoiceVoided,
)
from shared.domain.ids import CustomerId, InvoiceId, SubscriptionId
from shared.domain.money import Money, UnitPrice, minor_units, sum_money

BASIS_POINTS = 10_000


class InvoiceStatus(StrEnum):
    DRAFT = "draft"
    OPEN = "open"
    PAID = "paid"
    VOID = "void"
    UNCOLLECTIBLE = "uncollectible"


# NOTE: an uncollectible invoice may still be paid later (the customer comes back) or voided
# (written off for good); paid and void are final.
INVOICE_TRANSITIONS: Mapping[InvoiceStatus, frozenset[InvoiceStatus]] = MappingProxyType(
    {
        InvoiceStatus.DRAFT: frozenset({InvoiceStatus.OPEN, InvoiceStatus.VOID}),
        InvoiceStatus.OPEN: frozenset({InvoiceStatus.PAID, InvoiceStatus.VOID, InvoiceStatus.UNCOLLECTIBLE}),
        InvoiceStatus.UNCOLLECTIBLE: frozenset({InvoiceStatus.PAID, InvoiceStatus.VOID}),
        InvoiceStatus.PAID: frozenset(),
        InvoiceStatus.VOID: frozenset(),
    }
)


class LineKind(StrEnum):
    FEE = "fee"  # recurring subscription fee, billed in advance
    USAGE = "usage"  # metered usage, billed in arrears
    PRORATION = "proration"  # credit for unused / charge for remaining time after a change
    DISCOUNT = "discount"  # coupon
    CREDIT = "credit"  # included or granted credits applied against usage
    TAX = "tax"
    ADJUSTMENT = "adjustment"  # late usage, carried-forward balances, manual corrections


# The line kinds an invoice's subtotal sums (the charges); discounts, credits and tax come after it.
SUBTOTAL_KINDS = frozenset({LineKind.FEE, LineKind.USAGE, LineKind.PRORATION, LineKind.ADJUSTMENT})


class InvoiceReason(StrEnum):
    SUBSCRIPTION_START = "subscription_start"  # first period's fee, in advance
    PERIOD_CLOSE = "period_close"  # closed period's usage + next period's fee
    SUBSCRIPTION_CHANGE = "subscription_change"  # immediate proration of a plan/seat/interval change
    MANUAL = "manual"


@dataclass(frozen=True, slots=True)
class InvoiceKey:
    """The business identity of an invoice; unique per (subscription, reason, period)."""

    subscription_id: SubscriptionId
    reason: InvoiceReason
    period: Period

    def __str__(self) -> str:
        return _key_text(self)


@lru_cache(maxsize=65_536)
def _key_text(key: InvoiceKey) -> str:
    """An invoice key's text (the invoice id is derived from it, ledger references start with it): a close
    asks for it several times and formatting its two instants costs more than looking it up."""
    return f"{key.subscription_id}|{key.reason.value}|{key.period.start.isoformat()}|{key.period.end.isoformat()}"


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    """One rounded amount on an invoice.

    ``taxable`` defaults by kind: tax lines never are; everything else is, so discounts and credits
    reduce the tax base like the charges they offset.
    """

    kind: LineKind
    description: str
    amount: Money
    quantity: Decimal = Decimal(1)
    unit_price: UnitPrice | None = None
    period: Period | None = None
    proration: bool = False
    meter_id: str | None = None
    taxable: bool | None = None

    def __post_init__(self) -> None:
        if (
            type(self.amount) is Money
            and type(self.quantity) is Decimal
            and (self.unit_price is None or self.unit_price.currency == self.amount.currency)
            and self.taxable is None
            and self.kind is not LineKind.PRORATION
            and self.kind is not LineKind.TAX
        ):
            # the common case (a charge, credit or discount line): only the taxable default to set
            object.__setattr__(self, "taxable", True)
            return
        if not isinstance(self.amount, Money):
            raise TypeError(f"line amount must be Money, got {type(self.amount).__name__}")
        if isinstance(self.quantity, float) or not isinstance(self.quantity, Decimal):
            raise TypeError("line quantity must be a Decimal")
        if self.unit_price is not None and self.unit_price.currency != self.amount.currency:
            raise InvalidValueError("line unit price and amount must share a currency")
        if self.kind is LineKind.TAX and self.taxable:
            raise InvalidValueError("a tax line cannot itself be taxable")
        if self.kind is LineKind.PRORATION and not self.proration:
            object.__setattr__(self, "proration", True)
        if self.taxable is None:
            object.__setattr__(self, "taxable", self.kind is not LineKind.TAX)

    @property
    def is_taxable(self) -> bool:
        return bool(self.taxable)


def tax_amount(taxable_base: Money, rate_bps: int) -> Money:
    """``rate_bps`` basis points of ``taxable_base``, rounded once (half away from zero)."""
    if isinstance(rate_bps, bool) or not isinstance(rate_bps, int) or not 0 <= rate_bps <= BASIS_POINTS:
        raise InvalidValueError(f"tax rate must be an int in 0..{BASIS_POINTS} basis points, got {rate_bps!r}")
    return taxable_base.scale(_rate(rate_bps))


@lru_cache(maxsize=1024)
def _rate(rate_bps: int) -> Fraction:
    return Fraction(rate_bps, BASIS_POINTS)


@lru_cache(maxsize=1024)
def _tax_description(rate_bps: int) -> str:
    percent = Decimal(rate_bps) / 100
    return f"Tax {percent.normalize():f}%"


def format_invoice_number(prefix: str, sequence: int) -> str:
    """``OLB-2024-000042`` style numbers: an issuer prefix and a zero-padded sequence value."""
    if isinstance(sequence, bool) or not isinstance(sequence, int) or sequence < 1:
        raise InvalidValueError(f"invoice sequence must be a positive int, got {sequence!r}")
    if not prefix or not prefix.replace("-", "").isalnum():
        raise InvalidValueError(f"invoice prefix must be letters, digits and '-', got {prefix!r}")
    return f"{prefix}-{sequence:06d}"


@dataclass(eq=False, kw_only=True)
class Invoice:
    """An invoice under construction (DRAFT) or issued (OPEN and after).

    Build with ``Invoice.draft``; repositories may rehydrate with the constructor.
    """

    id: InvoiceId
    key: InvoiceKey
    customer_id: CustomerId
    currency: str
    created_at: datetime
    status: InvoiceStatus = InvoiceStatus.DRAFT
    lines: tuple[InvoiceLine, ...] = ()
    tax_rate_bps: int = 0
    number: str | None = None
    finalized_at: datetime | None = None
    paid_at: datetime | None = None
    closed_at: datetime | None = None
    amount_paid_minor: int = 0  # collected so far, in minor units of `currency`
    balance_applied_minor: int = 0  # drawn from the customer's credit balance at finalisation (never negative)
    pre_payment_credit_minor: int = 0  # what credit notes took off while it was owed (Stripe's pre-payment)
    version: int = 0
    pending_events: list[DomainEvent] = field(default_factory=list)
    # The total of `lines` as last summed, with the tuple it was summed from: the total is asked for many times
    # per invoice (amount due, finalisation, balance, events, audit) and the lines only change by assigning a
    # new tuple, so the sum holds while `lines` is the very same tuple.
    _summed: tuple[tuple[InvoiceLine, ...], Money] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        minor_units(self.currency)
        self.created_at = ensure_utc(self.created_at, "created_at")

    @classmethod
    def draft(
        cls,
        *,
        invoice_id: InvoiceId,
        key: InvoiceKey,
        customer_id: CustomerId,
        currency: str,
        at: datetime,
        lines: Iterable[InvoiceLine] = (),
    ) -> Invoice:
        invoice = cls(id=invoice_id, key=key, customer_id=customer_id, currency=currency, created_at=at)
        invoice.add_lines(lines)
        return invoice

    # --- reading ----------------------------------------------------------------------------------

    @property
    def subscription_id(self) -> SubscriptionId:
        return self.key.subscription_id

    @property
    def period(self) -> Period:
        return self.key.period

    def lines_of(self, *kinds: LineKind) -> tuple[InvoiceLine, ...]:
        return tuple(line for line in self.lines if line.kind in kinds)

    # NOTE: the invoice arithmetic, each column defined once (Stripe's meanings):
    #   subtotal        = sum of the charge lines (fee, usage, proration, adjustment), before discounts,
    #                     included credits and tax;
    #   discount        = what coupons took off (a positive amount; the discount lines are negative);
    #   credits_applied = what included credits covered (a positive amount; the credit lines are negative);
    #   tax             = the tax lines;
    #   total           = subtotal - discount - credits_applied + tax = the sum of all the lines.
    @property
    def subtotal(self) -> Money:
        """The charge lines (fee, usage, proration, adjustment) before discounts, included credits and tax."""
        return sum_money((line.amount for line in self.lines if line.kind in SUBTOTAL_KINDS), self.currency)

    @property
    def discount(self) -> Money:
        """What coupons took off, as a positive amount."""
        return -sum_money((line.amount for line in self.lines_of(LineKind.DISCOUNT)), self.currency)

    @property
    def credits_applied(self) -> Money:
        """What included credits covered, as a positive amount."""
        return -sum_money((line.amount for line in self.lines_of(LineKind.CREDIT)), self.currency)

    @property
    def pre_tax_total(self) -> Money:
        """Every line but tax: subtotal - discount - credits_applied (what a coupon's percentage applies to
        before its own line is added)."""
        return sum_money((line.amount for line in self.lines if line.kind is not LineKind.TAX), self.currency)

    @property
    def taxable_base(self) -> Money:
        return sum_money([line.amount for line in self.lines if line.taxable], self.currency)

    @property
    def tax(self) -> Money:
        return sum_money((line.amount for line in self.lines_of(LineKind.TAX)), self.currency)

    @property
    def total(self) -> Money:
        """The sum of the rounded lines, nothing else."""
        summed = self._summed
        if summed is not None and summed[0] is self.lines:
            return summed[1]
        total = sum_money((line.amount for line in self.lines), self.currency)
        self._summed = (self.lines, total)
        return total

    @property
    def amount_due(self) -> Money:
        """What to collect: the total (zero when credits exceed the charges) less what the customer's credit
        balance covered at finalisation."""
        return self.total.max(Money.zero(self.currency)) - Money(self.balance_applied_minor, self.currency)

    @property
    def amount_paid(self) -> Money:
        return Money(self.amount_paid_minor, self.currency)

    @property
    def amount_remaining(self) -> Money:
        """What is still to collect: the amount due less what was paid and what credit notes took off while it
        was owed (never negative)."""
        return (self.amount_due - self.amount_paid
                - Money(self.pre_payment_credit_minor, self.currency)).max(Money.zero(self.currency))

    @property
    def credit_to_carry_forward(self) -> Money:
        """A negative total (credits beyond charges), as a positive amount.

        # NOTE: we never pay out a negative invoice; at finalisation this amount is credited to the customer's
        # credit balance (an `invoice_credit` entry, like Stripe's customer balance) and the next invoices draw
        # from it (`apply_balance`). Before the balance existed it was carried on the subscription
        # (`carried_credit_minor`); what a subscription still carries is billed as before on its next close.
        """
        return (-self.total).max(Money.zero(self.currency))

    # --- building (DRAFT only) -------------------------------------------------------------------

    def _require_draft(self, action: str) -> None:
        if self.status is not InvoiceStatus.DRAFT:
            raise InvoiceError(f"cannot {action} invoice {self.id}: it is {self.status.value}, not draft")

    def add_line(self, line: InvoiceLine) -> None:
        self._require_draft("add a line to")
        if line.amount.currency != self.currency:
            raise InvoiceError(f"line in {line.amount.currency} cannot go on invoice {self.id} in {self.currency}")
        if line.kind is LineKind.TAX:
            raise InvoiceError("tax lines are computed by apply_tax, not added by hand")
        self.lines = (*self.lines, line)
        if self.tax_rate_bps:
            self.apply_tax(self.tax_rate_bps)

    def add_lines(self, lines: Iterable[InvoiceLine]) -> None:
        for line in lines:
            self.add_line(line)

    def apply_tax(self, rate_bps: int, description: str | None = None) -> None:
        """(Re)compute the single tax line from the taxable lines; rate 0 removes it."""
        self._require_draft("tax")
        amount = tax_amount(self.taxable_base, rate_bps)
        self.tax_rate_bps = rate_bps
        untaxed = tuple(line for line in self.lines if line.kind is not LineKind.TAX)
        if rate_bps == 0:
            self.lines = untaxed
            return
        tax_line = InvoiceLine(
            kind=LineKind.TAX,
            description=description or _tax_description(rate_bps),
            amount=amount,
            taxable=False,
        )
        self.lines = (*untaxed, tax_line)

    def apply_balance(self, available_minor: int) -> int:
        """Draw from the customer's credit balance holding `available_minor` what this invoice owes, up to
        what it holds (``customer_balance.draw_amount``); returns what it drew. Before finalisation only:
        the draw is part of settling the lines, and `finalize` then charges (or settles) what is left."""
        return self.settle_balance(available_minor).drawn_minor

    def settle_balance(self, available_minor: int) -> Settlement:
        """The customer balance's part of finalising this invoice, with a balance holding `available_minor`
        (``customer_balance.settlement``): a negative total is credited to the balance, otherwise the invoice
        draws what it owes up to what the balance holds (recorded here as ``balance_applied_minor``). The
        caller records the returned movement (the worker's entries) or applies it to its copy (a preview)."""
        self._require_draft("settle a balance for")
        settled = settlement(self.total.amount_minor, self.balance_applied_minor, available_minor)
        self.balance_applied_minor += settled.drawn_minor
        return settled

    # --- lifecycle -------------------------------------------------------------------------------

    def _transition(self, target: InvoiceStatus) -> InvoiceStatus:
        current = self.status
        if target not in INVOICE_TRANSITIONS[current]:
            raise InvalidTransitionError("invoice", current.value, target.value)
        self.status = target
        self.version += 1
        return current

    def finalize(self, *, number: str, at: datetime) -> None:
        """Freeze the lines and give the invoice its number (DRAFT -> OPEN).

        # NOTE: an invoice with nothing to collect (zero or negative total) is settled at once
        # (OPEN -> PAID at the same instant): there is nothing to charge and dunning must not start.
        """
        instant = ensure_utc(at)
        if not number:
            raise InvalidValueError("an invoice number is required to finalise")
        self._transition(InvoiceStatus.OPEN)
        self.number = number
        self.finalized_at = instant
        self.pending_events.append(
            InvoiceFinalized(
                subscription_id=self.subscription_id,
                version=self.version,
                occurred_at=instant,
                invoice_id=self.id,
                number=number,
                total=self.total,
                amount_due=self.amount_due,
            )
        )
        if self.amount_due.is_zero():
            self.mark_paid(at=instant, payment_reference=None)

    def mark_paid(self, *, at: datetime, payment_reference: str | None) -> None:
        instant = ensure_utc(at)
        self._transition(InvoiceStatus.PAID)
        self.paid_at = instant
        self.closed_at = instant
        self.amount_paid_minor = self.amount_due.amount_minor - self.pre_payment_credit_minor
        self.pending_events.append(
            InvoicePaid(
                subscription_id=self.subscription_id,
                version=self.version,
                occurred_at=instant,
                invoice_id=self.id,
                amount_paid=self.amount_due,
                payment_reference=payment_reference,
            )
        )

    def credit_before_payment(self, amount: Money, *, at: datetime) -> None:
        """A credit note lowers what is still owed (open or uncollectible); when nothing is left the invoice is
        settled (-> PAID at `at`, what was paid in cash unchanged), like Stripe's pre-payment credit notes."""
        instant = ensure_utc(at)
        if self.status not in (InvoiceStatus.OPEN, InvoiceStatus.UNCOLLECTIBLE):
            raise InvoiceError(f"invoice {self.id} is {self.status.value}: nothing is owed to reduce")
        if not amount.is_positive() or amount > self.amount_remaining:
            raise InvoiceError(f"cannot reduce invoice {self.id} by {amount}: {self.amount_remaining} is owed")
        self.pre_payment_credit_minor += amount.amount_minor
        self.version += 1
        if self.amount_remaining.is_zero():
            self._transition(InvoiceStatus.PAID)
            self.paid_at = instant
            self.closed_at = instant
            self.pending_events.append(
                InvoicePaid(
                    subscription_id=self.subscription_id,
                    version=self.version,
                    occurred_at=instant,
                    invoice_id=self.id,
                    amount_paid=self.amount_paid,
                    payment_reference=None,
                )
            )

    def void(self, *, at: datetime, reason: str) -> None:
        instant = ensure_utc(at)
        self._transition(InvoiceStatus.VOID)
        self.closed_at = instant
        self.pending_events.append(
            InvoiceVoided(
                subscription_id=self.subscription_id,
                version=self.version,
                occurred_at=instant,
                invoice_id=self.id,
                reason=reason,
            )
        )

    def mark_uncollectible(self, *, at: datetime, reason: str) -> None:
        instant = ensure_utc(at)
        self._transition(InvoiceStatus.UNCOLLECTIBLE)
        self.closed_at = instant
        self.pending_events.append(
            InvoiceMarkedUncollectible(
                subscription_id=self.subscription_id,
                version=self.version,
                occurred_at=instant,
                invoice_id=self.id,
                reason=reason,
            )
        )

    def pull_events(self) -> list[DomainEvent]:
        """Hand the recorded events to the unit of work (and forget them here)."""
        events, self.pending_events = self.pending_events, []
        return events
