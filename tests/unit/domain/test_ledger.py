from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.domain.errors import CurrencyMismatchError, DomainError, InvalidValueError
from shared.domain.ledger import (
    CreditLedger,
    CreditUnitMismatchError,
    DuplicateLedgerEntryError,
    EntryKind,
    GrantSource,
    LedgerEntry,
    LedgerError,
    MeterCredit,
    UnknownLedgerMeterError,
    as_money,
    as_units,
)
from shared.domain.money import Money

pytestmark = pytest.mark.unit

T0 = datetime(2025, 6, 1, tzinfo=UTC)
JULY = datetime(2025, 7, 1, tzinfo=UTC)


def usd(cents: int) -> Money:
    return Money(cents, "USD")


def hours(n: float) -> datetime:
    return T0 + timedelta(hours=n)


def new_ledger(timezone: str = "UTC") -> CreditLedger:
    return CreditLedger.open(
        "org-1",
        [MeterCredit("inference", "USD"), MeterCredit("storage"), MeterCredit("reports")],
        timezone=timezone,
    )


def entries_sum(ledger: CreditLedger, meter: str, at: datetime) -> Money | Decimal:
    """The meter's entries dated at or before ``at``, summed independently of the ledger's own code."""
    amounts = [entry.amount for entry in ledger.entries if entry.meter == meter and entry.at <= at]
    if ledger.meters[meter].currency is None:
        return sum((as_units(amount) for amount in amounts), Decimal(0))
    return sum((as_money(amount) for amount in amounts), usd(0))


# --- grants and consumption order ----------------------------------------------------------------------


def test_consumption_draws_on_the_highest_priority_grant_first() -> None:
    ledger = new_ledger()
    ledger.grant(grant_id="top", meter="inference", amount=usd(500), source=GrantSource.TOP_UP, effective_at=T0)
    ledger.grant(
        grant_id="included",
        meter="inference",
        amount=usd(200),
        source=GrantSource.PLAN_INCLUDED,
        effective_at=T0,
        expires_at=JULY,
    )

    consumption = ledger.consume("inference", usd(250), hours(1), reference="evt-1")

    assert [(e.grant_id, e.amount) for e in consumption.entries] == [("included", usd(-200)), ("top", usd(-50))]
    assert consumption.covered == usd(250)
    assert consumption.uncovered == usd(0)
    assert consumption.fully_covered


def test_equal_priority_draws_on_the_soonest_expiry_then_the_oldest() -> None:
    ledger = new_ledger()
    for grant_id, effective_at, expires_at in [
        ("never", T0, None),
        ("late", T0, hours(48)),
        ("old", T0, hours(24)),
        ("new", hours(1), hours(24)),
    ]:
        ledger.grant(
            grant_id=grant_id,
            meter="reports",
            amount=5,
            source=GrantSource.PROMOTIONAL,
            effective_at=effective_at,
            expires_at=expires_at,
        )

    consumption = ledger.consume("reports", 18, hours(2), reference="r")

    assert [e.grant_id for e in consumption.entries] == ["old", "new", "late", "never"]
    assert consumption.entries[-1].amount == Decimal(-3)


def test_explicit_priority_overrides_the_source_default() -> None:
    ledger = new_ledger()
    ledger.grant(grant_id="promo", meter="reports", amount=5, source=GrantSource.PROMOTIONAL, effective_at=T0)
    ledger.grant(grant_id="refund", meter="reports", amount=5, source=GrantSource.REFUND, effective_at=T0, priority=1)

    assert ledger.consume("reports", 1, T0, reference="r").entries[0].grant_id == "refund"


def test_consumption_beyond_credit_is_covered_in_part_and_never_overdraws() -> None:
    ledger = new_ledger()
    ledger.grant(grant_id="free", meter="inference", amount=usd(10), source=GrantSource.PLAN_INCLUDED, effective_at=T0)

    consumption = ledger.consume("inference", usd(25), hours(1), reference="evt")

    assert consumption.covered == usd(10)
    assert consumption.uncovered == usd(15)
    assert not consumption.fully_covered
    assert ledger.balance("inference", hours(1)) == usd(0)
    assert ledger.consume("inference", usd(1), hours(2), reference="evt-2").uncovered == usd(1)


