"""The subscription aggregate: status, plan, seats, periods, scheduled changes and coupon.

Contract:
- Statuses move only along ``ALLOWED_TRANSITIONS``; anything else raises ``InvalidTransitionError``
  naming both states. ``cancel_at_period_end`` is a flag, not a status.
- Every state change appends one domain event (``pending_events``) and bumps ``version``.
- Every method takes the instant it acts at; nothing reads the wall clock.
- Money effects of a change (proration lines) are *returned*, not stored: the caller puts them on an
  immediate invoice (or accrues them for the next one).
- One period per ``advance_period`` call: a worker that was down for two months calls it twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from types import MappingProxyType

from shared.domain.calendar import (
    BillingAnchor,
    Interval,
    Period,
    ensure_utc,
    period_after,
    period_from,
    trial_window,
)
from shared.domain.catalog import ChangeTiming, Plan, PlanId, TrialEndBehaviour
from shared.domain.coupons import AppliedCoupon, Coupon, CouponRedemption
from shared.domain.errors import InvalidTransitionError, InvalidValueError, SubscriptionError
from shared.domain.events import (
    BillingIntervalChanged,
    CancellationRevoked,
    CancellationScheduled,
    CouponApplied,
    CouponRedeemed,
    DomainEvent,
    PeriodAdvanced,
    PlanChanged,
    PlanChangeScheduled,
    ScheduledChangeCancelled,
    SeatChangeScheduled,
    SeatsChanged,
    SubscriptionBecamePastDue,
    SubscriptionCancelled,
    SubscriptionPaused,
    SubscriptionReactivated,
    SubscriptionResumed,
    SubscriptionStarted,
    TrialEnded,
)
from shared.domain.ids import CustomerId, SubscriptionId
from shared.domain.included_credits import IncludedCreditGrant, change_grants
from shared.domain.invoice import InvoiceLine, InvoiceReason, LineKind
from shared.domain.money import Money
from shared.domain.proration import credit_unused_time, prorate_plan_change, prorate_seat_change


class SubscriptionStatus(StrEnum):
    TRIALING = "trialing"
    ACTIVE = "active"
    PAST_DUE = "past_due"
    PAUSED = "paused"
    CANCELLED = "cancelled"


_S = SubscriptionStatus

#: The statuses whose current period a period close bills and advances (a paused one closes without a fee);
#: a trial ends instead, a cancelled subscription has no period left. The scheduler's SQL reads this set.
CLOSABLE_STATUSES: frozenset[SubscriptionStatus] = frozenset({_S.ACTIVE, _S.PAST_DUE, _S.PAUSED})

#: Exactly the transitions the product allows (issue 3, point 4).
ALLOWED_TRANSITIONS: Mapping[SubscriptionStatus, frozenset[SubscriptionStatus]] = MappingProxyType(
    {
        _S.TRIALING: frozenset({_S.ACTIVE, _S.CANCELLED, _S.PAST_DUE}),
        _S.ACTIVE: frozenset({_S.PAST_DUE, _S.CANCELLED, _S.PAUSED}),
        _S.PAST_DUE: frozenset({_S.ACTIVE, _S.CANCELLED}),
        _S.PAUSED: frozenset({_S.ACTIVE, _S.CANCELLED}),
        _S.CANCELLED: frozenset(),
    }
)

_CHANGEABLE = frozenset({_S.TRIALING, _S.ACTIVE})


class NothingScheduledError(SubscriptionError):
    """Undo asked of a subscription with nothing scheduled (no pending plan or seat change, no cancellation at
    the period end). Its refusal code is ``nothing_scheduled``."""

    code = "nothing_scheduled"


class ChangeKind(StrEnum):
    UPGRADE = "upgrade"
    DOWNGRADE = "downgrade"
    SEATS = "seats"
    INTERVAL = "interval"
    SCHEDULED_CHANGE_CANCELLED = "scheduled_change_cancelled"  # a change back to the current plan or seats


@dataclass(frozen=True, slots=True)
class ChangeOutcome:
    """What a plan, seat or interval change did.

    ``timing`` IMMEDIATE means the change is in force now and ``lines`` (proration, and for an
    interval change the new period's fee) belong on an immediate invoice keyed by ``invoice_reason``
    and ``invoice_period``; PERIOD_END means it is scheduled and ``lines`` is empty. ``grants`` are the
    included credits an immediate upgrade or seat increase adds for the rest of the period (see
    ``included_credits.change_grants``); the caller writes them to the credit ledger.
    """

    kind: ChangeKind
    timing: ChangeTiming
    effective_at: datetime
    lines: tuple[InvoiceLine, ...] = ()
    invoice_period: Period | None = None
    invoice_reason: InvoiceReason = InvoiceReason.SUBSCRIPTION_CHANGE
    grants: tuple[IncludedCreditGrant, ...] = ()


def _require_seats(seats: int) -> int:
    if isinstance(seats, bool) or not isinstance(seats, int) or seats < 1:
        raise InvalidValueError(f"seats must be an int >= 1, got {seats!r}")
    return seats


def _seats_for(plan: Plan, seats: int) -> int:
    """Seats a plan keeps: per-seat plans keep the count, flat plans have exactly one."""
    return seats if plan.per_seat else 1


@dataclass(eq=False, kw_only=True)
class Subscription:
    """One customer's subscription to one plan. Build with ``Subscription.start``; repositories may
    rehydrate with the constructor (``pending_events`` empty)."""

    id: SubscriptionId
    customer_id: CustomerId
    plan_id: PlanId
    status: SubscriptionStatus
    seats: int
    interval: Interval
    anchor: BillingAnchor
    current_period: Period
    started_at: datetime
    trial_end: datetime | None = None
    cancel_at_period_end: bool = False
    pending_plan_id: PlanId | None = None
    pending_seats: int | None = None
    coupon: AppliedCoupon | None = None
    cancelled_at: datetime | None = None
    version: int = 0
    pending_events: list[DomainEvent] = field(default_factory=list)
    # What the subscription keeps for billing beside its status (no events of their own):
    payment_method_id: str | None = None  # the provider's saved method its charges use; None: none on file
    carried_credit_minor: int = 0  # credit of a negative invoice (an immediate downgrade), for the next one
    paused_at: datetime | None = None
    cancel_reason: str | None = None  # why it was cancelled at once (a cancel command, dunning's give-up)

    # --- construction ----------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        *,
        subscription_id: SubscriptionId,
        customer_id: CustomerId,
        plan: Plan,
        at: datetime,
        seats: int = 1,
        trial_days: int | None = None,
        anchor: BillingAnchor | None = None,
        tz: str = "UTC",
        coupon: Coupon | None = None,
        coupon_times_redeemed: int = 0,
        payment_method_id: str | None = None,
    ) -> Subscription:
        """Subscribe at ``at``. With trial days (the plan's unless given) the subscription is TRIALING
        until the trial ends and the billing anchor defaults to the trial end; otherwise it is ACTIVE
        and the anchor defaults to ``at``. A first period that starts between two anchored boundaries
        is a stub the caller prorates (see ``rating.start_invoice``).
        """
        instant = ensure_utc(at).replace(microsecond=0)
        seats = _require_seats(seats)
        if not plan.per_seat and seats != 1:
            raise SubscriptionError(f"plan {plan.id} is not sold per seat; seats must be 1", code="not_sold_per_seat")
        applied = None
        if coupon is not None:
            coupon.check_redeemable(plan_id=plan.id, times_redeemed=coupon_times_redeemed, at=instant)
            applied = AppliedCoupon(coupon_id=coupon.id, redeemed_at=instant)
        days = plan.trial_days if trial_days is None else trial_days
        if isinstance(days, bool) or not isinstance(days, int) or days < 0:
            raise InvalidValueError(f"trial days must be a non-negative int, got {days!r}")
        if days > 0:
            trial = trial_window(instant, days, tz)
            chosen_anchor = anchor or BillingAnchor.from_instant(trial.end, tz)
            status, period, trial_end = _S.TRIALING, trial, trial.end
        else:
            chosen_anchor = anchor or BillingAnchor.from_instant(instant, tz)
            status, period, trial_end = _S.ACTIVE, period_from(chosen_anchor, plan.interval, instant), None
        subscription = cls(
            id=subscription_id,
            customer_id=customer_id,
            plan_id=plan.id,
            status=status,
            seats=seats,
            interval=plan.interval,
            anchor=chosen_anchor,
            current_period=period,
            started_at=instant,
            trial_end=trial_end,
            coupon=applied,
            payment_method_id=payment_method_id,
        )
        subscription._record(
            SubscriptionStarted,
            instant,
            customer_id=customer_id,
            plan_id=plan.id,
            status=status.value,
            seats=seats,
            interval=plan.interval.value,
            period=period,
            trial_end=trial_end,
            coupon_id=applied.coupon_id if applied else None,
        )
        return subscription

    # --- events ----------------------------------------------------------------------------------

    def _record(self, event_type: type[DomainEvent], at: datetime, **fields: object) -> None:
        self.version += 1
        self.pending_events.append(event_type(subscription_id=self.id, version=self.version, occurred_at=at, **fields))

    def pull_events(self) -> list[DomainEvent]:
        """Hand the recorded events to the unit of work (and forget them here)."""
        events, self.pending_events = self.pending_events, []
        return events

    def _transition(self, target: SubscriptionStatus) -> SubscriptionStatus:
        current = self.status
        if target not in ALLOWED_TRANSITIONS[current]:
            raise InvalidTransitionError("subscription", current.value, target.value)
        self.status = target
        return current

    def can_transition_to(self, target: SubscriptionStatus) -> bool:
        return target in ALLOWED_TRANSITIONS[self.status]

    def _require_plan(self, plan: Plan) -> None:
        if plan.id != self.plan_id:
            raise SubscriptionError(f"subscription {self.id} is on plan {self.plan_id}, not {plan.id}",
                                    code="plan_mismatch")

    def _require_changeable(self, what: str) -> None:
        if self.status not in _CHANGEABLE:
            raise SubscriptionError(f"cannot {what} subscription {self.id} while it is {self.status.value}",
                                    code="not_changeable")

    # --- plan, seats and interval ----------------------------------------------------------------

    def change_plan(
        self, *, new_plan: Plan, current_plan: Plan, at: datetime, timing: ChangeTiming | None = None
    ) -> ChangeOutcome:
        """Move to ``new_plan``.

        Without ``timing`` the catalog decides: upgrades (a higher monthly fee, or equal) apply at once
        with proration lines; downgrades wait for the period end (``pending_plan_id``) unless the
        current plan's ``change_timing`` is IMMEDIATE. An explicit ``timing`` overrides that default
        either way: IMMEDIATE prorates a downgrade now, PERIOD_END schedules an upgrade. A change applied
        now also returns the included credits it adds for the rest of the period (``grants``).

        A different interval re-anchors at once (see ``_change_interval``); asking for it at the period
        end is refused, and so is any interval change of a metered plan outside its trial. While TRIALING
        the switch is immediate and free (nothing has been billed yet), so PERIOD_END is refused there too.
        """
        instant = ensure_utc(at).replace(microsecond=0)
        if timing is not None and not isinstance(timing, ChangeTiming):
            raise InvalidValueError(f"timing must be a ChangeTiming or None, got {timing!r}")
        self._require_plan(current_plan)
        self._require_changeable("change the plan of")
        if new_plan.currency != current_plan.currency:
            raise SubscriptionError(f"cannot change currency from {current_plan.currency} to {new_plan.currency}",
                                    code="currency_mismatch")
        if new_plan.id == current_plan.id:
            if self.pending_plan_id is None and self.pending_seats is None:
                raise SubscriptionError(f"subscription {self.id} is already on plan {new_plan.id}",
                                        code="already_on_plan")
            # back to the plan it is on while a change waits for the period end: the customer keeps it
            return self._undo_scheduled_change(instant)
        new_seats = _seats_for(new_plan, self.seats)
        if new_plan.interval != current_plan.interval:
            if timing is ChangeTiming.PERIOD_END:
                raise SubscriptionError("a change of billing interval re-anchors at once, not at the period end",
                                        code="interval_change_is_immediate")
            if (current_plan.meters or new_plan.meters) and self.status is not _S.TRIALING:
                # NOTE: re-anchoring cuts the current period short, and the usage metered in it so far
                # would belong to no period's close (nor would the new period get its included credits).
                # Until a change invoice closes partial-period usage, metered plans change interval the
                # way Stripe recommends for usage prices: cancel at the period end, then subscribe anew.
                raise SubscriptionError("a change of billing interval is not offered for metered plans: cancel "
                                        "at the period end and subscribe to the new plan",
                                        code="interval_change_not_offered")
            return self._change_interval(new_plan, current_plan, new_seats, instant)
        upgrade = new_plan.is_upgrade_from(current_plan, self.seats)
        kind = ChangeKind.UPGRADE if upgrade else ChangeKind.DOWNGRADE
        if self.status is _S.TRIALING:
            if timing is ChangeTiming.PERIOD_END:
                raise SubscriptionError("a plan change during a trial applies at once; nothing is billed until it ends",
                                        code="trial_change_is_immediate")
            grants = self._change_grants(current_plan, new_plan, new_seats, instant)
            self._apply_plan(new_plan, new_seats, instant, prorated=False)
            return ChangeOutcome(kind=kind, timing=ChangeTiming.IMMEDIATE, effective_at=instant, grants=grants)
        if timing is None:
            timing = ChangeTiming.IMMEDIATE if upgrade else current_plan.change_timing
        if timing is ChangeTiming.IMMEDIATE:
            lines = prorate_plan_change(
                old_plan=current_plan,
                new_plan=new_plan,
                old_seats=self.seats,
                new_seats=new_seats,
                period=self.current_period,
                at=instant,
            )
            grants = self._change_grants(current_plan, new_plan, new_seats, instant)
            self._apply_plan(new_plan, new_seats, instant, prorated=True)
            return ChangeOutcome(
                kind=kind,
                timing=ChangeTiming.IMMEDIATE,
                effective_at=instant,
                lines=lines,
                invoice_period=Period(instant, self.current_period.end),
                grants=grants,
            )
        self.pending_plan_id = new_plan.id
        self.pending_seats = new_seats if new_seats != self.seats else None
        self._record(
            PlanChangeScheduled,
            instant,
            from_plan_id=self.plan_id,
            to_plan_id=new_plan.id,
            effective_at=self.current_period.end,
        )
        return ChangeOutcome(kind=kind, timing=ChangeTiming.PERIOD_END, effective_at=self.current_period.end)

    def _change_grants(
        self, old_plan: Plan, new_plan: Plan, new_seats: int, at: datetime
    ) -> tuple[IncludedCreditGrant, ...]:
        return change_grants(
            subscription_id=self.id,
            old_plan=old_plan,
            old_seats=self.seats,
            new_plan=new_plan,
            new_seats=new_seats,
            period=self.current_period,
            at=at,
        )

    def _apply_plan(self, new_plan: Plan, new_seats: int, at: datetime, *, prorated: bool) -> None:
        from_plan, from_seats = self.plan_id, self.seats
        self.plan_id, self.seats = new_plan.id, new_seats
        self.pending_plan_id = None
        self.pending_seats = None
        self._record(
            PlanChanged,
            at,
            from_plan_id=from_plan,
            to_plan_id=new_plan.id,
            from_seats=from_seats,
            to_seats=new_seats,
            prorated=prorated,
        )

    def _change_interval(self, new_plan: Plan, current_plan: Plan, new_seats: int, at: datetime) -> ChangeOutcome:
        """Monthly <-> yearly: a new anchor at ``at``, credit for the unused old time, the new period's
        fee in advance. During a trial only the plan and interval change (the anchor stays the trial end).

        # NOTE: the subscription re-anchors (as Stripe does for an interval change) because a yearly
        # period cannot be aligned to a monthly anchor without a long stub.
        """
        from_interval = self.interval
        if self.status is _S.TRIALING:
            self.anchor = BillingAnchor.from_instant(self.current_period.end, self.anchor.tz)
            lines: tuple[InvoiceLine, ...] = ()
            new_period = self.current_period
        else:
            credit = credit_unused_time(plan=current_plan, seats=self.seats, period=self.current_period, at=at)
            self.anchor = BillingAnchor.from_instant(at, self.anchor.tz)
            new_period = period_from(self.anchor, new_plan.interval, at)
            fee = InvoiceLine(
                kind=LineKind.FEE,
                description=f"{new_plan.name} ({new_plan.interval.value}ly fee in advance)",
                amount=new_plan.fee(new_seats),
                quantity=_quantity(new_plan, new_seats),
                period=new_period,
            )
            lines = (*credit, fee)
            self.current_period = new_period
        self.plan_id, self.seats, self.interval = new_plan.id, new_seats, new_plan.interval
        self.pending_plan_id = None
        self.pending_seats = None
        self._record(
            BillingIntervalChanged,
            at,
            from_plan_id=current_plan.id,
            to_plan_id=new_plan.id,
            from_interval=from_interval.value,
            to_interval=new_plan.interval.value,
            period=new_period,
        )
        return ChangeOutcome(
            kind=ChangeKind.INTERVAL,
            timing=ChangeTiming.IMMEDIATE,
            effective_at=at,
            lines=lines,
            invoice_period=new_period if lines else None,
        )

    def change_seats(self, *, seats: int, plan: Plan, at: datetime) -> ChangeOutcome:
        """Change the seat count of a per-seat plan: more seats at once with proration (and the per-seat
        included credits for the rest of the period in ``grants``); fewer seats at the period end unless
        the plan's ``change_timing`` is IMMEDIATE (then prorated too, no credit taken back)."""
        instant = ensure_utc(at).replace(microsecond=0)
        new_seats = _require_seats(seats)
        self._require_plan(plan)
        self._require_changeable("change the seats of")
        if not plan.per_seat:
            raise SubscriptionError(f"plan {plan.id} is not sold per seat", code="not_sold_per_seat")
        if new_seats == self.seats:
            if self.pending_seats is None:
                raise SubscriptionError(f"subscription {self.id} already has {new_seats} seats",
                                        code="already_has_seats")
            # back to the seats it has while a seat change waits for the period end: it keeps them
            return self._undo_scheduled_change(instant)
        increase = new_seats > self.seats
        if self.status is _S.TRIALING:
            grants = self._change_grants(plan, plan, new_seats, instant)
            self._apply_seats(new_seats, instant, prorated=False)
            return ChangeOutcome(
                kind=ChangeKind.SEATS, timing=ChangeTiming.IMMEDIATE, effective_at=instant, grants=grants
            )
        if increase or plan.change_timing is ChangeTiming.IMMEDIATE:
            lines = prorate_seat_change(
                plan=plan, old_seats=self.seats, new_seats=new_seats, period=self.current_period, at=instant
            )
            grants = self._change_grants(plan, plan, new_seats, instant)
            self._apply_seats(new_seats, instant, prorated=True)
            return ChangeOutcome(
                kind=ChangeKind.SEATS,
                timing=ChangeTiming.IMMEDIATE,
                effective_at=instant,
                lines=lines,
                invoice_period=Period(instant, self.current_period.end),
                grants=grants,
            )
        self.pending_seats = new_seats
        self._record(
            SeatChangeScheduled,
            instant,
            from_seats=self.seats,
            to_seats=new_seats,
            effective_at=self.current_period.end,
        )
        return ChangeOutcome(
            kind=ChangeKind.SEATS, timing=ChangeTiming.PERIOD_END, effective_at=self.current_period.end
        )

    def _undo_scheduled_change(self, at: datetime) -> ChangeOutcome:
        """A change back to the current plan or seats: the scheduled change is cancelled, nothing is billed."""
        self.cancel_scheduled_change(at=at)
        return ChangeOutcome(kind=ChangeKind.SCHEDULED_CHANGE_CANCELLED, timing=ChangeTiming.IMMEDIATE, effective_at=at)

    def _apply_seats(self, new_seats: int, at: datetime, *, prorated: bool) -> None:
        from_seats = self.seats
        self.seats = new_seats
        self.pending_seats = None
        self._record(SeatsChanged, at, from_seats=from_seats, to_seats=new_seats, prorated=prorated)

    def cancel_scheduled_change(self, *, at: datetime) -> None:
        """Drop a pending downgrade or seat reduction (``NothingScheduledError`` when there is none)."""
        instant = ensure_utc(at)
        if self.pending_plan_id is None and self.pending_seats is None:
            raise NothingScheduledError(f"subscription {self.id} has no scheduled change")
        pending_plan, pending_seats = self.pending_plan_id, self.pending_seats
        self.pending_plan_id = None
        self.pending_seats = None
        self._record(ScheduledChangeCancelled, instant, pending_plan_id=pending_plan, pending_seats=pending_seats)

    # --- lifecycle -------------------------------------------------------------------------------

    def cancel(self, *, at: datetime, at_period_end: bool = False, reason: str = "requested") -> None:
        """Cancel now (-> CANCELLED) or at the end of the current period (flag only).

        # NOTE: an immediate cancellation does not credit the unused time (Stripe's default too);
        # a refund, if any, is an operator decision made outside this aggregate.
        """
        instant = ensure_utc(at)
        if at_period_end:
            if self.status is _S.CANCELLED:
                raise InvalidTransitionError("subscription", self.status.value, _S.CANCELLED.value)
            if self.cancel_at_period_end:
                return
            self.cancel_at_period_end = True
            self._record(CancellationScheduled, instant, effective_at=self.current_period.end)
            return
        self._cancel_now(instant, reason)
        self.cancel_reason = reason

    def _cancel_now(self, at: datetime, reason: str) -> None:
        previous = self._transition(_S.CANCELLED)
        self.cancelled_at = at
        self.cancel_at_period_end = False
        self._record(SubscriptionCancelled, at, from_status=previous.value, to_status=_S.CANCELLED.value, reason=reason)

    def revoke_cancellation(self, *, at: datetime) -> None:
        """Keep renewing after all (undo ``cancel(at_period_end=True)``)."""
        instant = ensure_utc(at)
        if not self.cancel_at_period_end:
            raise NothingScheduledError(f"subscription {self.id} is not scheduled to cancel")
        self.cancel_at_period_end = False
        self._record(CancellationRevoked, instant)

    def pause(self, *, at: datetime) -> None:
        """ACTIVE -> PAUSED. While paused, period closes bill no fee and grant no credits."""
        instant = ensure_utc(at)
        previous = self._transition(_S.PAUSED)
        self.paused_at = instant
        self._record(SubscriptionPaused, instant, from_status=previous.value, to_status=_S.PAUSED.value)

    def resume(self, *, at: datetime) -> None:
        """PAUSED -> ACTIVE, keeping the anchor."""
        instant = ensure_utc(at)
        if self.status is not _S.PAUSED:
            raise InvalidTransitionError("subscription", self.status.value, f"{_S.ACTIVE.value} (resume)")
        previous = self._transition(_S.ACTIVE)
        self.paused_at = None
        self._record(SubscriptionResumed, instant, from_status=previous.value, to_status=_S.ACTIVE.value)

    # --- payment method and carried credit ----------------------------------------------------------

    def use_payment_method(self, payment_method_id: str) -> None:
        """Charge this saved method from now on (the customer attached a new one)."""
        self.payment_method_id = payment_method_id

    def forget_payment_method(self) -> str | None:
        """The provider deleted the saved method (with its customer): returns the method forgotten."""
        previous, self.payment_method_id = self.payment_method_id, None
        return previous

    def carry_credit(self, amount_minor: int) -> None:
        """Keep a credit (minor units of the subscription's currency) for the next invoice."""
        if isinstance(amount_minor, bool) or not isinstance(amount_minor, int) or amount_minor < 0:
            raise InvalidValueError(f"a carried credit is a non-negative int of minor units, got {amount_minor!r}")
        self.carried_credit_minor += amount_minor

    def take_carried_credit(self) -> int:
        """The credit carried so far, now applied to an invoice: it is no longer carried."""
        taken, self.carried_credit_minor = self.carried_credit_minor, 0
        return taken

    def carried_credit_lines(self, currency: str) -> list[InvoiceLine]:
        """The credit carried so far, as the line the next close bills it by (none when nothing is carried).

        # NOTE: only credit carried before the customer balance existed: a negative invoice total is now
        # credited to the balance at finalisation, never carried here.
        """
        carried = self.carried_credit_minor
        return ([InvoiceLine(kind=LineKind.ADJUSTMENT, description="Credit carried forward",
                             amount=Money(-carried, currency))] if carried else [])

    def end_trial(self, *, at: datetime, has_payment_method: bool, plan: Plan) -> None:
        """End the trial at ``at``.

        With a payment method: ACTIVE, and the first paid period starts at the trial end (or at ``at``
        when converting early, re-anchored there). Without one, once the trial is over: PAST_DUE, or
        CANCELLED when the plan says ``trial_end_without_payment_method: cancel``.
        """
        instant = ensure_utc(at).replace(microsecond=0)
        self._require_plan(plan)
        if self.status is not _S.TRIALING or self.trial_end is None:
            raise InvalidTransitionError("subscription", self.status.value, "trial end")
        trial_end = self.trial_end
        early = instant < trial_end
        if early and not has_payment_method:
            raise SubscriptionError("a trial can only end early when a payment method is on file",
                                    code="no_payment_method")
        if has_payment_method:
            target = _S.ACTIVE
        elif plan.trial_end_without_payment_method is TrialEndBehaviour.CANCEL:
            target = _S.CANCELLED
        else:
            target = _S.PAST_DUE
        previous = self._transition(target)
        if early:
            self.anchor = BillingAnchor.from_instant(instant, self.anchor.tz)
            self.trial_end = instant
        start = instant if early else trial_end
        if target is _S.CANCELLED:
            self.cancelled_at = instant
        else:
            self.current_period = period_from(self.anchor, self.interval, start)
        self._record(
            TrialEnded,
            instant,
            from_status=previous.value,
            to_status=target.value,
            has_payment_method=has_payment_method,
            period=self.current_period,
        )

    def mark_past_due(self, *, at: datetime, reason: str = "payment_failed") -> None:
        instant = ensure_utc(at)
        previous = self._transition(_S.PAST_DUE)
        self._record(
            SubscriptionBecamePastDue, instant, from_status=previous.value, to_status=_S.PAST_DUE.value, reason=reason
        )

    def reactivate(self, *, at: datetime) -> None:
        """PAST_DUE -> ACTIVE once the overdue invoice is paid."""
        instant = ensure_utc(at)
        if self.status is not _S.PAST_DUE:
            raise InvalidTransitionError("subscription", self.status.value, f"{_S.ACTIVE.value} (reactivate)")
        previous = self._transition(_S.ACTIVE)
        self._record(SubscriptionReactivated, instant, from_status=previous.value, to_status=_S.ACTIVE.value)

    def advance_period(self, *, at: datetime) -> Period:
        """Close the current period at or after its end and return it.

        Applies ``cancel_at_period_end`` (-> CANCELLED, the period is not renewed) or else any pending
        plan/seat change, then moves to the next anchored period.
        """
        instant = ensure_utc(at)
        if self.status not in CLOSABLE_STATUSES:
            raise SubscriptionError(f"cannot advance the period of a {self.status.value} subscription",
                                    code="not_closable")
        closed = self.current_period
        if instant < closed.end:
            raise SubscriptionError(f"period {closed} has not ended at {instant.isoformat()}", code="period_not_ended")
        if self.cancel_at_period_end:
            self._cancel_now(closed.end, "cancel_at_period_end")
            return closed
        if self.pending_plan_id is not None:
            self.plan_id = self.pending_plan_id
        if self.pending_seats is not None:
            self.seats = self.pending_seats
        self.pending_plan_id = None
        self.pending_seats = None
        self.current_period = period_after(closed, self.anchor, self.interval)
        self._record(
            PeriodAdvanced,
            closed.end,
            closed_period=closed,
            period=self.current_period,
            plan_id=self.plan_id,
            seats=self.seats,
        )
        return closed

    # --- coupons ---------------------------------------------------------------------------------

    def apply_coupon(self, *, coupon: Coupon, times_redeemed: int, at: datetime) -> None:
        """Attach ``coupon`` to a subscription that has none."""
        instant = ensure_utc(at)
        if self.status is _S.CANCELLED:
            raise SubscriptionError(f"cannot apply a coupon to cancelled subscription {self.id}",
                                    code="subscription_cancelled")
        if self.coupon is not None:
            raise SubscriptionError(f"subscription {self.id} already has coupon {self.coupon.coupon_id}",
                                    code="coupon_already_applied")
        coupon.check_redeemable(plan_id=self.plan_id, times_redeemed=times_redeemed, at=instant)
        self.coupon = AppliedCoupon(coupon_id=coupon.id, redeemed_at=instant)
        self._record(CouponApplied, instant, coupon_id=coupon.id)

    def record_coupon_redemption(self, redemption: CouponRedemption, *, at: datetime) -> None:
        """Count a coupon's use on one invoice; the same invoice again is a no-op (no event)."""
        instant = ensure_utc(at)
        if self.coupon is None:
            raise SubscriptionError(f"subscription {self.id} has no coupon", code="no_coupon")
        updated = self.coupon.record(redemption)
        if updated is self.coupon:
            return
        self.coupon = updated
        self._record(
            CouponRedeemed,
            instant,
            coupon_id=redemption.coupon_id,
            invoice_key=redemption.invoice_key,
            amount=redemption.amount,
        )

    def give_back_coupon_redemption(self, invoice_key: str) -> bool:
        """A credit note undid the invoice `invoice_key` in full: its coupon redemption no longer counts towards
        the coupon's duration (``AppliedCoupon.give_back``). True when one was given back."""
        if self.coupon is None:
            return False
        updated = self.coupon.give_back(invoice_key)
        if updated is self.coupon:
            return False
        self.coupon = updated
        self.version += 1
        return True

    # --- reading ---------------------------------------------------------------------------------

    @property
    def next_plan_id(self) -> PlanId:
        """The plan the next period will be billed on."""
        return self.pending_plan_id or self.plan_id

    @property
    def next_seats(self) -> int:
        return self.pending_seats if self.pending_seats is not None else self.seats

    @property
    def is_billable(self) -> bool:
        """Whether the next period's fee is due: not cancelled, not paused, not ending."""
        return self.status in (_S.ACTIVE, _S.PAST_DUE) and not self.cancel_at_period_end


def _quantity(plan: Plan, seats: int) -> Decimal:
    return Decimal(seats) if plan.per_seat else Decimal(1)
