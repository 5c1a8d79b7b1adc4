"""Wire payloads per message type (envelope `type` -> pydantic model), version 1.

Every topic is keyed by subscription_id. Commands are imperative (`subscription.change_plan`), events are
past tense (`invoice.finalized`). Commands carry what the worker needs to apply them deterministically on
replay (a snapshot of the customer's currency, timezone and tax rate at subscribe time), so re-reading a
topic from the beginning gives the same state whatever the customer table says today.

Money on the wire is integer minor units plus an ISO 4217 currency (`*_minor`, `currency`).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from shared.contracts.envelope import Envelope, EnvelopeError
from shared.contracts.usage_rules import MAX_EVENT_TYPE_LENGTH, MAX_ID_LENGTH, as_utc


class Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# ----------------------------------------------------------------------------------- usage.v1


class UsageRecorded(Payload):
    """One usage event after the edge resolved customer -> subscription. Metronome's ingest field names.

    The shape only; the rules every usage event must also meet (time window, quantities, properties, key =
    subscription_id) are ``shared.contracts.usage_rules``, applied by the edge, the SDK and the worker."""

    transaction_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    customer_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    subscription_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    event_type: str = Field(min_length=1, max_length=MAX_EVENT_TYPE_LENGTH)
    timestamp: AwareDatetime
    properties: dict[str, Any] = Field(default_factory=dict)
    received_at: AwareDatetime = Field(description="when the edge accepted it (visibility latency)")

    @field_validator("timestamp", "received_at")
    @classmethod
    def _has_utc_equivalent(cls, value: datetime) -> datetime:
        if as_utc(value) is None:
            raise ValueError("has no UTC equivalent (outside years 1 to 9999 once its offset is applied)")
        return value


# ----------------------------------------------------------------------------------- commands.v1


class SubscriptionCommand(Payload):
    subscription_id: str
    customer_id: str


class CreateSubscription(SubscriptionCommand):
    plan_id: str
    seats: int = Field(default=1, ge=1, le=100_000)
    trial_days: int | None = Field(default=None, ge=0, le=730, description="None: the plan's default")
    coupon_id: str | None = None
    anchor_day: int | None = Field(default=None, ge=1, le=31, description="None: the start instant's day")
    payment_method_id: str | None = None
    currency: str = Field(min_length=3, max_length=3)
    timezone: str = "UTC"
    tax_rate_bps: int = Field(default=0, ge=0, le=10_000)
    start_at: AwareDatetime | None = Field(default=None, description="None: the billing clock's now")


class ChangePlan(SubscriptionCommand):
    plan_id: str
    timing: Literal["auto", "immediate", "period_end"] = "auto"


class ChangeSeats(SubscriptionCommand):
    seats: int = Field(ge=1, le=100_000)


class CancelSubscription(SubscriptionCommand):
    at_period_end: bool = False
    reason: str | None = Field(default=None, max_length=500)


class PauseSubscription(SubscriptionCommand):
    pass


class ResumeSubscription(SubscriptionCommand):
    pass


class CancelScheduledChange(SubscriptionCommand):
    """Undo the downgrade or seat reduction scheduled for the period end (refused `nothing_scheduled`)."""


class RevokeCancellation(SubscriptionCommand):
    """Keep renewing: undo a cancellation at the period end (refused `nothing_scheduled`)."""


class CreditNoteLineRequest(Payload):
    line_no: int = Field(ge=1, le=32_767, description="the invoice line (1-based, as listed)")
    amount_minor: int = Field(ge=1, description="pre-tax amount taken from the line (tax follows proportionally)")


class IssueCreditNote(SubscriptionCommand):
    """Issue a credit note against a finalised invoice of the subscription (shared/domain/credit_note.py):
    per line or a whole-invoice amount (tax included), split into reduced / refunded / credited."""

    invoice_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    lines: list[CreditNoteLineRequest] | None = Field(default=None, min_length=1, max_length=200)
    amount_minor: int | None = Field(default=None, ge=1)
    reason: Literal["duplicate", "fraudulent", "order_change", "product_unsatisfactory"]
    memo: str | None = Field(default=None, max_length=500)
    refund_minor: int | None = Field(default=None, ge=0)
    credit_minor: int | None = Field(default=None, ge=0)


class ClosePeriod(SubscriptionCommand):
    """Emitted by the scheduler when the billing clock passes a period end. Idempotent: a close for a
    period that is not the subscription's current one is acknowledged and ignored."""

    period_end: AwareDatetime
    finalize_after_seconds: int | None = Field(
        default=None, ge=0, description="the invoice's grace, a snapshot taken by the scheduler: > 0 stores it "
                                        "draft until period end + this; None or 0: finalised at the close")