def test_all_or_nothing_consumption_draws_nothing_when_credit_is_short() -> None:
    ledger = new_ledger()
    ledger.grant(grant_id="free", meter="inference", amount=usd(10), source=GrantSource.TRIAL, effective_at=T0)

    refused = ledger.consume("inference", usd(11), T0, reference="a", all_or_nothing=True)
    assert refused.covered == usd(0)
    assert refused.uncovered == usd(11)
    assert refused.entries == ()
    assert ledger.balance("inference", T0) == usd(10)

    assert ledger.consume("inference", usd(10), T0, reference="b", all_or_nothing=True).fully_covered


def test_grant_is_not_usable_before_it_takes_effect() -> None:
    ledger = new_ledger()
    ledger.grant(grant_id="later", meter="reports", amount=10, source=GrantSource.PROMOTIONAL, effective_at=hours(5))

    assert ledger.balance("reports", hours(4)) == Decimal(0)
    assert ledger.consume("reports", 1, hours(4), reference="r").uncovered == Decimal(1)
    assert ledger.balance("reports", hours(5)) == Decimal(10)


def test_unit_meters_take_decimal_units_such_as_gigabyte_months() -> None:
    ledger = new_ledger()
    ledger.grant(
        grant_id="tb", meter="storage", amount=Decimal(1000), source=GrantSource.PLAN_INCLUDED, effective_at=T0
    )

    consumption = ledger.consume("storage", Decimal("1000.25"), hours(1), reference="sample-1")

    assert consumption.covered == Decimal(1000)
    assert consumption.uncovered == Decimal("0.25")


# --- expiry --------------------------------------------------------------------------------------------


def test_top_up_expires_at_the_end_of_the_calendar_month_by_default() -> None:
    ledger = new_ledger()
    ledger.grant(grant_id="t", meter="reports", amount=20, source=GrantSource.TOP_UP, effective_at=hours(3))

    grant = ledger.grants("reports")[0]
    assert grant.expires_at == JULY
    assert ledger.balance("reports", JULY - timedelta(microseconds=1)) == Decimal(20)
    assert ledger.balance("reports", JULY) == Decimal(0)


def test_top_up_month_end_follows_the_accounts_time_zone() -> None:
    ledger = new_ledger(timezone="Asia/Tokyo")
    # 2025-06-30 16:00 UTC is already July 1st in Tokyo: the top-up is for July
    ledger.grant(
        grant_id="t",
        meter="reports",
        amount=20,
        source=GrantSource.TOP_UP,
        effective_at=datetime(2025, 6, 30, 16, 0, tzinfo=UTC),
    )

    assert ledger.grants("reports")[0].expires_at == datetime(2025, 7, 31, 15, 0, tzinfo=UTC)


def test_top_up_with_an_explicit_expiry_keeps_it() -> None:
    ledger = new_ledger()
    ledger.grant(
        grant_id="t", meter="reports", amount=20, source=GrantSource.TOP_UP, effective_at=T0, expires_at=hours(2)
    )

    assert ledger.grants("reports")[0].expires_at == hours(2)


def test_expiry_writes_an_entry_for_what_was_left_dated_at_the_expiry() -> None:
    ledger = new_ledger()
    ledger.grant(grant_id="t", meter="reports", amount=20, source=GrantSource.TOP_UP, effective_at=T0)
    ledger.consume("reports", 5, hours(1), reference="r1")

    written = ledger.expire(JULY + timedelta(days=2))

    assert written == [
        LedgerEntry(
            entry_id="expire:t",
            account_id="org-1",
            meter="reports",
            grant_id="t",
            kind=EntryKind.EXPIRE,
            amount=Decimal(-15),
            at=JULY,
        )
    ]
    assert ledger.remaining("t") == Decimal(0)
    assert ledger.expire(JULY + timedelta(days=3)) == []


def test_fully_used_grant_expires_without_an_entry() -> None:
    ledger = new_ledger()
    ledger.grant(grant_id="t", meter="reports", amount=2, source=GrantSource.TOP_UP, effective_at=T0)
    ledger.consume("reports", 2, hours(1), reference="r1")

    assert ledger.expire(JULY) == []


