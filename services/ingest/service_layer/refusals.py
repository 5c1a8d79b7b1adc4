"""Refusals of the edge's use cases (lifecycle commands, onboarding, replay of parked usage): each a
`RefusedError` with a machine-readable `code` and the inputs at fault (`fields`: (field, reason) pairs), never
an HTTP status. The problem layer (`services.ingest.problems`) answers each code; the quota and spend
refusals are in `quota_errors`.

Kept apart from their use cases so the problem layer can import them without the use cases' imports (the
use cases import `services.ingest.auth`, which imports the problem layer).
"""

from __future__ import annotations

from collections.abc import Sequence

from shared.domain.errors import CurrencyMismatchError
from shared.errors import RefusedError

# --- lifecycle commands (`lifecycle`) -------------------------------------------------------------------


class LifecycleRefusal(RefusedError):
    """A command the edge refuses before sending it; `code` is machine-readable, `field` names the input."""

    code = "refused"

    def __init__(self, detail: str, *, field: str | None = None, fields: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(detail, code=type(self).code)
        self.detail = detail
        self.field = field
        self.fields = list(fields)  # (field, reason) the answer names


class UnknownCustomer(LifecycleRefusal):
    code = "unknown_customer"


class UnknownSubscription(LifecycleRefusal):
    code = "unknown_subscription"


class UnknownInvoice(LifecycleRefusal):
    code = "unknown_invoice"


class InvoiceNotDraft(LifecycleRefusal):
    """Finalising an invoice that can no longer be finalised (void)."""

    code = "invoice_not_draft"


class InvoiceNotCreditable(LifecycleRefusal):
    """A credit note asked for a draft or void invoice (the read model says so; the worker refuses the same)."""

    code = "invoice_not_creditable"


class InvoiceNotCollectible(LifecycleRefusal):
    """A payment retry of an invoice with nothing to collect (draft, paid, void, or nothing left owed)."""

    code = "invoice_not_collectible"


class PaymentInFlight(LifecycleRefusal):
    """A payment retry while an attempt of the invoice is unsettled (not sent yet, in flight, outcome unknown)."""

    code = "payment_in_flight"


class UnknownCreditNote(LifecycleRefusal):
    code = "unknown_credit_note"


class InvalidCharge(LifecycleRefusal):
    """A one-off charge that charges nothing (its lines total zero or less: credits go through credit notes)."""

    code = "invalid_charge"


class SubscriptionCancelled(LifecycleRefusal):
    """Nothing more can be charged on a cancelled subscription."""

    code = "subscription_cancelled"


class UnknownCreditGrant(LifecycleRefusal):
    code = "unknown_credit_grant"


class InvalidCreditGrant(LifecycleRefusal):
    """A credit grant or purchase the catalog cannot take: unknown meter, money for a unit meter (or units for
    a money meter), a window that ends before it starts."""

    code = "invalid_credit_grant"


class InvalidAlertSettings(LifecycleRefusal):
    """Alert settings that break their rules (a threshold not positive, repeated, a meter without money credit)."""

    code = "invalid_alert_settings"


class NoLongerVoidable(LifecycleRefusal):
    """Voiding an invoice that is paid or void already."""

    code = "invoice_not_voidable"


class NotOpen(LifecycleRefusal):
    """Marking uncollectible an invoice that is not open."""

    code = "invoice_not_open"


class NoUpcomingInvoice(LifecycleRefusal):
    """A preview asked of a subscription that will issue no further invoice (cancelled)."""

    code = "no_upcoming_invoice"


class UnknownCatalogEntry(LifecycleRefusal):
    code = "unknown_catalog_entry"

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail, field=field, fields=[(field or "body", detail)])


class PlanNotSoldInCurrency(CurrencyMismatchError, LifecycleRefusal):
    """The plan bills in another currency than the customer's: the domain's `CurrencyMismatchError` (what
    callers that catch the domain's refusals see), naming the plan (what the answer says)."""

    code = "currency_mismatch"

    def __init__(self, plan_id: str, plan_currency: str, customer_currency: str) -> None:
        super().__init__(plan_currency, customer_currency)  # left, right; then LifecycleRefusal's attributes
        self.detail = f"plan {plan_id} bills in {plan_currency}, the customer in {customer_currency}"
        self.args = (self.detail,)
        self.field = "plan_id"
        self.fields = [("plan_id", "currency differs from the customer's")]


# --- onboarding (`customers`) ---------------------------------------------------------------------------


class OnboardingRefused(RefusedError):
    def __init__(self, message: str, *, code: str, fields: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message, code=code)
        self.fields = list(fields)  # (field, reason)


class MembersForOrganisationsOnly(OnboardingRefused):
    def __init__(self) -> None:
        super().__init__("Members are for organisations", code="validation",
                         fields=[("members", "a user has no members")])


class AlreadyOnboarded(OnboardingRefused):
    def __init__(self, differing: Sequence[str]) -> None:
        super().__init__("this external_id was onboarded with other data", code="already_onboarded",
                         fields=[(f, "differs from the onboarded customer") for f in differing])


class AliasTaken(OnboardingRefused):
    def __init__(self, taken: Sequence[str]) -> None:
        super().__init__("an alias belongs to another customer", code="alias_taken",
                         fields=[("aliases", f"{a!r} is taken") for a in taken])


class PaymentProviderRefused(OnboardingRefused):
    def __init__(self, message: str, provider_code: str | None) -> None:
        super().__init__(message, code="payment_provider", fields=[("payment_method_id", provider_code or "refused")])


# --- replay of parked usage (`usage_intake`) ------------------------------------------------------------


class ReplayRefused(RefusedError):
    """Parked usage that cannot be replayed yet."""

    code = "refused"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, code=type(self).code)


class CustomerStillUnknown(ReplayRefused):
    code = "customer_unknown"


class NoSubscriptionAcceptsUsage(ReplayRefused):
    code = "no_active_subscription"


# --- invoice line -> events (`line_events`) --------------------------------------------------------------


class LineNotTraceable(RefusedError):
    """The line bills no usage events (only usage lines and late-usage adjustments with a meter do)."""

    code = "line_not_traceable"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, code=type(self).code)


# --- the catalog API (`catalog`) -------------------------------------------------------------------------


class CatalogRefusal(RefusedError):
    """A catalog write refused: an invalid entry (``invalid_catalog_entry``, with the field at fault), an id
    already taken, an unknown entry, or a plan still in use (``in_use``)."""

    code = "invalid_catalog_entry"

    def __init__(self, detail: str, *, code: str | None = None, fields: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(detail, code=code or type(self).code)
        self.detail = detail
        self.fields = list(fields)


# --- Metronome's surface: every `metronome_*` use case ----------------------------------------------------


class MetronomeRefusal(RefusedError):
    """A call of the Metronome surface refused (customers, billable metrics, usage, invoices, alerts, products,
    rate cards, contracts, credits): ``not_found`` (an unknown id), ``not_supported`` (a Metronome field or
    value this engine cannot honour, with the field), ``invalid`` (what Metronome itself refuses: a product not
    on the rate card), ``already_exists`` (a repeated ``uniqueness_key``), ``customer_has_live_subscription``
    (archiving a customer still billed: end its contracts first)."""

    code = "invalid"

    def __init__(self, detail: str, *, code: str | None = None, fields: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(detail, code=code or type(self).code)
        self.detail = detail
        self.fields = list(fields)