class FinalizeInvoice(SubscriptionCommand):
    """Finalise a draft invoice now (the scheduler when its grace ends, or `POST /v1/invoices/{id}/finalize`):
    late usage of its period billed on it, then numbered and charged. A non-draft invoice is `ignored`."""

    invoice_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)


class VoidInvoice(SubscriptionCommand):
    """Void a draft or open invoice (`POST /v1/invoices/{id}/void`): its pending attempts are cancelled, what it
    drew from the customer balance goes back, its number stays used. Refused `invoice_not_voidable`."""

    invoice_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    reason: str | None = Field(default=None, max_length=500)


class MarkInvoiceUncollectible(SubscriptionCommand):
    """Write an open invoice off (`POST /v1/invoices/{id}/mark-uncollectible`): pending attempts cancelled,
    dunning stops chasing it. Refused `invoice_not_open`."""

    invoice_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    reason: str | None = Field(default=None, max_length=500)


class OneOffLineRequest(Payload):
    description: str = Field(min_length=1, max_length=500)
    amount_minor: int = Field(description="the line's amount (quantity x unit amount when given so)")
    quantity: int = Field(default=1, ge=1, le=1_000_000)
    unit_amount_minor: int | None = None


class CreateOneOffInvoice(SubscriptionCommand):
    """A one-off charge (`POST /v1/invoices`): a `manual` invoice on the subscription, in its currency, with
    these lines (plus tax at `tax_rate_bps`, else the subscription's), finalised, balance-drawn and charged
    like any other. The invoice id derives from this command's event id."""

    lines: list[OneOffLineRequest] = Field(min_length=1, max_length=100)
    tax_rate_bps: int | None = Field(default=None, ge=0, le=10_000)


class EndTrial(SubscriptionCommand):
    trial_end: AwareDatetime


class ExpireCredits(SubscriptionCommand):
    at: AwareDatetime


class GrantCredits(SubscriptionCommand):
    grant_id: str
    meter_id: str
    amount_minor: int | None = Field(default=None, ge=1, description="money credits (minor units)")
    units: Decimal | None = Field(default=None, gt=0, description="unit credits (e.g. reports)")
    currency: str | None = None
    source: Literal["plan_included", "top_up", "promotional", "trial", "refund"] = "promotional"
    expires_at: AwareDatetime | None = None
    # NOTE: None, not 100: a payload is written out whole on the wire, so a default number here became every
    # grant's priority (promotions ranked after paid top-ups). None: the source's (shared/domain/ledger.py).
    priority: int | None = Field(default=None, description="lower is consumed first; None: the source's")
    effective_at: AwareDatetime | None = Field(default=None, description="None: when the worker applies it")
    description: str | None = Field(default=None, max_length=500)


class VoidCreditGrant(SubscriptionCommand):
    """Void a grant (`POST /v1/credit-grants/{id}/void`): what is left of it is written off (a `void` ledger
    entry); what was consumed stays consumed. `grant_id` is the stored id (`<subscription>|<grant>`)."""

    grant_id: str = Field(min_length=1)
    reason: str | None = Field(default=None, max_length=500)


class PurchaseCredits(SubscriptionCommand):
    """Buy prepaid credit (`POST /v1/subscriptions/{id}/credit-purchases`): a MANUAL invoice for `price_minor`;
    `amount_minor` of credit on `meter_id` is granted once it is paid (shared/domain/credit_purchase.py)."""

    purchase_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    meter_id: str
    amount_minor: int = Field(ge=1)
    price_minor: int = Field(ge=1)
    expires_at: AwareDatetime | None = None