def test_expired_credit_is_not_consumed_even_before_expire_runs() -> None:
    ledger = new_ledger()
    ledger.grant(grant_id="t", meter="reports", amount=2, source=GrantSource.TOP_UP, effective_at=T0)

    assert ledger.consume("reports", 1, JULY, reference="late").uncovered == Decimal(1)


def test_late_usage_dated_before_a_written_expiry_cannot_use_the_expired_grant() -> None:
    ledger = new_ledger()
    ledger.grant(grant_id="t", meter="reports", amount=2, source=GrantSource.TOP_UP, effective_at=T0)
    ledger.expire(JULY)

    assert ledger.consume("reports", 1, hours(1), reference="late").uncovered == Decimal(1)


# --- corrections -----------------------------------------------------------------------------------------


def test_reversal_gives_the_credit_back_to_the_grants_it_came_from() -> None:
    ledger = new_ledger()
    ledger.grant(grant_id="a", meter="reports", amount=3, source=GrantSource.PROMOTIONAL, effective_at=T0)
    ledger.grant(grant_id="b", meter="reports", amount=5, source=GrantSource.TOP_UP, effective_at=T0)
    ledger.consume("reports", 6, hours(1), reference="inv-1")

    reversal = ledger.reverse("reports", "inv-1", hours(2))

    assert reversal.restored == Decimal(6)
    assert reversal.forfeited == Decimal(0)
    assert [(e.entry_id, e.amount) for e in reversal.entries] == [
        ("reverse:inv-1:a", Decimal(3)),
        ("reverse:inv-1:b", Decimal(3)),
    ]
    assert ledger.remaining("a") == Decimal(3)
    assert ledger.balance("reports", hours(2)) == Decimal(8)


def test_reversal_forfeits_credit_whose_grant_expired_since() -> None:
    ledger = new_ledger()
    ledger.grant(grant_id="t", meter="reports", amount=3, source=GrantSource.TOP_UP, effective_at=T0)
    ledger.grant(grant_id="p", meter="reports", amount=3, source=GrantSource.REFUND, effective_at=T0, priority=99)
    ledger.consume("reports", 5, hours(1), reference="inv-1")
    ledger.expire(JULY)

    reversal = ledger.reverse("reports", "inv-1", JULY + timedelta(days=1))

    assert reversal.restored == Decimal(2)
    assert reversal.forfeited == Decimal(3)
    assert ledger.remaining("t") == Decimal(0)


def test_reversing_twice_is_refused_and_an_unknown_reference_reverses_nothing() -> None:
    ledger = new_ledger()
    ledger.grant(grant_id="a", meter="reports", amount=3, source=GrantSource.PROMOTIONAL, effective_at=T0)
    ledger.consume("reports", 1, T0, reference="inv-1")
    ledger.reverse("reports", "inv-1", T0)

    with pytest.raises(DuplicateLedgerEntryError):
        ledger.reverse("reports", "inv-1", T0)
    assert ledger.reverse("reports", "nothing", T0).entries == ()


# --- idempotency, units and rebuilding -------------------------------------------------------------------


def test_entry_ids_are_deterministic_for_the_adapters_unique_constraint() -> None:
    ledger = new_ledger()
    grant_entry = ledger.grant(
        grant_id="g1", meter="reports", amount=3, source=GrantSource.PROMOTIONAL, effective_at=T0
    )
    consumption = ledger.consume("reports", 1, T0, reference="evt-9")

    assert grant_entry.entry_id == "grant:g1"
    assert consumption.entries[0].entry_id == "consume:evt-9:g1"


def test_replayed_grant_or_consumption_returns_the_original_outcome_and_draws_nothing() -> None:
    ledger = new_ledger()
    first_grant = ledger.grant(
        grant_id="g1", meter="reports", amount=3, source=GrantSource.PROMOTIONAL, effective_at=T0
    )
    first = ledger.consume("reports", 5, T0, reference="evt-1")

    replayed_grant = ledger.grant(
        grant_id="g1", meter="reports", amount=3, source=GrantSource.PROMOTIONAL, effective_at=T0
    )
    replayed = ledger.consume("reports", 5, T0, reference="evt-1")

    assert replayed_grant == first_grant
    assert replayed == first
    assert replayed.covered == Decimal(3)
    assert replayed.uncovered == Decimal(2)
    assert ledger.balance("reports", T0) == Decimal(0)
    assert len(ledger.entries) == 2


