"""Response models of the reads (the HTTP shape), built from the worker's read model and the edge's own tables.

The queries that fill them are the edge's read side, `services/ingest/service_layer/views.py`."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _View(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class SubscriptionView(_View):
    subscription_id: str
    customer_id: str
    plan_id: str
    status: str
    seats: int
    pending_plan_id: str | None = None
    pending_seats: int | None = None
    currency: str
    current_period_start: datetime
    current_period_end: datetime
    trial_end: datetime | None = None
    cancel_at_period_end: bool
    cancelled_at: datetime | None = None
    paused_at: datetime | None = None
    payment_method_id: str | None = None
    coupon_id: str | None = None
    created_at: datetime
    updated_at: datetime


class CommandView(BaseModel):
    command_id: str
    subscription_id: str
    command_type: str | None = None
    status: str
    error_code: str | None = None
    error_detail: str | None = None
    poll_url: str
    subscription: SubscriptionView | None = None


class InvoiceLineView(_View):
    line_no: int
    kind: str
    description: str
    amount_minor: int
    currency: str
    quantity: Decimal | None = None
    unit_price: Decimal | None = None
    meter_id: str | None = None
    plan_id: str | None = None
    period_start: datetime | None = None
    period_end: datetime | None = None
    proration: bool


class ServicePeriodView(BaseModel):
    start: datetime
    end: datetime


class InvoiceView(_View):
    invoice_id: str
    subscription_id: str
    customer_id: str
    kind: str
    number: str | None = None
    status: str
    currency: str
    period_start: datetime
    period_end: datetime
    subtotal_minor: int
    discount_minor: int
    credits_applied_minor: int
    tax_minor: int
    total_minor: int
    amount_due_minor: int | None = None
    amount_paid_minor: int
    pre_payment_credit_minor: int = 0  # what credit notes took off while it was owed
    balance_applied_minor: int = 0  # drawn from the customer's credit balance at finalisation
    issued_at: datetime | None = None
    due_at: datetime | None = None
    paid_at: datetime | None = None
    finalizes_at: datetime | None = None  # a draft (no number yet): when its grace ends and it is finalised
    lines: list[InvoiceLineView] = []
    billing_period: ServicePeriodView | None = Field(
        None, description="the period this invoice bills (period_start, period_end): for a period close, the "
                          "closed period")
    covers: ServicePeriodView | None = Field(
        None, description="the span of its lines' own service periods (each line's period_start/period_end): a "
                          "period close also bills the next period's fee in advance, so it covers more than "
                          "its billing period; null when no line has a period")

    @model_validator(mode="after")
    def _label_periods(self) -> InvoiceView:
        self.billing_period = ServicePeriodView(start=self.period_start, end=self.period_end)
        spans = [(line.period_start, line.period_end) for line in self.lines
                 if line.period_start is not None and line.period_end is not None]
        self.covers = (ServicePeriodView(start=min(s for s, _ in spans), end=max(e for _, e in spans))
                       if spans else None)
        return self


class PaymentAttemptView(_View):
    attempt_id: str
    invoice_id: str
    attempt_no: int
    subscription_id: str
    amount_minor: int
    currency: str
    status: str
    reason: str
    provider_ref: str | None = None
    decline_code: str | None = None
    hard_decline: bool
    requested_at: datetime
    completed_at: datetime | None = None


class CreditBalanceView(BaseModel):
    grant_id: str
    meter_id: str
    source: str
    currency: str | None = None
    granted_minor: int | None = None
    remaining_minor: int | None = None
    granted_units: Decimal | None = None
    remaining_units: Decimal | None = None
    effective_at: datetime
    expires_at: datetime | None = None


class LedgerEntryView(_View):
    entry_id: str
    grant_id: str
    kind: str
    amount_minor: int | None = None
    units: Decimal | None = None
    invoice_id: str | None = None
    occurred_at: datetime


class AuditEntryView(_View):
    id: int
    at: datetime
    actor_key_id: str
    action: str
    customer_id: str | None = None
    subscription_id: str | None = None
    request_id: str | None = None
    details: dict[str, Any]


class MeterUsageView(BaseModel):
    """One meter of the running period: usage, the credits that will cover it, and what is left to pay."""

    meter_id: str
    unit: str | None = None
    quantity: Decimal
    late_quantity: Decimal = Decimal(0)
    treatment: str  # bill | block | unpriced
    unit_price: Decimal | None = None
    gross_minor: int | None = None
    credit_remaining_minor: int | None = None
    credit_remaining_units: Decimal | None = None
    credit_applied_minor: int | None = None
    credit_applied_units: Decimal | None = None
    billable_quantity: Decimal
    estimated_charge_minor: int


class UsageSoFarView(BaseModel):
    """Usage of the current period per meter, the credits left, and the usage charge the close will bill
    (before coupon and tax; the recurring fee is separate). `late_quantity` is usage of earlier periods
    that arrived after their close: the next close bills it as an adjustment line."""

    subscription_id: str
    customer_id: str
    plan_id: str
    status: str
    currency: str
    period_start: datetime
    period_end: datetime
    as_of: datetime
    meters: list[MeterUsageView]
    estimated_usage_charge_minor: int
    credits: list[CreditBalanceView]


class NotificationView(BaseModel):
    notification_id: str
    customer_id: str
    subscription_id: str
    invoice_id: str
    kind: str
    channel: str
    recipient: str | None = None
    subject: str
    decided_at: datetime
    status: str
    attempts: int
    delivered_at: datetime | None = None
    last_error: str | None = None
    data: dict[str, Any]


class CreditNoteLineView(_View):
    line_no: int
    invoice_line_no: int | None = None  # None: the pre-tax part of a whole-invoice amount
    description: str
    amount_minor: int
    currency: str


class CreditNoteView(_View):
    """A credit note: total = reduced (off what the invoice still owed) + refunded (through the gateway)
    + credited (to the customer balance)."""

    credit_note_id: str
    number: str
    invoice_id: str
    subscription_id: str
    customer_id: str
    currency: str
    reason: str
    memo: str | None = None
    subtotal_minor: int
    tax_minor: int
    total_minor: int
    reduced_minor: int
    refunded_minor: int
    credited_minor: int
    refund_status: str | None = None
    refund_ref: str | None = None
    issued_at: datetime
    lines: list[CreditNoteLineView] = []