class CheckAutoRecharge(SubscriptionCommand):
    """The credit of `meter_id` may have fallen below its auto-recharge threshold (a usage batch saw it): the
    worker checks under the subscription's single writer and buys `target - remaining` once per crossing."""

    meter_id: str
    seen_remaining_minor: int | None = None


class RetryPayment(SubscriptionCommand):
    """Dunning decides, the worker acts: charge this open invoice again."""

    invoice_id: str
    attempt_no: int | None = Field(default=None, ge=1, description="dunning's number for the retry; None (an "
                                   "operator's retry): the worker gives the invoice's next free number")
    reason: Literal["scheduled", "payment_method_updated", "manual"] = "scheduled"
    payment_method_id: str | None = Field(default=None, pattern=r"^pm_[A-Za-z0-9_]+$",
                                          description="an operator's retry: the card to save and charge")


class UpdatePaymentMethod(SubscriptionCommand):
    payment_method_id: str = Field(pattern=r"^pm_[A-Za-z0-9_]+$")


class GiveUpDunning(SubscriptionCommand):
    """Dunning gave up: the invoice becomes UNCOLLECTIBLE and the subscription CANCELLED."""

    invoice_id: str


# ----------------------------------------------------------------------------------- payments.v1


class PaymentSucceeded(Payload):
    subscription_id: str
    invoice_id: str
    attempt_id: str | None = None
    provider_ref: str | None = Field(default=None, description="e.g. the Stripe PaymentIntent id")
    amount_minor: int = Field(ge=0)
    currency: str
    source: Literal["executor", "webhook", "manual", "reconciliation"] = "executor"
    paid_at: AwareDatetime


class PaymentFailed(Payload):
    subscription_id: str
    invoice_id: str
    attempt_id: str | None = None
    provider_ref: str | None = None
    amount_minor: int = Field(ge=0)
    currency: str
    decline_code: str | None = None
    hard_decline: bool = False
    message: str | None = Field(default=None, max_length=500)
    source: Literal["executor", "webhook", "reconciliation"] = "executor"
    failed_at: AwareDatetime


class CustomerDeleted(Payload):
    """The payment provider deleted the customer (Stripe `customer.deleted`): its stored payment methods
    are gone, so no charge of this subscription can succeed until a new customer is attached. One message
    per live subscription of the customer, keyed by it."""

    subscription_id: str
    customer_id: str
    stripe_customer_id: str
    deleted_at: AwareDatetime


# ----------------------------------------------------------------------------------- billing-events.v1


class InvoiceEvent(Payload):
    """invoice.finalized / invoice.paid / invoice.voided / invoice.uncollectible / invoice.payment_failed /
    invoice.drafted"""

    invoice_id: str
    subscription_id: str
    customer_id: str
    number: str | None = None
    status: str
    total_minor: int
    currency: str
    period_start: AwareDatetime | None = None
    period_end: AwareDatetime | None = None
    decline_code: str | None = None
    hard_decline: bool = False
    attempt_no: int | None = None
    finalizes_at: AwareDatetime | None = None  # invoice.drafted: when its grace ends


class CreditNoteCreated(Payload):
    """credit_note.created: a credit note was issued against an invoice (its three parts: what it took off the
    amount still owed, refunded through the gateway, and credited to the customer balance)."""

    credit_note_id: str
    number: str
    invoice_id: str
    subscription_id: str
    customer_id: str
    reason: str
    currency: str
    total_minor: int
    reduced_minor: int
    refunded_minor: int
    credited_minor: int


class SubscriptionStatusChanged(Payload):
    subscription_id: str
    customer_id: str
    old_status: str | None
    new_status: str
    plan_id: str
    reason: str | None = None


class CreditsChanged(Payload):
    """credits.granted / credits.expired"""

    subscription_id: str
    customer_id: str
    meter_id: str
    amount_minor: int | None = None
    units: Decimal | None = None
    currency: str | None = None
    source: str | None = None
    expires_at: datetime | None = None


class QuotaAlert(Payload):
    """quota.threshold_reached / quota.limit_reached / quota.on_track_to_exceed"""

    org_id: str
    user_id: str | None = None
    period_start: AwareDatetime
    threshold_percent: int | None = None
    used: int
    allotment: int
    reason: str