def test_conflicting_replay_of_a_grant_or_consumption_is_refused() -> None:
    ledger = new_ledger()
    ledger.grant(grant_id="g1", meter="reports", amount=3, source=GrantSource.PROMOTIONAL, effective_at=T0)
    ledger.consume("reports", 2, T0, reference="evt-1")

    with pytest.raises(DuplicateLedgerEntryError):
        ledger.grant(grant_id="g1", meter="reports", amount=4, source=GrantSource.PROMOTIONAL, effective_at=T0)
    with pytest.raises(DuplicateLedgerEntryError):
        ledger.consume("reports", 1, T0, reference="evt-1")
    with pytest.raises(DuplicateLedgerEntryError):
        ledger.consume("storage", 2, T0, reference="evt-1")
    assert ledger.balance("reports", T0) == Decimal(1)


def test_money_meter_refuses_units_and_other_currencies() -> None:
    ledger = new_ledger()

    with pytest.raises(CreditUnitMismatchError):
        ledger.grant(grant_id="g", meter="inference", amount=5, source=GrantSource.PROMOTIONAL, effective_at=T0)
    with pytest.raises(CurrencyMismatchError):
        ledger.consume("inference", Money(5, "EUR"), T0, reference="r")
    with pytest.raises(CreditUnitMismatchError):
        ledger.consume("reports", usd(5), T0, reference="r")


def test_invalid_grants_are_refused() -> None:
    ledger = new_ledger()

    with pytest.raises(InvalidValueError):
        ledger.grant(grant_id="g", meter="reports", amount=0, source=GrantSource.PROMOTIONAL, effective_at=T0)
    with pytest.raises(InvalidValueError):
        ledger.grant(
            grant_id="g", meter="reports", amount=1, source=GrantSource.PROMOTIONAL, effective_at=T0, expires_at=T0
        )
    with pytest.raises(UnknownLedgerMeterError):
        ledger.grant(grant_id="g", meter="gpu", amount=1, source=GrantSource.PROMOTIONAL, effective_at=T0)
    with pytest.raises(InvalidValueError):
        ledger.consume("reports", -1, T0, reference="r")
    assert issubclass(LedgerError, DomainError)


def test_ledger_rebuilt_from_stored_grants_and_entries_continues_where_it_left_off() -> None:
    ledger = new_ledger()
    ledger.grant(grant_id="a", meter="reports", amount=5, source=GrantSource.TOP_UP, effective_at=T0)
    ledger.grant(grant_id="b", meter="reports", amount=5, source=GrantSource.PROMOTIONAL, effective_at=T0)
    ledger.consume("reports", 7, hours(1), reference="r1")

    rebuilt = CreditLedger.open(
        "org-1",
        ledger.meters.values(),
        grants=[*ledger.grants("reports")],
        entries=ledger.entries,
    )

    assert rebuilt.balance("reports", hours(2)) == Decimal(3)
    assert rebuilt.remaining("b") == Decimal(0)
    assert rebuilt.consume("reports", 7, hours(2), reference="r1").covered == Decimal(7)
    assert rebuilt.balance("reports", hours(2)) == Decimal(3)


def test_rebuilding_refuses_an_entry_that_would_overdraw_its_grant() -> None:
    ledger = new_ledger()
    ledger.grant(grant_id="a", meter="reports", amount=1, source=GrantSource.TOP_UP, effective_at=T0)
    forged = LedgerEntry("consume:x:a", "org-1", "reports", "a", EntryKind.CONSUME, Decimal(-2), T0, "x")

    with pytest.raises(LedgerError):
        CreditLedger.open(
            "org-1", ledger.meters.values(), grants=ledger.grants("reports"), entries=[*ledger.entries, forged]
        )


# --- properties ----------------------------------------------------------------------------------------

operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("grant"),
            st.integers(min_value=1, max_value=500),
            st.sampled_from(list(GrantSource)),
            st.one_of(st.none(), st.integers(min_value=1, max_value=72)),  # expires after n hours
        ),
        st.tuples(st.just("consume"), st.integers(min_value=0, max_value=700), st.just(None), st.just(None)),
        st.tuples(st.just("expire"), st.just(0), st.just(None), st.just(None)),
        st.tuples(st.just("reverse"), st.integers(min_value=0, max_value=59), st.just(None), st.just(None)),
        st.tuples(st.just("wait"), st.integers(min_value=1, max_value=30), st.just(None), st.just(None)),
    ),
    max_size=60,
)


