"""Stripe adapter of the PaymentGateway port: one PaymentIntent per invoice, confirmed off-session.

Flow of a charge: create the PaymentIntent (unconfirmed, idempotency key `<attempt key>:create`, invoice id
in its metadata) unless an earlier attempt of the invoice already made one, then confirm it off-session
with the saved payment method (idempotency key `<attempt key>:confirm`). Stripe replays the first answer
for a repeated key for 24 hours, so a retried request cannot charge twice.

Error mapping: a card error is DECLINED (hard when the decline code says the card can never succeed); a
timeout, a connection error or a 5xx is UNKNOWN (reconcile with `lookup` before any retry); a rate limit
(HTTP 429: Stripe did nothing) raises `ProviderRateLimited` with Stripe's Retry-After and Stripe-Should-Retry,
for the caller to send the same request again later (`rate_limit.RateLimitedGateway`), never a decline;
an invalid request (no such payment method, ...) is a hard DECLINED, because retrying the same request
cannot succeed; bad credentials raise PaymentGatewayError (nothing was charged, retry once fixed).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import stripe

from shared.adapters.payments.port import (
    ChargeOutcome,
    ChargeRequest,
    ChargeStatus,
    PaymentGatewayError,
    ProviderRateLimited,
    RefundOutcome,
    RefundRequest,
    RefundStatus,
)
from shared.domain.money import Money
from shared.domain.payment_attempt import is_hard_decline

log = logging.getLogger(__name__)

def make_stripe_client(api_key: str, api_base: str, *, timeout_s: float = 20.0,
                       http_client: stripe.HTTPClient | None = None) -> stripe.StripeClient:
    """A StripeClient bound to `api_base` (stripe-mock locally), with a bounded timeout and one network
    retry (safe: every mutating request carries an idempotency key)."""
    return stripe.StripeClient(
        api_key, base_addresses={"api": api_base}, max_network_retries=1,
        http_client=http_client or stripe.HTTPXClient(timeout=timeout_s, allow_sync_methods=True))


class StripeGateway:
    name = "stripe"

    def __init__(self, client: stripe.StripeClient) -> None:
        self._intents = client.v1.payment_intents
        self._refunds = client.v1.refunds

    # ------------------------------------------------------------------------------------------ charge

    @staticmethod
    def calls_for_charge(request: ChargeRequest) -> int:
        """The API requests `charge` makes: create + confirm, or only confirm on the invoice's existing
        PaymentIntent (each counts against Stripe's per-second operations limit)."""
        return 1 if request.provider_ref else 2

    def charge(self, request: ChargeRequest) -> ChargeOutcome:
        intent_id = request.provider_ref
        try:
            if intent_id is None:
                intent_id = self._create_intent(request).id
            intent = self._intents.confirm(
                intent_id,
                params={"payment_method": request.payment_method_id, "off_session": True},
                options={"idempotency_key": f"{request.idempotency_key}:confirm"})
        except stripe.CardError as error:
            return self._declined(error, intent_id)
        except stripe.InvalidRequestError as error:
            code = error.code or "invalid_request"
            return ChargeOutcome.declined(code, hard=True, provider_ref=intent_id, message=_message(error))
        except stripe.AuthenticationError as error:
            raise PaymentGatewayError(f"stripe refused the credentials: {_message(error)}") from error
        except stripe.PermissionError as error:
            raise PaymentGatewayError(f"stripe refused the request: {_message(error)}") from error
        except stripe.RateLimitError as error:
            raise _rate_limited(error) from error
        except (stripe.APIConnectionError, stripe.APIError, stripe.IdempotencyError) as error:
            # NOTE: we cannot know whether Stripe acted on the request: reconcile, never resend blind.
            return ChargeOutcome.unknown(f"{type(error).__name__}: {_message(error)}", provider_ref=intent_id)
        return self._outcome_of(intent, after_confirm=True) or ChargeOutcome.unknown(
            f"payment intent {intent.id} in status {intent.status} after confirmation", provider_ref=intent.id)

    def _create_intent(self, request: ChargeRequest) -> Any:
        params: dict[str, Any] = {
            "amount": request.amount.amount_minor,
            "currency": request.amount.currency.lower(),
            "payment_method": request.payment_method_id,
            "payment_method_types": ["card"],
            "metadata": {**request.metadata, "invoice_id": request.invoice_id,
                         "customer_id": request.customer_id},
        }
        if request.provider_customer_id:
            params["customer"] = request.provider_customer_id
        if request.description:
            params["description"] = request.description
        return self._intents.create(params=params,  # type: ignore[arg-type]
                                    options={"idempotency_key": f"{request.idempotency_key}:create"})

    def _declined(self, error: stripe.CardError, intent_id: str | None) -> ChargeOutcome:
        json_body: Any = error.json_body or {}
        body: Mapping[str, Any] = json_body.get("error") or {} if isinstance(json_body, Mapping) else {}
        code = body.get("decline_code") or error.code or "card_declined"
        intent = body.get("payment_intent") or {}
        ref = intent.get("id") if isinstance(intent, Mapping) else None
        return ChargeOutcome.declined(code, hard=is_hard_decline(code), provider_ref=ref or intent_id,
                                      message=_message(error))

    # ------------------------------------------------------------------------------------------ lookup

    def lookup(self, *, idempotency_key: str | None = None, invoice_id: str,
               provider_ref: str | None = None) -> ChargeOutcome | None:
        """Retrieve the invoice's PaymentIntent (by id, else by a metadata search on the invoice id). The key
        is not needed: a PaymentIntent carries every confirmation of the invoice, so its status is the answer.

        # NOTE: Stripe's search is eventually consistent (new objects can take about a minute to appear),
        # so "not found" right after a lost create is possible; the retry that follows reuses the same
        # idempotency keys, and Stripe then answers with the original objects instead of charging again.
        """
        try:
            if provider_ref is not None:
                intent = self._intents.retrieve(provider_ref)
            else:
                found = self._intents.search(params={"query": f"metadata['invoice_id']:'{invoice_id}'",
                                                     "limit": 10})
                matches = [pi for pi in found.data if (pi.metadata or {}).get("invoice_id") == invoice_id]
                if not matches:
                    return None
                intent = max(matches, key=lambda pi: pi.created or 0)
        except stripe.InvalidRequestError as error:
            if error.http_status == 404:
                return None
            raise PaymentGatewayError(f"stripe lookup refused: {_message(error)}") from error
        except stripe.RateLimitError as error:
            raise _rate_limited(error) from error
        except stripe.StripeError as error:
            raise PaymentGatewayError(f"stripe lookup failed: {_message(error)}") from error
        return self._outcome_of(intent, after_confirm=False)

    def _outcome_of(self, intent: Any, *, after_confirm: bool) -> ChargeOutcome | None:
        status = intent.status
        amount = _money(intent)
        if status == "succeeded":
            return ChargeOutcome.succeeded(intent.id, amount, invoice_id=_invoice_of(intent))
        if status in ("processing", "requires_capture"):
            return ChargeOutcome(ChargeStatus.UNKNOWN, intent.id, message=f"payment intent {status}")
        error = intent.last_payment_error
        if status == "requires_action":
            return ChargeOutcome.declined("authentication_required", hard=False, provider_ref=intent.id,
                                          message="the payment needs the customer's authentication")
        if status == "canceled":
            return ChargeOutcome.declined("payment_intent_canceled", hard=True, provider_ref=intent.id)
        if status == "requires_payment_method" and (error or after_confirm):
            code = (_get(error, "decline_code") or _get(error, "code") or "payment_failed") if error else \
                "payment_failed"
            return ChargeOutcome.declined(str(code), hard=is_hard_decline(code), provider_ref=intent.id,
                                          message=_get(error, "message") if error else None)
        # requires_payment_method / requires_confirmation without any error: never confirmed, no charge.
        return None


    # ------------------------------------------------------------------------------------------ refund

    def refund(self, request: RefundRequest) -> RefundOutcome:
        """A Refund of the invoice's PaymentIntent for `amount` (idempotency key `<key>:refund`, so a resend
        after a lost answer is the same refund). A refused request (no such payment, more than was paid) is
        FAILED; a timeout, a 5xx or a rate limit is UNKNOWN and is sent again with the same key.

        # NOTE: a refund Stripe answers `pending` (some payment methods settle refunds later) is recorded as
        # succeeded: Stripe accepted it and will not give it back twice; a later failure arrives as a webhook.
        """
        if not request.payment_ref:
            return RefundOutcome(RefundStatus.FAILED, code="charge_not_found",
                                 message="the invoice has no provider payment to refund")
        try:
            refund = self._refunds.create(
                params={"payment_intent": request.payment_ref, "amount": request.amount.amount_minor,
                        "metadata": {**request.metadata, "credit_note_id": request.credit_note_id,
                                     "invoice_id": request.invoice_id}},
                options={"idempotency_key": f"{request.idempotency_key}:refund"})
        except stripe.InvalidRequestError as error:
            return RefundOutcome(RefundStatus.FAILED, code=error.code or "invalid_request", message=_message(error))
        except stripe.AuthenticationError as error:
            raise PaymentGatewayError(f"stripe refused the credentials: {_message(error)}") from error
        except stripe.PermissionError as error:
            raise PaymentGatewayError(f"stripe refused the request: {_message(error)}") from error
        except stripe.RateLimitError as error:
            raise _rate_limited(error) from error
        except stripe.StripeError as error:
            return RefundOutcome(RefundStatus.UNKNOWN, message=f"{type(error).__name__}: {_message(error)}")
        status = _get(refund, "status")
        if status in ("succeeded", "pending", "requires_action"):
            return RefundOutcome(RefundStatus.SUCCEEDED, refund.id, message=f"refund {status}")
        return RefundOutcome(RefundStatus.FAILED, refund.id, code=str(_get(refund, "failure_reason") or status),
                             message=f"refund {status}")


def _get(obj: Any, key: str) -> Any:
    try:
        return obj.get(key) if hasattr(obj, "get") else getattr(obj, key, None)
    except (KeyError, AttributeError):
        return None


def _invoice_of(intent: Any) -> str | None:
    """The invoice id we put in the PaymentIntent's metadata at creation (None on a foreign intent)."""
    metadata = getattr(intent, "metadata", None)
    value = _get(metadata, "invoice_id") if metadata is not None else None
    return str(value) if value else None


def _money(intent: Any) -> Money | None:
    try:
        return Money(int(intent.amount), str(intent.currency).upper())
    except (TypeError, ValueError, AttributeError):
        return None


def _rate_limited(error: stripe.RateLimitError) -> ProviderRateLimited:
    """Stripe's 429 (`rate_limit`, or `lock_timeout` on a busy object): its Retry-After (seconds) and
    Stripe-Should-Retry headers, when it sent them, tell when and whether to send the request again."""
    headers: Any = error.headers or {}
    retry_after: float | None = None
    should_retry = True
    try:
        lowered = {str(k).lower(): str(v) for k, v in dict(headers).items()}
    except (TypeError, ValueError):
        lowered = {}
    try:
        retry_after = float(lowered["retry-after"]) if "retry-after" in lowered else None
    except ValueError:
        retry_after = None
    if lowered.get("stripe-should-retry") == "false":
        should_retry = False
    return ProviderRateLimited(f"stripe rate limit: {_message(error)}", retry_after_s=retry_after,
                               should_retry=should_retry)


def _message(error: stripe.StripeError) -> str:
    return (error.user_message or str(error) or type(error).__name__)[:500]
