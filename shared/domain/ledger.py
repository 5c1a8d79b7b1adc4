"""Credit ledger: prepaid and included credits per meter, consumed in a fixed order, never overdrawn.

Contract:
- A grant puts credit on one meter of one account: money (``Money`` in the meter's currency) for money
  meters (inference cost in USD), or meter units (``Decimal``, e.g. GB-months or reports) for unit
  meters. This is the catalog's ``CreditAmount``; one meter never mixes the two.
- Every change is an append-only ``LedgerEntry`` with a deterministic id (``grant:<grant>``,
  ``consume:<reference>:<grant>``, ``expire:<grant>``, ``reverse:<reference>:<grant>``), so the
  adapter can store entries under a unique constraint and a replayed operation cannot be written twice.
- A grant's remaining credit is the sum of its entries and never goes below zero: consumption takes at
  most what is left and reports the rest as ``uncovered``. For a blocking meter the caller refuses the
  uncovered part; for a billed meter it becomes pay-as-you-go overage. The ledger itself is never in debt.
- Consumption order: lowest ``priority`` first, then the soonest expiry (never-expiring last), then the
  oldest grant (earliest ``effective_at``), then the grant id, so the order is total and deterministic.
- A grant is usable in ``[effective_at, expires_at)``. Expiry is written by ``expire(at)`` as an entry
  dated at the grant's ``expires_at`` that removes what was left.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Context, Decimal
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from shared.domain.calendar import calendar_month, ensure_utc, zone
from shared.domain.catalog import CreditAmount
from shared.domain.errors import CurrencyMismatchError, DomainError, InvalidValueError
from shared.domain.money import Money, minor_units

# Unit credits are exact decimals; this precision keeps sums of them exact (no rounding anywhere).
_EXACT: Final = Context(prec=80)


class LedgerError(DomainError):
    """Family: the credit ledger was asked for something its invariants forbid."""


class DuplicateLedgerEntryError(LedgerError):
    """A grant id, consumption reference or entry id was reused for a different operation."""


class CreditUnitMismatchError(LedgerError):
    """An amount in money was given for a unit meter, or units for a money meter."""


class UnknownLedgerMeterError(LedgerError):
    """The meter was not declared on this ledger."""


class GrantSource(StrEnum):
    PLAN_INCLUDED = "plan_included"
    TOP_UP = "top_up"
    PROMOTIONAL = "promotional"
    TRIAL = "trial"
    REFUND = "refund"


# NOTE: lower is consumed first. Free credits go before paid ones (trial and promotional credits are
# use-it-or-lose-it, the plan's included credits come with the subscription), refunds and paid top-ups
# last, so a customer never loses money they paid for while a gift expires unused.
DEFAULT_PRIORITY: Final[Mapping[GrantSource, int]] = MappingProxyType(
    {
        GrantSource.TRIAL: 10,
        GrantSource.PROMOTIONAL: 20,
        GrantSource.PLAN_INCLUDED: 30,
        GrantSource.REFUND: 40,
        GrantSource.TOP_UP: 50,
    }
)


class EntryKind(StrEnum):
    GRANT = "grant"
    CONSUME = "consume"
    EXPIRE = "expire"
    REVERSE = "reverse"
    VOID = "void"


# --- amounts -------------------------------------------------------------------------------------------


def as_money(amount: CreditAmount) -> Money:
    """Narrow a credit amount of a money meter to ``Money`` (``CreditUnitMismatchError`` for units)."""
    if not isinstance(amount, Money):
        raise CreditUnitMismatchError(f"expected money, got units {amount}")
    return amount


def as_units(amount: CreditAmount) -> Decimal:
    """Narrow a credit amount of a unit meter to ``Decimal`` (``CreditUnitMismatchError`` for money)."""
    if not isinstance(amount, Decimal):
        raise CreditUnitMismatchError(f"expected units, got money {amount}")
    return amount


def _add(left: CreditAmount, right: CreditAmount) -> CreditAmount:
    if isinstance(left, Money) and isinstance(right, Money):
        return left + right
    if isinstance(left, Decimal) and isinstance(right, Decimal):
        return _EXACT.add(left, right)
    raise CreditUnitMismatchError(f"cannot combine {left!r} and {right!r}")


def _negate(amount: CreditAmount) -> CreditAmount:
    return -amount if isinstance(amount, Money) else _EXACT.minus(amount)


def _is_positive(amount: CreditAmount) -> bool:
    return amount.is_positive() if isinstance(amount, Money) else amount > 0


def _is_negative(amount: CreditAmount) -> bool:
    return amount.is_negative() if isinstance(amount, Money) else amount < 0


def _smaller(left: CreditAmount, right: CreditAmount) -> CreditAmount:
    """The smaller of two amounts of the same unit."""
    return left if _is_negative(_add(left, _negate(right))) else right


@dataclass(frozen=True, slots=True)
class MeterCredit:
    """How one meter's credits are measured: money in ``currency``, or meter units when it is None."""

    meter: str
    currency: str | None = None

    def __post_init__(self) -> None:
        if not self.meter:
            raise InvalidValueError("a meter id must not be empty")
        if self.currency is not None:
            minor_units(self.currency)

    def zero(self) -> CreditAmount:
        return Decimal(0) if self.currency is None else Money.zero(self.currency)

    def accept(self, amount: CreditAmount | int) -> CreditAmount:
        """``amount`` as this meter's credit; plain ints are taken as units. Mixing units is an error."""
        if isinstance(amount, bool):
            raise TypeError("a credit amount must not be a bool")
        if isinstance(amount, int):
            amount = Decimal(amount)
        if isinstance(amount, Money):
            if self.currency is None:
                raise CreditUnitMismatchError(f"meter {self.meter} counts units, got money {amount}")
            if amount.currency != self.currency:
                raise CurrencyMismatchError(self.currency, amount.currency)
            return amount
        if isinstance(amount, Decimal):
            if self.currency is not None:
                raise CreditUnitMismatchError(f"meter {self.meter} holds {self.currency}, got units {amount}")
            if not amount.is_finite():
                raise InvalidValueError(f"a credit amount must be finite, got {amount!r}")
            return amount
        raise TypeError(f"a credit amount must be Money, Decimal or int, got {type(amount).__name__}")