class AlertTriggered(Payload):
    """alert.triggered: the subscription's usage spend in the period reached a configured threshold (once per
    period and threshold)."""

    subscription_id: str
    customer_id: str
    kind: str = "spend"
    amount_minor: int  # the period's usage spend when it fired
    threshold_minor: int
    currency: str
    period_start: AwareDatetime
    period_end: AwareDatetime | None = None


class CreditsBalanceLow(Payload):
    """credits.balance_low: a meter's credit left fell below its configured threshold (once per period and
    threshold)."""

    subscription_id: str
    customer_id: str
    meter_id: str
    remaining_minor: int
    threshold_minor: int
    currency: str
    period_start: AwareDatetime
    period_end: AwareDatetime | None = None


class PaymentMethodUpdated(Payload):
    subscription_id: str
    customer_id: str
    payment_method_id: str


class PaymentMethodRemoved(Payload):
    """The subscription has no payment method any more (its provider customer was deleted): the next charge
    fails with `payment_method_missing` until a new method is attached."""

    subscription_id: str
    customer_id: str
    previous_payment_method_id: str | None
    reason: str


PAYLOADS: dict[str, type[Payload]] = {
    "usage.recorded": UsageRecorded,
    "subscription.create": CreateSubscription,
    "subscription.change_plan": ChangePlan,
    "subscription.change_seats": ChangeSeats,
    "subscription.cancel": CancelSubscription,
    "subscription.pause": PauseSubscription,
    "subscription.resume": ResumeSubscription,
    "subscription.cancel_scheduled_change": CancelScheduledChange,
    "subscription.revoke_cancellation": RevokeCancellation,
    "period.close": ClosePeriod,
    "credit_note.issue": IssueCreditNote,
    "invoice.finalize": FinalizeInvoice,
    "invoice.void": VoidInvoice,
    "invoice.mark_uncollectible": MarkInvoiceUncollectible,
    "invoice.create_one_off": CreateOneOffInvoice,
    "trial.end": EndTrial,
    "credits.expire": ExpireCredits,
    "credits.grant": GrantCredits,
    "credits.void_grant": VoidCreditGrant,
    "credits.purchase": PurchaseCredits,
    "credits.check_recharge": CheckAutoRecharge,
    "payment.retry": RetryPayment,
    "payment_method.update": UpdatePaymentMethod,
    "dunning.give_up": GiveUpDunning,
    "payment.succeeded": PaymentSucceeded,
    "payment.failed": PaymentFailed,
    "payment.customer_deleted": CustomerDeleted,
    "invoice.finalized": InvoiceEvent,
    "invoice.paid": InvoiceEvent,
    "invoice.voided": InvoiceEvent,
    "invoice.uncollectible": InvoiceEvent,
    "invoice.payment_failed": InvoiceEvent,
    "invoice.drafted": InvoiceEvent,
    "credit_note.created": CreditNoteCreated,
    "subscription.status_changed": SubscriptionStatusChanged,
    "credits.granted": CreditsChanged,
    "credits.expired": CreditsChanged,
    "quota.threshold_reached": QuotaAlert,
    "quota.limit_reached": QuotaAlert,
    "quota.on_track_to_exceed": QuotaAlert,
    "alert.triggered": AlertTriggered,
    "credits.balance_low": CreditsBalanceLow,
    "payment_method.updated": PaymentMethodUpdated,
    "payment_method.removed": PaymentMethodRemoved,
}

TYPE_OF: dict[type[Payload], str] = {}
for _name, _model in PAYLOADS.items():
    TYPE_OF.setdefault(_model, _name)


def parse_payload(env: Envelope) -> Payload:
    """The typed payload of an envelope; unknown types and invalid payloads are EnvelopeError (DLQ)."""
    model = PAYLOADS.get(env.type)
    if model is None:
        raise EnvelopeError(f"unknown message type {env.type!r}")
    try:
        return model.model_validate(env.payload)
    except ValueError as exc:
        raise EnvelopeError(f"invalid {env.type} payload: {exc}") from exc