def quantity(amount: Money | Decimal) -> Decimal:
    """Money as its minor units, units as themselves: one number line for both kinds of meter."""
    return Decimal(amount.amount_minor) if isinstance(amount, Money) else amount


def credit(meter: str, value: int) -> Money | Decimal:
    return usd(value) if meter == "inference" else Decimal(value)


@settings(max_examples=200)
@given(operations=operations, meter=st.sampled_from(["inference", "reports"]), blocking=st.booleans())
def test_balance_is_the_sum_of_entries_and_never_negative(
    operations: list[tuple[str, int, GrantSource | None, int | None]], meter: str, blocking: bool
) -> None:
    """``blocking`` consumes all-or-nothing, as a synchronous authorisation for a blocked meter would."""
    ledger = new_ledger()
    now = T0
    granted_ids = 0
    reversible: set[str] = set()
    for index, (kind, value, source, expiry_hours) in enumerate(operations):
        if kind == "grant":
            assert source is not None
            granted_ids += 1
            expires_at = None if expiry_hours is None else now + timedelta(hours=expiry_hours)
            ledger.grant(
                grant_id=f"g{granted_ids}",
                meter=meter,
                amount=credit(meter, value),
                source=source,
                effective_at=now,
                expires_at=expires_at,
            )
        elif kind == "consume":
            before = quantity(ledger.balance(meter, now))
            consumption = ledger.consume(
                meter, credit(meter, value), now, reference=f"c{index}", all_or_nothing=blocking
            )
            covered, uncovered = quantity(consumption.covered), quantity(consumption.uncovered)
            assert covered + uncovered == value
            assert covered == (0 if blocking and before < value else min(before, value))
            assert quantity(ledger.balance(meter, now)) == before - covered
            reversible.add(f"c{index}")
        elif kind == "expire":
            ledger.expire(now)
        elif kind == "reverse":
            if f"c{value}" in reversible:
                reversible.remove(f"c{value}")
                before = quantity(ledger.balance(meter, now))
                reversal = ledger.reverse(meter, f"c{value}", now)
                assert quantity(ledger.balance(meter, now)) == before + quantity(reversal.restored)
        else:
            now += timedelta(hours=value)

        ledger.expire(now)
        balance = quantity(ledger.balance(meter, now))
        assert balance == quantity(entries_sum(ledger, meter, now))
        assert balance >= 0
        for grant in ledger.grants(meter):
            assert quantity(ledger.remaining(grant.grant_id)) >= 0
    assert len({entry.entry_id for entry in ledger.entries}) == len(ledger.entries)


@settings(max_examples=100)
@given(
    grants=st.lists(
        st.tuples(st.integers(1, 50), st.integers(0, 60), st.one_of(st.none(), st.integers(1, 96))),
        min_size=1,
        max_size=8,
    ),
    amount=st.integers(1, 200),
)
def test_consumption_order_is_priority_then_soonest_expiry_then_oldest(
    grants: list[tuple[int, int, int | None]], amount: int
) -> None:
    ledger = new_ledger()
    for index, (units, priority, expiry_hours) in enumerate(grants):
        ledger.grant(
            grant_id=f"g{index:02d}",
            meter="reports",
            amount=units,
            source=GrantSource.PROMOTIONAL,
            effective_at=T0 + timedelta(minutes=index),
            expires_at=None if expiry_hours is None else T0 + timedelta(hours=expiry_hours),
            priority=priority,
        )
    at = T0 + timedelta(minutes=len(grants))
    usable = [g for g in ledger.grants("reports") if g.is_active(at)]
    expected_order = sorted(usable, key=lambda g: g.consumption_order())

    consumption = ledger.consume("reports", amount, at, reference="r")

    drawn = [entry.grant_id for entry in consumption.entries]
    assert drawn == [g.grant_id for g in expected_order][: len(drawn)]
    # every grant drawn from except the last is emptied
    for grant_id in drawn[:-1]:
        assert ledger.remaining(grant_id) == Decimal(0)