# --- grants, entries, consumptions ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreditGrant:
    """Credit put on one meter, usable in ``[effective_at, expires_at)`` (``None``: never expires)."""

    grant_id: str
    meter: str
    amount: CreditAmount
    source: GrantSource
    effective_at: datetime
    expires_at: datetime | None
    priority: int

    def __post_init__(self) -> None:
        if not self.grant_id:
            raise InvalidValueError("a grant id must not be empty")
        if not _is_positive(self.amount):
            raise InvalidValueError(f"a grant must add credit, got {self.amount}")
        object.__setattr__(self, "effective_at", ensure_utc(self.effective_at, "effective_at"))
        if self.expires_at is not None:
            expires_at = ensure_utc(self.expires_at, "expires_at")
            if expires_at <= self.effective_at:
                raise InvalidValueError(f"grant {self.grant_id} would expire before it takes effect")
            object.__setattr__(self, "expires_at", expires_at)
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise TypeError(f"priority must be an int, got {self.priority!r}")

    def is_active(self, at: datetime) -> bool:
        instant = ensure_utc(at)
        return self.effective_at <= instant and (self.expires_at is None or instant < self.expires_at)

    def has_expired(self, at: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= ensure_utc(at)

    def consumption_order(self) -> tuple[int, int, datetime, datetime, str]:
        """Sort key: priority, then soonest expiry (never-expiring last), then oldest, then id."""
        never = 1 if self.expires_at is None else 0
        expiry = self.expires_at or self.effective_at
        return (self.priority, never, expiry, self.effective_at, self.grant_id)


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One append-only change of one grant's credit: positive for a grant, negative otherwise."""

    entry_id: str
    account_id: str
    meter: str
    grant_id: str
    kind: EntryKind
    amount: CreditAmount
    at: datetime
    reference: str | None = None


@dataclass(frozen=True, slots=True)
class Consumption:
    """The outcome of consuming ``requested``: ``covered + uncovered == requested``.

    ``entries`` are the debits written, one per grant drawn from, in consumption order.
    """

    meter: str
    reference: str
    requested: CreditAmount
    covered: CreditAmount
    uncovered: CreditAmount
    entries: tuple[LedgerEntry, ...] = ()

    @property
    def fully_covered(self) -> bool:
        return not _is_positive(self.uncovered)


@dataclass(frozen=True, slots=True)
class Reversal:
    """The outcome of undoing a consumption: ``restored`` went back to its grants; ``forfeited`` was drawn
    from grants that have expired since and is not given back."""

    reference: str
    restored: CreditAmount
    forfeited: CreditAmount
    entries: tuple[LedgerEntry, ...] = ()


# --- the ledger -------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _GrantAccount:
    grant: CreditGrant
    remaining: CreditAmount
    expired: bool = False


@dataclass(slots=True)
class CreditLedger:
    """The credit of one account (a customer or an org), for each declared meter.

    Rebuilt by the adapter from stored grants and entries; every operation returns the entries it
    appended, which the adapter inserts in the same transaction as the effect that caused them.

    # NOTE: the ledger is a running account, applied in arrival order. Usage arriving late (dated
    # before an expiry that was already written) cannot draw on the expired grant: the expiry entry
    # already took what was left, and append-only history is never rewritten.
    """

    account_id: str
    meters: Mapping[str, MeterCredit]
    timezone: str = "UTC"
    _grants: dict[str, _GrantAccount] = field(default_factory=dict)
    _entries: list[LedgerEntry] = field(default_factory=list)
    _entry_ids: set[str] = field(default_factory=set)
    _references: set[str] = field(default_factory=set)

    @classmethod
    def open(
        cls,
        account_id: str,
        meters: Iterable[MeterCredit],
        timezone: str = "UTC",
        grants: Iterable[CreditGrant] = (),
        entries: Iterable[LedgerEntry] = (),
    ) -> CreditLedger:
        """A ledger for ``account_id``, replaying stored ``grants`` and their ``entries`` in the order
        they were written (an entry that would overdraw its grant is refused)."""
        zone(timezone)
        declared = {meter.meter: meter for meter in meters}
        ledger = cls(account_id=account_id, meters=MappingProxyType(declared), timezone=timezone)
        for grant in grants:
            ledger._meter(grant.meter).accept(grant.amount)
            if grant.grant_id in ledger._grants:
                raise DuplicateLedgerEntryError(f"grant {grant.grant_id} appears twice")
            ledger._grants[grant.grant_id] = _GrantAccount(grant, ledger._meter(grant.meter).zero())
        for entry in entries:
            account = ledger._grants.get(entry.grant_id)
            if account is None:
                raise LedgerError(f"entry {entry.entry_id} refers to unknown grant {entry.grant_id}")
            ledger._append(entry, account)
        return ledger

    # --- queries ---------------------------------------------------------------------------------------

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        return tuple(self._entries)

    def grants(self, meter: str) -> list[CreditGrant]:
        return [account.grant for account in self._grants.values() if account.grant.meter == meter]

    def remaining(self, grant_id: str) -> CreditAmount:
        """What is left of one grant: the sum of its entries."""
        try:
            return self._grants[grant_id].remaining
        except KeyError:
            raise LedgerError(f"unknown grant {grant_id}") from None

    def balance(self, meter: str, at: datetime) -> CreditAmount:
        """Credit usable on ``meter`` at ``at``: what is left of the grants active at that instant.

        Once ``expire(at)`` has run and operations were applied in time order, this equals the sum of
        the meter's entries dated at or before ``at``.
        """
        total = self._meter(meter).zero()
        for account in self._usable(meter, at):
            total = _add(total, account.remaining)
        return total

    # --- operations ------------------------------------------------------------------------------------

    def grant(
        self,
        *,
        grant_id: str,
        meter: str,
        amount: CreditAmount | int,
        source: GrantSource,
        effective_at: datetime,
        expires_at: datetime | None = None,
        priority: int | None = None,
    ) -> LedgerEntry:
        """Add credit and return its grant entry (dated ``effective_at``).

        Replaying an identical grant returns its original entry; reusing a grant id with other terms
        raises ``DuplicateLedgerEntryError``.

        # NOTE: a top-up without an explicit expiry expires at the end of the calendar month it takes
        # effect in, in the account's time zone (top-ups are "for this month"). Other sources without an
        # expiry never expire; plan-included credits should be given their period's end.
        """
        credit = self._meter(meter).accept(amount)
        if expires_at is None and source is GrantSource.TOP_UP:
            expires_at = calendar_month(effective_at, self.timezone).end
        grant = CreditGrant(
            grant_id=grant_id,
            meter=meter,
            amount=credit,
            source=source,
            effective_at=effective_at,
            expires_at=expires_at,
            priority=DEFAULT_PRIORITY[source] if priority is None else priority,
        )
        existing = self._grants.get(grant_id)
        if existing is not None:
            if existing.grant != grant:
                raise DuplicateLedgerEntryError(f"grant {grant_id} was already applied with other terms")
            return next(entry for entry in self._entries if entry.entry_id == f"grant:{grant_id}")
        account = _GrantAccount(grant, self._meter(meter).zero())
        entry = LedgerEntry(
            entry_id=f"grant:{grant_id}",
            account_id=self.account_id,
            meter=meter,
            grant_id=grant_id,
            kind=EntryKind.GRANT,
            amount=credit,
            at=grant.effective_at,
        )
        self._grants[grant_id] = account
        self._append(entry, account)
        return entry

    def consume(
        self,
        meter: str,
        amount: CreditAmount | int,
        at: datetime,
        *,
        reference: str,
        all_or_nothing: bool = False,
    ) -> Consumption:
        """Draw ``amount`` from the grants active at ``at``, in consumption order.

        ``reference`` (the usage event or request id) makes the entry ids. Replaying a reference that
        drew credit returns the original outcome and draws nothing (a replay must carry the same
        amount; a smaller one, or another meter, raises ``DuplicateLedgerEntryError``). A consumption that
        drew nothing leaves no trace, so across restarts the adapter's inbox is what dedupes it.
        With ``all_or_nothing`` nothing is drawn unless the whole amount is covered (for a synchronous
        authorisation); otherwise what is covered is drawn and the rest is returned as ``uncovered``.
        """
        declared = self._meter(meter)
        wanted = declared.accept(amount)
        instant = ensure_utc(at)
        if _is_negative(wanted):
            raise InvalidValueError(f"cannot consume a negative amount {wanted}")
        if not reference:
            raise InvalidValueError("a consumption needs a reference")
        if reference in self._references:
            return self._replayed_consumption(meter, reference, wanted)
        zero = declared.zero()
        usable = self._usable(meter, instant)
        if len(usable) > 1:
            usable.sort(key=lambda account: account.grant.consumption_order())
        if all_or_nothing:
            available = zero
            for account in usable:
                available = _add(available, account.remaining)
            if _is_negative(_add(available, _negate(wanted))):
                return Consumption(meter, reference, wanted, zero, wanted)
        left = wanted
        written: list[LedgerEntry] = []
        for account in usable:
            if not _is_positive(left):
                break
            take = _smaller(account.remaining, left)
            entry = LedgerEntry(
                entry_id=f"consume:{reference}:{account.grant.grant_id}",
                account_id=self.account_id,
                meter=meter,
                grant_id=account.grant.grant_id,
                kind=EntryKind.CONSUME,
                amount=_negate(take),
                at=instant,
                reference=reference,
            )
            self._append(entry, account)
            written.append(entry)
            left = _add(left, _negate(take))
        covered = _add(wanted, _negate(left))
        return Consumption(meter, reference, wanted, covered, left, tuple(written))

    def reverse(self, meter: str, reference: str, at: datetime) -> Reversal:
        """Give back what consumption ``reference`` drew (an invoice voided, a usage event retracted).

        A correction is new entries (``reverse:<reference>:<grant>``), never an edit. Reversing twice
        raises ``DuplicateLedgerEntryError``; a reference that drew nothing gives an empty reversal.

        # NOTE: credit drawn from a grant that has expired since is forfeited, not restored: giving it
        # back would revive credit past its expiry (and break "balance is the sum of entries").
        """
        instant = ensure_utc(at)
        zero = self._meter(meter).zero()
        restored, forfeited = zero, zero
        drawn = [
            entry
            for entry in self._entries
            if entry.kind is EntryKind.CONSUME and entry.reference == reference and entry.meter == meter
        ]
        written: list[LedgerEntry] = []
        for consumed in drawn:
            account = self._grants[consumed.grant_id]
            amount = _negate(consumed.amount)
            if account.expired or account.grant.has_expired(instant):
                forfeited = _add(forfeited, amount)
                continue
            entry = LedgerEntry(
                entry_id=f"reverse:{reference}:{consumed.grant_id}",
                account_id=self.account_id,
                meter=meter,
                grant_id=consumed.grant_id,
                kind=EntryKind.REVERSE,
                amount=amount,
                at=instant,
                reference=reference,
            )
            self._append(entry, account)
            written.append(entry)
            restored = _add(restored, amount)
        return Reversal(reference, restored, forfeited, tuple(written))

    def void(self, grant_id: str, at: datetime) -> LedgerEntry:
        """Void a grant: write off what is left of it (``void:<grant>``, dated ``at``; zero when it was used
        up) and never draw from it again. Idempotent: voiding twice returns the first entry.

        # NOTE: consumed credit is never taken back (it paid for usage already billed); a consumption of it
        # reversed later (an invoice voided) is forfeited like one drawn from an expired grant.
        """
        account = self._grants.get(grant_id)
        if account is None:
            raise LedgerError(f"unknown grant {grant_id}")
        entry_id = f"void:{grant_id}"
        if entry_id in self._entry_ids:
            return next(entry for entry in self._entries if entry.entry_id == entry_id)
        entry = LedgerEntry(
            entry_id=entry_id,
            account_id=self.account_id,
            meter=account.grant.meter,
            grant_id=grant_id,
            kind=EntryKind.VOID,
            amount=_negate(account.remaining),
            at=ensure_utc(at),
        )
        self._append(entry, account)
        return entry

    def is_voided(self, grant_id: str) -> bool:
        return f"void:{grant_id}" in self._entry_ids

    def expire(self, at: datetime) -> list[LedgerEntry]:
        """Write off what is left of every grant that expired by ``at``; idempotent.

        Each expiry entry is dated at its grant's ``expires_at``. A grant fully used before it expired
        needs no entry.
        """
        instant = ensure_utc(at)
        written: list[LedgerEntry] = []
        due = [a for a in self._grants.values() if not a.expired and a.grant.has_expired(instant)]
        for account in sorted(due, key=lambda a: a.grant.consumption_order()):
            account.expired = True
            if not _is_positive(account.remaining):
                continue
            expires_at = account.grant.expires_at
            if expires_at is None:  # has_expired() is only true with an expiry; this narrows the type
                continue
            entry = LedgerEntry(
                entry_id=f"expire:{account.grant.grant_id}",
                account_id=self.account_id,
                meter=account.grant.meter,
                grant_id=account.grant.grant_id,
                kind=EntryKind.EXPIRE,
                amount=_negate(account.remaining),
                at=expires_at,
            )
            self._append(entry, account)
            written.append(entry)
        return written

    # --- internals -------------------------------------------------------------------------------------

    def _replayed_consumption(self, meter: str, reference: str, wanted: CreditAmount) -> Consumption:
        """The original outcome of consumption ``reference``, rebuilt from its entries."""
        drawn = tuple(e for e in self._entries if e.kind is EntryKind.CONSUME and e.reference == reference)
        covered = self._meter(meter).zero()
        for entry in drawn:
            if entry.meter != meter:
                raise DuplicateLedgerEntryError(f"consumption {reference} was applied to meter {entry.meter}")
            covered = _add(covered, _negate(entry.amount))
        uncovered = _add(wanted, _negate(covered))
        if _is_negative(uncovered):
            raise DuplicateLedgerEntryError(f"consumption {reference} was applied with a larger amount")
        return Consumption(meter, reference, wanted, covered, uncovered, drawn)

    def _meter(self, meter: str) -> MeterCredit:
        try:
            return self.meters[meter]
        except KeyError:
            raise UnknownLedgerMeterError(f"meter {meter!r} is not declared on ledger {self.account_id}") from None

    def _usable(self, meter: str, at: datetime) -> list[_GrantAccount]:
        self._meter(meter)
        instant = ensure_utc(at)
        return [
            account
            for account in self._grants.values()
            if account.grant.meter == meter
            and not account.expired
            and account.grant.effective_at <= instant
            and (account.grant.expires_at is None or instant < account.grant.expires_at)
            and _is_positive(account.remaining)
        ]

    def _append(self, entry: LedgerEntry, account: _GrantAccount) -> None:
        if entry.entry_id in self._entry_ids:
            raise DuplicateLedgerEntryError(f"ledger entry {entry.entry_id} was already written")
        change = entry.amount
        kind_of_grant = type(account.remaining)
        if (
            entry.meter != account.grant.meter
            or type(change) is not kind_of_grant
            or (kind_of_grant is Decimal and not change.is_finite())  # type: ignore[union-attr]
        ):
            change = self._meter(entry.meter).accept(change)  # the full check and its precise error
        remaining = _add(account.remaining, change)
        if _is_negative(remaining):
            raise LedgerError(f"entry {entry.entry_id} would overdraw grant {entry.grant_id}")
        if entry.kind is EntryKind.REVERSE and account.expired:
            raise LedgerError(f"entry {entry.entry_id} would revive expired grant {entry.grant_id}")
        account.remaining = remaining
        if entry.kind in (EntryKind.EXPIRE, EntryKind.VOID):
            account.expired = True
        self._entry_ids.add(entry.entry_id)
        if entry.reference is not None:
            self._references.add(entry.reference)
        self._entries.append(entry)
